"""The setpoints around chunk boundaries, per chunk aggregator, on the same chunks (``fedvla bench
realtime``'s boundary plot).

A twin trial's bag holds the action chunks as the driver got them: each with its observation's
stamp and the time it arrived (the recorder's receive time), the policy's own output under the
trial's latency. Those chunks are replayed through the twin driver's controller
(:func:`fedvla.twin.inprocess.twin_driver_configs`: same limits, IK, retargeting and executed
steps) on a :class:`~fedvla.robot.backends.SimulatedArm` in simulated time, once per aggregator,
so the aggregators meet exactly the same chunks at exactly the same instants: the difference
between their setpoints is the aggregator's alone. The arm follows its setpoints (a kinematic arm),
so the chunks are not fed back: the replay shows how each aggregator hands over from chunk to
chunk, not how a trial would have ended.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.robot.controller import ChunkAggregator


@dataclasses.dataclass(frozen=True)
class RecordedChunk:
    arrived_s: float  # when the driver got it (the bag's receive time), seconds from the first
    observed_s: float  # its observation's stamp, same clock
    actions: np.ndarray  # (horizon, action_dim)
    step_period_s: float


@dataclasses.dataclass(frozen=True)
class RecordedChunks:
    start_q: np.ndarray  # the arm's joints at the first chunk
    chunks: list[RecordedChunk]
    # Chunks recorded before the recorder had the arm's joints (left out: no measured start)
    skipped_chunks: int = 0

    @property
    def overlapping_hand_overs(self) -> int:
        """Chunks that arrived while the one before still had actions to come: the hand-overs where
        the aggregators differ (with none, every aggregator just replaces the finished chunk)."""
        return sum(1 for old, new in zip(self.chunks, self.chunks[1:])
                   if new.arrived_s < old.observed_s + old.step_period_s * len(old.actions))


@dataclasses.dataclass(frozen=True)
class ReplayedSetpoints:
    aggregator: ChunkAggregator
    times_s: np.ndarray  # (n,) controller time of each servoJ setpoint
    q: np.ndarray  # (n, 6)
    arrivals_s: list[float]  # chunk arrivals
    rms_jerk: float  # rad/s^3 (controller.Smoothness)
    largest_reference_jump: float  # rad
    refused: dict[str, int]
    merges: int  # chunks merged with the one executing (0 for latest, which replaces it)


# The arm's joints as the first chunk arrived: the last joint state before it, or, when the
# recorder matched /joint_states late (a loaded machine's discovery), the first one after it if it
# came within this long; the arm has hardly moved by then. Chunks more than this before the first
# joint state are left out (the replay starts at the first chunk whose start was measured).
JOINTS_AFTER_FIRST_CHUNK_S = 0.5


def read_recorded_chunks(bag: str | Path) -> RecordedChunks:
    """The chunks of a twin trial's bag, and the joints as the first one arrived."""
    from fedvla.bag import read_messages
    from fedvla.data.messages import parse_action_chunk
    from fedvla.robot.kinematics import ARM_JOINTS

    chunk_topic = topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)
    before, after, raw_chunks = None, None, []  # joints: (received_ns, q)
    for topic, received_ns, msg in read_messages(bag, [chunk_topic, topics.JOINT_STATES]):
        if topic == topics.JOINT_STATES:
            positions = dict(zip(msg.name, msg.position))
            if not all(name in positions for name in ARM_JOINTS):
                continue
            joints = (received_ns, np.array([positions[name] for name in ARM_JOINTS]))
            if not raw_chunks:
                before = joints
            elif after is None:
                after = joints
            continue
        content = parse_action_chunk(msg)
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        raw_chunks.append((received_ns, stamp_ns, content))
    if not raw_chunks:
        raise ValueError(f"{bag}: no {chunk_topic}: the trial's policy published no chunk the recorder got")
    skipped = 0
    if before is None:
        if after is None:
            raise ValueError(f"{bag}: no {topics.JOINT_STATES} with the arm's joints after the first {chunk_topic}")
        kept = [c for c in raw_chunks if after[0] - c[0] <= JOINTS_AFTER_FIRST_CHUNK_S * 1e9]
        skipped, raw_chunks = len(raw_chunks) - len(kept), kept
        if not raw_chunks:
            raise ValueError(f"{bag}: no {chunk_topic} within {JOINTS_AFTER_FIRST_CHUNK_S:g} s before or after the "
                             f"first {topics.JOINT_STATES} with the arm's joints")
    joints = before[1] if before is not None else after[1]
    origin_ns = min(min(r, s) for r, s, _ in raw_chunks)
    chunks = [RecordedChunk(arrived_s=(r - origin_ns) / 1e9, observed_s=(s - origin_ns) / 1e9,
                            actions=content.actions.astype(np.float64), step_period_s=content.step_period_s)
              for r, s, content in raw_chunks]
    return RecordedChunks(start_q=joints, chunks=sorted(chunks, key=lambda c: c.arrived_s), skipped_chunks=skipped)


def replay(recorded: RecordedChunks, action_space, aggregator: ChunkAggregator | str,
           settle_s: float = 0.5) -> ReplayedSetpoints:
    """Replay ``recorded`` through the twin driver's controller with ``aggregator`` (time-aligned)."""
    with _quiet_controller():
        return _replay(recorded, action_space, ChunkAggregator(aggregator), settle_s)


@contextlib.contextmanager
def _quiet_controller():
    """The controller's per-chunk log lines (refusals, queue running dry) are the replay's figures,
    counted; printed, thousands of them would bury the bench's output."""
    logger = logging.getLogger("fedvla.robot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _replay(recorded: RecordedChunks, action_space, aggregator: ChunkAggregator, settle_s: float) -> ReplayedSetpoints:
    from fedvla.robot.backends import SimulatedArm
    from fedvla.robot.runtime import ArmRuntime
    from fedvla.twin.inprocess import twin_driver_configs

    driver, safety, retarget, servo, controller = twin_driver_configs(action_space)
    controller = dataclasses.replace(controller, chunk_aggregator=aggregator, time_aligned=True)
    runtime = ArmRuntime(driver, safety, retarget, servo, controller,
                         backend=SimulatedArm(1.0 / driver.control_rate_hz, recorded.start_q))
    arm, control = runtime.backend, runtime.controller
    period = arm.period_s
    t = 0.0
    control.step(t)  # connects
    pending = list(recorded.chunks)
    end_s = recorded.chunks[-1].arrived_s + settle_s
    while t <= end_s:
        while pending and pending[0].arrived_s <= t:
            chunk = pending.pop(0)
            control.submit_chunk(chunk.actions, chunk.step_period_s, t, chunk.observed_s)
        control.step(t)
        arm.advance(period)
        t += period
    setpoints = [(when, q) for when, kind, q in arm.commands if kind == "servo_j"]
    return ReplayedSetpoints(aggregator=aggregator, times_s=np.array([when for when, _ in setpoints]),
                             q=np.array([q for _, q in setpoints]), arrivals_s=[c.arrived_s for c in recorded.chunks],
                             rms_jerk=control.smoothness.rms_jerk,
                             largest_reference_jump=control.smoothness.largest_reference_jump,
                             refused=dict(control.refused), merges=control.chunk_merges)


def plot_boundaries(replays: list[ReplayedSetpoints], path: Path, title: str, boundaries: int = 4) -> None:
    """The setpoints (position and velocity) of the joint that moves most, per aggregator, over a
    window of ``boundaries`` chunk arrivals in the middle of the trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = replays[0]
    joint = int(np.argmax(np.ptp(first.q, axis=0)))
    arrivals = first.arrivals_s
    middle = len(arrivals) // 2
    window = arrivals[max(0, middle - boundaries // 2): middle + (boundaries + 1) // 2 + 1]
    begin, end = window[0] - 0.05, window[-1] + 0.05
    figure, (position_axes, velocity_axes) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for r in replays:
        inside = (r.times_s >= begin) & (r.times_s <= end)
        velocity = np.gradient(r.q[:, joint], r.times_s)
        label = (f"{r.aggregator.value}: jerk RMS {r.rms_jerk:.0f} rad/s³, largest jump "
                 f"{1000 * r.largest_reference_jump:.1f} mrad")
        position_axes.plot(r.times_s[inside], r.q[inside, joint], label=label)
        velocity_axes.plot(r.times_s[inside], velocity[inside], label=r.aggregator.value)
    for axes in (position_axes, velocity_axes):
        for arrival in (a for a in arrivals if begin <= a <= end):
            axes.axvline(arrival, color="grey", linestyle=":", linewidth=0.8)
        axes.grid(alpha=0.3)
    position_axes.set(ylabel=f"joint {joint + 1} setpoint (rad)", title=title)
    velocity_axes.set(xlabel="time (s); dotted: a chunk arrives", ylabel="setpoint velocity (rad/s)")
    position_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
