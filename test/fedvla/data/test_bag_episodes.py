"""Episodes ↔ rosbag2: export → import gives back the dataset; recorded (asynchronous) bags are
sampled as documented; bad bags are refused with the reason."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from fedvla.bag import BagWriter, summarize_bag
from fedvla.data.bag_export import BagMessageFactory, export_episode
from fedvla.data.bag_import import (IMAGE_TYPE, JOINT_STATE_TYPE, STRING_TYPE, BagEpisodeConfig, BagSampling,
                                    dataset_bag_config, find_bags, import_bag, read_bag_steps)
from fedvla.data.messages import ACTION_CHUNK_TYPE, action_chunk_fields
from fedvla.config import ConfigError
from fedvla.data.episodes import DatasetError, EpisodeWriter, load_meta

CAMS = ["corner", "top"]
MS = 1_000_000


class _Encoder:
    """Stands in for the sentence encoder: a fixed function of the text."""

    def encode(self, text: str) -> np.ndarray:
        return np.full(4, len(text), np.float32)


def _dataset(path, *, iosp: bool, episodes=(7, 4), seed: int = 0) -> EpisodeWriter:
    rng = np.random.default_rng(seed)
    writer = EpisodeWriter(path, camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2, control_rate_hz=10.0,
                           iosp_grid=(4, 4) if iosp else None, iosp_tokens_per_group=2 if iosp else 0)
    for n, steps in enumerate(episodes):
        extra = {}
        if iosp:
            extra = {"iosp_indices": rng.integers(0, 16, (steps, 2, 3, 2)),
                     "iosp_valid": rng.random((steps, 2, 3, 2)) > 0.3}
        writer.add_episode(rng.integers(0, 256, (steps, 2, 3, 16, 16), dtype=np.uint8),
                           rng.normal(size=(steps, 3)).astype(np.float32),
                           rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
                           instruction=["lock the door", "close the drawer"][n % 2], language=np.zeros(4), **extra)
    return writer


@pytest.mark.parametrize("iosp", [False, True])
def test_export_then_import_gives_back_every_array(tmp_path, iosp) -> None:
    source = tmp_path / "source"
    _dataset(source, iosp=iosp)
    meta = load_meta(source)
    bags = [export_episode(source, e, tmp_path / "bags" / f"episode_{e}", start_ns=5 * 10**9) for e in range(2)]
    summary = summarize_bag(bags[0])
    assert summary.topic("/camera/corner/color/image_raw").count == 7
    assert summary.topic("/policy/action_chunk").msgtype == ACTION_CHUNK_TYPE
    assert find_bags([tmp_path / "bags"]) == bags

    writer = EpisodeWriter(tmp_path / "imported", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                           control_rate_hz=10.0, iosp_grid=meta.iosp_grid, iosp_tokens_per_group=meta.iosp_tokens_per_group)
    config = dataset_bag_config(source)
    results = [import_bag(bag, writer, config, _Encoder()) for bag in bags]
    assert [r.sampling.steps for r in results] == [7, 4] and not any(r.sampling.dropped for r in results)
    imported = load_meta(tmp_path / "imported")
    assert [e.instruction for e in imported.episodes] == [e.instruction for e in meta.episodes]
    for before, after in zip(meta.episodes, imported.episodes):
        a, b = load_file(str(source / before.file)), load_file(str(tmp_path / "imported" / after.file))
        for name in ("images", "proprio", "actions"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        np.testing.assert_array_equal(b["language"], np.full(4, len(before.instruction), np.float32))
        if iosp:
            np.testing.assert_array_equal(a["iosp_valid"], b["iosp_valid"])
            np.testing.assert_array_equal(np.where(a["iosp_valid"], a["iosp_indices"], 0),
                                          np.where(b["iosp_valid"], b["iosp_indices"], 0))


def _recorded_bag(path, *, camera_gap_ms=(), instruction: str | None = "open the window", horizon: int = 4,
                  chunk_ms=range(0, 1001, 200)):
    """Like a recording of the running stack: cameras at 30 Hz (48 x 32 px), joint states at 100 Hz
    with 6 named joints, policy chunks at 5 Hz of ``horizon`` steps of 0.1 s each, over 1 s."""
    writer = BagWriter(path)
    make = BagMessageFactory(writer.registry)
    cams = {name: f"/camera/{name}/color/image_raw" for name in CAMS}
    for topic in cams.values():
        writer.add_topic(topic, IMAGE_TYPE)
    for topic, msgtype in (("/joint_states", JOINT_STATE_TYPE), ("/instruction", STRING_TYPE),
                           ("/policy/action_chunk", ACTION_CHUNK_TYPE)):
        writer.add_topic(topic, msgtype)
    events = []
    if instruction is not None:
        events.append((0, "/instruction", make.string(instruction)))
    for t in range(0, 1001, 33):
        if any(lo <= t < hi for lo, hi in camera_gap_ms):
            continue
        for v, topic in enumerate(cams.values()):
            image = np.full((32, 48, 3), (t // 33 + 50 * v) % 256, np.uint8)
            events.append((t + 1, topic, make.image(image, t * MS, "cam")))
    joints = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint"]
    for t in range(0, 1001, 10):
        q = np.arange(6) + t / 1000.0
        events.append((t + 2, "/joint_states", make.joint_state(joints[::-1], q[::-1], t * MS)))
    for t in chunk_ms:
        # chunk issued at t: step j of it is the action t/1000 + j
        chunk = np.stack([[t / 1000 + j, -j] for j in range(horizon)]).astype(np.float32)
        msg = make.types[ACTION_CHUNK_TYPE](header=make.header(t * MS),
                                            **action_chunk_fields(chunk, 0.1, dimension_names=["a", "b"]))
        events.append((t + 3, "/policy/action_chunk", make.cdr(msg)))
    for stamp_ms, topic, cdr in sorted(events, key=lambda e: e[0]):
        writer.write(topic, stamp_ms * MS, cdr)
    writer.close()
    return path


def _config(**changes) -> BagEpisodeConfig:
    fields = dict(camera_names=CAMS, proprio_dim=3,  # sampled at the chunks' step period: 10 Hz
                  proprio_joint_names=("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint"))
    return BagEpisodeConfig(**{**fields, **changes})


def test_a_recorded_bag_is_sampled_at_the_control_rate_with_the_executed_chunk_step(tmp_path) -> None:
    bag = _recorded_bag(tmp_path / "bag")
    sampling = BagSampling()
    steps = list(read_bag_steps(bag, _config(), sampling))
    # every input is in once the first chunk arrives (3 ms): a step every 100 ms from there to the
    # last message (the chunk of 1003 ms)
    assert [s.stamp_ns // MS for s in steps] == [3 + 100 * n for n in range(11)]
    assert sampling.steps == 11 and not sampling.dropped and sampling.rate_hz == 10.0
    first, later = steps[0], steps[3]  # 3 ms: chunk from 3 ms, step 0; 303 ms: chunk from 203 ms, step 1
    np.testing.assert_allclose(first.action, [0.0, 0.0])
    np.testing.assert_allclose(later.action, [0.2 + 1, -1])
    # the named joints, in the requested order, from the newest joint state (at 302 ms: t = 300 ms)
    np.testing.assert_allclose(later.proprio, np.array([0, 1, 2]) + 0.3, rtol=1e-6)
    assert later.images[0].shape == (32, 48, 3) and later.instruction == "open the window"
    # the newest frame at 303 ms is the one of 297 ms (frame 9), written at 298 ms
    assert later.images[0][0, 0, 0] == 9 and later.images[1][0, 0, 0] == 59


def test_a_demonstrators_jittered_single_step_chunks_are_one_step_each_on_chunk_times(tmp_path) -> None:
    # one horizon-1 chunk per 100 ms step, each received a few ms early or late
    jitter = [0, 6, -4, 9, 2, -7, 5, 11, -2, 3]
    chunk_ms = [100 * k + j + 10 for k, j in enumerate(jitter)]
    bag = _recorded_bag(tmp_path / "bag", horizon=1, chunk_ms=chunk_ms)
    on_grid, on_chunks = BagSampling(), BagSampling()
    grid_steps = list(read_bag_steps(bag, _config(), on_grid))
    steps = list(read_bag_steps(bag, _config(step_times="chunks"), on_chunks))
    assert on_grid.dropped["action chunk used up"] > 0 and len(grid_steps) < len(chunk_ms)
    assert [s.stamp_ns // MS for s in steps] == [t + 3 for t in chunk_ms] and not on_chunks.dropped
    np.testing.assert_allclose([s.action[0] for s in steps], [t / 1000 for t in chunk_ms], rtol=1e-6)


def test_chunk_times_take_the_elements_run_before_the_next_chunk(tmp_path) -> None:
    # horizon 4 every 200 ms: elements 0 and 1 of each chunk run; the last chunk runs to its end
    bag = _recorded_bag(tmp_path / "bag", chunk_ms=range(0, 601, 200))
    steps = list(read_bag_steps(bag, _config(step_times="chunks")))
    assert [s.stamp_ns // MS for s in steps] == [3, 103, 203, 303, 403, 503, 603, 703, 803, 903]
    np.testing.assert_allclose([s.action[1] for s in steps], [0, -1] * 3 + [0, -1, -2, -3])
    with pytest.raises(ConfigError, match="step_times"):
        _config(step_times="chunks", control_rate_hz=10.0)


def test_import_resizes_images_and_counts_stale_steps(tmp_path) -> None:
    bag = _recorded_bag(tmp_path / "bag", camera_gap_ms=[(400, 800)])
    writer = EpisodeWriter(tmp_path / "ds", camera_names=CAMS, image_size=16, proprio_dim=3, action_dim=2,
                           control_rate_hz=10.0)
    result = import_bag(bag, writer, _config(max_input_age_s=0.25), _Encoder())
    # the last frame before the gap arrives at 397 ms, the next at 826 ms: the steps of 703 and
    # 803 ms see frames older than 0.25 s
    assert result.sampling.dropped == {"stale camera corner": 2} and result.sampling.steps == 9
    arrays = load_file(str(tmp_path / "ds" / result.file))
    assert arrays["images"].shape == (result.sampling.steps, 2, 3, 16, 16)


def test_bad_bags_are_refused_with_the_reason(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"has no /camera/shoulder/color/image_raw"):
        list(read_bag_steps(_recorded_bag(tmp_path / "a"), _config(camera_names=["corner", "shoulder"])))
    with pytest.raises(DatasetError, match="give `instruction` if the bag has none"):
        list(read_bag_steps(_recorded_bag(tmp_path / "b", instruction=None), _config()))
    steps = list(read_bag_steps(tmp_path / "b", _config(instruction="open the window")))
    assert steps and steps[0].instruction == "open the window"
    with pytest.raises(DatasetError, match=r"has no joints \['wrist_9'\]"):
        list(read_bag_steps(tmp_path / "b", _config(instruction="x", proprio_joint_names=("wrist_9", "elbow_joint", "wrist_1_joint"))))
    # one chunk of one step every 200 ms: the chunk is used up half of the time
    sampling = BagSampling()
    list(read_bag_steps(_recorded_bag(tmp_path / "c", horizon=1), _config(), sampling))
    assert sampling.dropped == {"action chunk used up": 5} and sampling.steps == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a rosbag2 directory"):
        find_bags([tmp_path / "empty"])
