"""The episode dataset format: write, read back, chunk, train."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvla.data.episodes import ChunkDataset, DatasetError, EpisodeWriter, load_meta

CAMS = ["corner", "top"]


def _episode(rng, steps: int, size: int = 16):
    images = rng.integers(0, 256, (steps, len(CAMS), 3, size, size), dtype=np.uint8)
    proprio = rng.normal(size=(steps, 3)).astype(np.float32)
    actions = np.arange(steps * 2, dtype=np.float32).reshape(steps, 2)
    return images, proprio, actions


def _writer(path):
    return EpisodeWriter(path, camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2, control_rate_hz=10.0)


def test_round_trip_and_chunks_hold_the_last_action(tmp_path) -> None:
    rng = np.random.default_rng(0)
    writer = _writer(tmp_path / "ds")
    first, second = _episode(rng, 5), _episode(rng, 3)
    writer.add_episode(*first, instruction="open the drawer", language=np.ones(4))
    writer.add_episode(*second, instruction="lock the door", language=np.zeros(4))
    meta = load_meta(tmp_path / "ds")
    assert [e.instruction for e in meta.episodes] == ["open the drawer", "lock the door"]
    data = ChunkDataset(tmp_path / "ds", horizon=4)
    assert len(data) == 8
    sample = data[3]  # episode 0, step 3 of 5
    np.testing.assert_array_equal(sample["images"].numpy(), first[0][3])
    np.testing.assert_array_equal(sample["proprio"].numpy(), first[1][3])
    # steps 3, 4, then the last action (4) repeated
    np.testing.assert_array_equal(sample["actions"].numpy(), first[2][[3, 4, 4, 4]])
    assert torch.equal(data[5]["language"], torch.zeros(4))


def test_appending_to_an_existing_dataset_checks_shapes(tmp_path) -> None:
    rng = np.random.default_rng(1)
    _writer(tmp_path / "ds").add_episode(*_episode(rng, 2), instruction="x", language=np.ones(4))
    _writer(tmp_path / "ds").add_episode(*_episode(rng, 2), instruction="y", language=np.ones(4))
    assert len(load_meta(tmp_path / "ds").episodes) == 2
    with pytest.raises(DatasetError, match="holds episodes of another shape"):
        EpisodeWriter(tmp_path / "ds", camera_names=CAMS, image_size=32, proprio_dim=3, action_dim=2,
                      control_rate_hz=10.0)
    images, proprio, actions = _episode(rng, 2)
    with pytest.raises(DatasetError, match=r"episode proprio has shape \(2, 4\), expected \(2, 3\)"):
        _writer(tmp_path / "ds").add_episode(images, np.zeros((2, 4)), actions, instruction="z", language=np.ones(4))


def test_malformed_index_is_reported(tmp_path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"format_version": 1, "camera_names": []}))
    with pytest.raises(DatasetError, match="dataset.json is malformed"):
        load_meta(tmp_path / "ds")
    with pytest.raises(DatasetError, match="is not a dataset"):
        load_meta(tmp_path / "nothing")


def test_a_dataset_trains_a_policy(tmp_path) -> None:
    from pathlib import Path

    from fedvla.model.checkpoint import seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.model.train import TrainConfig, train_policy

    rng = np.random.default_rng(2)
    writer = _writer(tmp_path / "ds")
    for _ in range(3):
        writer.add_episode(*_episode(rng, 6), instruction="push", language=np.ones(384))
    config = PolicyConfig.from_yaml(Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml",
                                    camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2)
    data = ChunkDataset(tmp_path / "ds", horizon=config.horizon)
    policy = seeded_policy(config)
    policy.normalizer.fit(data.all_actions(), data.all_proprio())
    result = train_policy(policy, data, TrainConfig(epochs=2, batch_size=4), show_progress=False)
    assert result.num_samples == 18 and len(result.epoch_losses) == 2


def test_iosp_selections_are_stored_per_step_and_served_with_the_samples(tmp_path) -> None:
    from fedvla.data.episodes import check_policy_fits
    from fedvla.model.config import PolicyConfig

    rng = np.random.default_rng(3)
    writer = EpisodeWriter(tmp_path / "ds", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                           control_rate_hz=10.0, iosp_grid=(4, 4), iosp_tokens_per_group=2)
    images, proprio, actions = _episode(rng, 5)
    indices = rng.integers(0, 16, size=(5, len(CAMS), 3, 2))
    valid = rng.random((5, len(CAMS), 3, 2)) > 0.3
    writer.add_episode(images, proprio, actions, instruction="push", language=np.ones(4), iosp_indices=indices,
                       iosp_valid=valid)
    with pytest.raises(DatasetError, match="give iosp_indices and iosp_valid"):
        writer.add_episode(images, proprio, actions, instruction="push", language=np.ones(4))
    with pytest.raises(DatasetError, match="outside the 4x4 patch grid"):
        writer.add_episode(images, proprio, actions, instruction="push", language=np.ones(4),
                           iosp_indices=indices + 16, iosp_valid=valid)
    meta = load_meta(tmp_path / "ds")
    assert meta.iosp_grid == (4, 4) and meta.iosp_tokens_per_group == 2 and len(meta.episodes) == 1
    sample = ChunkDataset(tmp_path / "ds", horizon=2, with_iosp=True)[3]
    assert sample["iosp_indices"].tolist() == indices[3].tolist() and sample["iosp_valid"].tolist() == valid[3].tolist()
    assert "iosp_indices" not in ChunkDataset(tmp_path / "ds", horizon=2)[3]
    # A policy must select on the same grid (image size / encoder) with the same k.
    tiny = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"
    fits = PolicyConfig.from_yaml(tiny, camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2, iosp=True,
                                  iosp_tokens_per_group=2)
    import dataclasses

    check_policy_fits(dataclasses.replace(meta, iosp_grid=fits.patch_grid), fits)  # (16 px: a 1x1 grid)
    with pytest.raises(DatasetError, match=r"IOSP on a \(1, 1\) grid with k=2 vs the dataset's \(4, 4\)"):
        check_policy_fits(meta, fits)
    other = PolicyConfig.from_yaml(tiny, camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2, iosp=True,
                                   iosp_tokens_per_group=3)
    with pytest.raises(DatasetError, match="k=3 vs the dataset's"):
        check_policy_fits(meta, other)
    plain = EpisodeWriter(tmp_path / "plain", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                          control_rate_hz=10.0)
    plain.add_episode(images, proprio, actions, instruction="push", language=np.ones(4))
    with pytest.raises(DatasetError, match="has no IOSP selections: record it with IOSP on"):
        ChunkDataset(tmp_path / "plain", horizon=2, with_iosp=True)


def test_the_action_space_is_kept_with_the_data(tmp_path) -> None:
    from torch.utils.data import ConcatDataset

    from fedvla.data.episodes import dataset_action_space

    space = {"kind": "ee_delta", "frame": "base", "action_dim": 2, "position_scale_m": 0.01, "rotation_scale_rad": 0.05}
    rng = np.random.default_rng(4)
    for name, recorded in (("a", space), ("b", space), ("unknown", None)):
        EpisodeWriter(tmp_path / name, camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                      control_rate_hz=10.0, action_space=recorded).add_episode(*_episode(rng, 3), instruction="push",
                                                                                language=np.ones(384))
    assert load_meta(tmp_path / "a").action_space == space
    a, b, unknown = (ChunkDataset(tmp_path / n, horizon=2) for n in ("a", "b", "unknown"))
    assert dataset_action_space(a) == space and dataset_action_space(ConcatDataset([a, b])) == space
    assert dataset_action_space(unknown) is None and dataset_action_space(ConcatDataset([a, unknown])) is None
    with pytest.raises(DatasetError, match="holds actions of another space"):
        EpisodeWriter(tmp_path / "a", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                      control_rate_hz=10.0, action_space=space | {"frame": "object"})
