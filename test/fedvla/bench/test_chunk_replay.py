"""fedvla bench realtime's boundary plot: recorded chunks replayed through the twin driver's
controller, the same chunks for every aggregator (simulated time)."""
import numpy as np
import pytest

pytest.importorskip("pinocchio")

from fedvla.bench.chunk_replay import (RecordedChunk, RecordedChunks, plot_boundaries,  # noqa: E402
                                       read_recorded_chunks, replay)
from fedvla.robot.controller import ChunkAggregator  # noqa: E402
from fedvla.robot.kinematics import ARM_JOINTS, HOME_Q  # noqa: E402
from fedvla.twin.expert import EXPERT_ACTION_SPACE  # noqa: E402

STEP = 0.1  # the twin's control step


def _disagreeing_chunks(latency_s: float = 0.15, count: int = 12, every_s: float = 0.2) -> RecordedChunks:
    """An async policy: a chunk of 4 steps every ``every_s``, each arriving ``latency_s`` after its
    observation; consecutive chunks agree on the x motion and disagree on y (as a policy's
    predictions from two observations do)."""
    chunks = []
    for i in range(count):
        observed = every_s * i
        actions = np.tile([-0.2, 0.05 + 0.03 * (-1) ** i, 0.0, 0.0], (4, 1))
        chunks.append(RecordedChunk(arrived_s=observed + latency_s, observed_s=observed, actions=actions,
                                    step_period_s=STEP))
    return RecordedChunks(start_q=np.array(HOME_Q), chunks=chunks)


def test_every_aggregator_meets_the_same_chunks_and_the_blends_jump_less() -> None:
    recorded = _disagreeing_chunks()
    replays = {a: replay(recorded, EXPERT_ACTION_SPACE, a) for a in ChunkAggregator}
    for r in replays.values():
        assert r.arrivals_s == [c.arrived_s for c in recorded.chunks]
        assert len(r.times_s) == len(r.q) > 100 and np.all(np.diff(r.times_s) > 0)
        assert np.ptp(r.q, axis=0).max() > 0.05  # the arm moved under the chunks
    # (ACT's ensemble moves its reference by a share of each new chunk's disagreement at once: the
    # driver refuses such a merge when the joints could not follow it, as here twice)
    assert not replays[ChunkAggregator.LATEST].refused and not replays[ChunkAggregator.CROSSFADE].refused
    latest = replays[ChunkAggregator.LATEST]
    # a cross-fade hands over continuously; ACT's ensemble moves by a share of the disagreement
    assert replays[ChunkAggregator.CROSSFADE].largest_reference_jump < latest.largest_reference_jump / 3
    assert replays[ChunkAggregator.ENSEMBLE].largest_reference_jump < latest.largest_reference_jump
    # every chunk came while the one before had actions left: the blends merged, latest replaced
    assert recorded.overlapping_hand_overs == len(recorded.chunks) - 1
    assert replays[ChunkAggregator.LATEST].merges == 0 and replays[ChunkAggregator.CROSSFADE].merges > 0
    again = replay(recorded, EXPERT_ACTION_SPACE, ChunkAggregator.CROSSFADE)
    np.testing.assert_array_equal(again.q, replays[ChunkAggregator.CROSSFADE].q)  # simulated time: exact


def test_chunks_that_never_overlap_give_every_aggregator_the_same_setpoints() -> None:
    """A policy slower than its chunks (the twin at 300 ms): each chunk has run out before the next
    comes, so there is nothing to merge and the aggregators cannot differ."""
    recorded = _disagreeing_chunks(count=6, every_s=0.45)
    assert recorded.overlapping_hand_overs == 0
    replays = [replay(recorded, EXPERT_ACTION_SPACE, a) for a in ChunkAggregator]
    for r in replays[1:]:
        assert r.merges == 0
        np.testing.assert_array_equal(r.q, replays[0].q)


def test_chunks_and_start_joints_are_read_from_a_trial_bag(tmp_path) -> None:
    from fedvla.data.bag_export import EpisodeBagWriter

    with EpisodeBagWriter(tmp_path / "bag", camera_names=["camera"], control_rate_hz=10.0, instruction="open",
                          proprio_joint_names=ARM_JOINTS) as writer:
        for step in range(5):
            chunk = np.full((4, 4), 0.1 * step) if step % 2 == 0 else None
            writer.add_step([np.zeros((8, 8, 3), np.uint8)], np.array(HOME_Q) + 0.01 * step, chunk)
    recorded = read_recorded_chunks(tmp_path / "bag")
    np.testing.assert_allclose(recorded.start_q, HOME_Q)  # the joints when the first chunk came
    assert [c.arrived_s for c in recorded.chunks] == pytest.approx([0.0, 0.2, 0.4])
    assert [c.observed_s for c in recorded.chunks] == pytest.approx([0.0, 0.2, 0.4])
    np.testing.assert_allclose(recorded.chunks[1].actions, np.full((4, 4), 0.2), rtol=1e-6)
    assert recorded.chunks[0].step_period_s == pytest.approx(STEP)


def _bag_whose_joint_states_start_late(path, first_arm_step: int, steps: int | None = None) -> None:
    """Chunks from step 0; joint states without the arm's joints until ``first_arm_step`` (a
    recorder that matched /joint_states late)."""
    from fedvla.data.bag_export import EpisodeBagWriter

    with EpisodeBagWriter(path, camera_names=["camera"], control_rate_hz=10.0, instruction="open",
                          proprio_joint_names=ARM_JOINTS) as writer:
        arm_names = writer.joint_names
        for step in range(steps or first_arm_step + 2):
            writer.joint_names = arm_names if step >= first_arm_step else [f"other_{i}" for i in range(6)]
            writer.add_step([np.zeros((8, 8, 3), np.uint8)], np.array(HOME_Q) + 0.01 * step,
                            np.full((4, 4), 0.1 * step) if step % 2 == 0 else None)


def test_joint_states_that_start_just_after_the_first_chunk_give_the_start_joints(tmp_path) -> None:
    _bag_whose_joint_states_start_late(tmp_path / "bag", first_arm_step=1)
    recorded = read_recorded_chunks(tmp_path / "bag")
    np.testing.assert_allclose(recorded.start_q, np.array(HOME_Q) + 0.01)  # 0.1 s after the first chunk
    assert len(recorded.chunks) == 2


def test_chunks_long_before_the_first_joint_state_are_left_out_and_counted(tmp_path) -> None:
    """Joint states 0.8 s late (a loaded machine's recorder): the replay starts at the first chunk
    within 0.5 s of them, from the joints they give; the chunks before are counted, not replayed."""
    _bag_whose_joint_states_start_late(tmp_path / "bag", first_arm_step=8)
    recorded = read_recorded_chunks(tmp_path / "bag")
    np.testing.assert_allclose(recorded.start_q, np.array(HOME_Q) + 0.08)
    assert recorded.skipped_chunks == 2 and len(recorded.chunks) == 3  # (chunks at 0.4, 0.6, 0.8 s kept)
    np.testing.assert_allclose(recorded.chunks[0].actions, np.full((4, 4), 0.4), rtol=1e-6)


def test_a_bag_without_the_arms_joint_states_is_refused_by_name(tmp_path) -> None:
    _bag_whose_joint_states_start_late(tmp_path / "bag", first_arm_step=20, steps=10)  # only other joints
    with pytest.raises(ValueError, match="no /joint_states with the arm's joints after the first"):
        read_recorded_chunks(tmp_path / "bag")


def test_the_boundary_plot_is_drawn(tmp_path) -> None:
    recorded = _disagreeing_chunks()
    path = tmp_path / "boundaries.png"
    plot_boundaries([replay(recorded, EXPERT_ACTION_SPACE, a) for a in ChunkAggregator], path, "test")
    assert path.stat().st_size > 10_000
