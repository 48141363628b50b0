"""Open-loop replay of a bag through a policy: metrics, alignment of predictions with the recorded
actions, and the report."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedvla.data.bag_export import export_episode
from fedvla.data.episodes import EpisodeWriter
from fedvla.replay import ReplayRecord, replay_bag, replay_metrics, write_replay_report

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
CAMS = ("corner", "top")


def test_metrics_of_a_known_record() -> None:
    record = ReplayRecord()
    recorded = np.array([[1.0, 2.0], [3.0, 4.0]])
    record.add(0, recorded + [[0.5, 0.0], [1.0, 0.0]], recorded, latency_s=0.010, experts_per_token=1.0)
    record.add(100, recorded + [[-0.5, 2.0], [0.0, 0.0]], np.array([[5.0, 0.0], [np.nan, np.nan]]), 0.020, 1.5)
    # second step: recorded first action (5, 0) vs predicted (0.5, 4): errors 4.5 and 4
    m = replay_metrics(record)
    assert (m.steps, m.horizon, m.action_dim) == (2, 2, 2)
    np.testing.assert_allclose(m.first_action_mae, [(0.5 + 4.5) / 2, (0 + 4) / 2])
    np.testing.assert_allclose(m.first_action_rmse, [np.sqrt((0.25 + 20.25) / 2), np.sqrt(16 / 2)])
    # recorded first actions (1, 2) and (5, 0): std 2 and 1
    np.testing.assert_allclose(m.first_action_normalised_mae, [2.5 / 2, 2.0 / 1])
    # chunk error per step: step 1 = mean(0.5/2... ); the uncovered step of the second chunk is left out
    np.testing.assert_allclose(m.chunk_mae, np.mean([np.mean([0.5, 0, 1, 0]), np.mean([4.5, 4])]))
    np.testing.assert_allclose(m.chunk_mae_by_step, [np.mean([0.5, 0, 4.5, 4]), np.mean([1, 0])])
    assert m.latency_ms["median"] == pytest.approx(15.0) and m.experts_per_token == pytest.approx(1.25)
    with pytest.raises(ValueError, match="differ in shape"):
        record.add(0, np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="nothing to report"):
        replay_metrics(ReplayRecord())


def _ramp_bag(tmp_path, steps: int = 12) -> Path:
    """An exported episode whose proprio[0] is the step index and whose action is (t, -t)."""
    writer = EpisodeWriter(tmp_path / "ds", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                           control_rate_hz=10.0)
    t = np.arange(steps, dtype=np.float32)
    writer.add_episode(np.zeros((steps, 2, 3, 16, 16), np.uint8), np.stack([t, t * 0, t * 0], 1),
                       np.stack([t, -t], 1), instruction="reach", language=np.zeros(4))
    return export_episode(tmp_path / "ds", 0, tmp_path / "bag")


class _RampRuntime:
    """Predicts the ramp's future exactly (plus ``offset`` on action 0), like a perfect policy."""

    def __init__(self, offset: float = 0.0, horizon: int = 4) -> None:
        self.camera_names = CAMS
        self.model_config = SimpleNamespace(proprio_dim=3)
        self.config = SimpleNamespace(rate_hz=10.0, proprio_joint_names=())
        self.uses_iosp = False
        self.offset, self.horizon = offset, horizon
        self.seen = []

    def step(self, images, proprio, instruction, selections=None):
        self.seen.append((len(images), images[0].shape, float(proprio[0]), instruction))
        t = proprio[0] + np.arange(self.horizon)
        chunk = np.stack([t + self.offset, -t], 1)
        return SimpleNamespace(chunk=chunk, latency_s=0.001, experts_per_token=1.2)


def test_replay_aligns_each_chunk_with_the_recorded_actions(tmp_path) -> None:
    bag = _ramp_bag(tmp_path)
    exact = _RampRuntime()
    record, sampling = replay_bag(bag, exact)
    assert sampling.steps == 12 and len(record) == 12
    assert exact.seen[5] == (2, (16, 16, 3), 5.0, "reach")
    m = replay_metrics(record)
    assert m.first_action_mae == [0.0, 0.0] and m.chunk_mae == 0.0
    # the last chunks reach past the bag's end: only covered steps count, none is invented
    assert np.isnan(record.recorded[-1][1:]).all() and not np.isnan(record.recorded[-4]).any()

    record, _ = replay_bag(bag, _RampRuntime(offset=0.5), every=3)
    m = replay_metrics(record)
    assert len(record) == 4 and record.stamps_ns[1] - record.stamps_ns[0] == 300_000_000
    assert m.first_action_mae == [0.5, 0.0] and m.chunk_mae == pytest.approx(0.25)
    assert m.chunk_mae_by_step == pytest.approx([0.25] * 4)


def test_a_trained_checkpoint_replays_into_a_report(tmp_path) -> None:
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import CheckpointError, save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig

    tiny = PolicyConfig.from_yaml(CONFIG_DIR / "model" / "tiny.yaml", camera_names=list(CAMS), image_size=32,
                                  proprio_dim=3, action_dim=2)
    data = SquareReachDataset(tiny, 16)
    policy = seeded_policy(tiny, 3)
    policy.normalizer.fit(data.actions, data.proprio)
    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(save_checkpoint(policy, tmp_path / "ckpt"))))
    bag = _ramp_bag(tmp_path, steps=6)
    record, _ = replay_bag(bag, runtime)
    # the replayed step is the runtime's own answer on the bag's inputs (images resized 16 → 32 px)
    again = runtime.step([np.zeros((16, 16, 3), np.uint8)] * 2, np.array([2.0, 0, 0]), "reach")
    np.testing.assert_allclose(record.predicted[2], again.chunk, rtol=1e-5, atol=1e-6)

    metrics = write_replay_report(tmp_path / "report", record, title="Replay test", details={"bag": str(bag)})
    with pytest.raises(CheckpointError, match=r"the checkpoint sees cameras \['corner', 'top'\]; this robot has \['camera'\]"):
        PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(tmp_path / "ckpt"), available_cameras=("camera",)))
    assert metrics.steps == 6 and metrics.horizon == tiny.horizon and metrics.latency_ms["median"] > 0
    report = (tmp_path / "report" / "replay.md").read_text()
    assert "| action_1 |" in report and "Latency per policy step" in report
    saved = json.loads((tmp_path / "report" / "replay.json").read_text())
    assert saved["metrics"]["steps"] == 6 and saved["details"]["bag"] == str(bag)
    assert saved["per_step"]["recorded"][-1][1] == [None, None]
    assert (tmp_path / "report" / "replay.png").stat().st_size > 10_000
