"""The arm runtime: action chunks in, safe servo setpoints out, one :meth:`ArmController.step`
per controller period (time is passed in, so tests run it on simulated time).

* An action chunk (the first ``execute_steps`` actions of the policy's chunk, one every
  ``step_period_s``) becomes joint waypoints: each action is retargeted from the previous
  waypoint's tool pose (:mod:`fedvla.robot.retarget`), solved by IK warm-started from the previous
  waypoint, and checked (:class:`fedvla.robot.safety.SafetyGuard`: joint limits, workspace, and the
  joint speed the waypoint would need). A chunk with any bad action is refused whole, with the
  reason; the arm keeps executing what it had.
* Time-aligned (``time_aligned``): a chunk answers an observation taken earlier (its stamp), so
  its actions are applied from the setpoint at the observation's time (a history of the last
  setpoints is kept) and action h is due at that time + h·``step_period_s``; the actions whose time
  has passed on arrival are behind the reference already (counted: ``late_actions``), and a chunk
  with none left is dropped (``late``, not a refusal: nothing in it was unsafe). The setpoints,
  not the measured joints: in process (no latency) and in the expert's demonstrations a delta goes
  from the setpoint, and the measured joints lag it by the servo's tracking. Unstamped chunks, and
  those observed before the history (a reconnect, a recovery), run from the setpoint on arrival.
* Overlapping time-aligned chunks (``chunk_aggregator``): ``latest`` - the new chunk's reference
  replaces the old one on arrival (the limiter absorbs the jump); ``crossfade`` - the reference
  moves linearly from the old chunk's to the new one's between the arrival and the old chunk's
  end (at least one action step), so it is continuous; ``ensemble`` - as ACT's temporal ensembling, the reference at a time
  is the average of every chunk that covers it, the i-th oldest weighted exp(-``ensemble_decay``·i).
  A merged reference is checked (joint limits, workspace, joint speed between its samples at the
  chunk's action times) before it is taken; a merge that fails is refused, and the old chunk runs on.
* Every period the controller interpolates the waypoints in time, moves the setpoint towards that
  target within velocity/acceleration limits (:class:`fedvla.robot.safety.MotionLimiter`), checks
  the setpoint once more and sends it with servoJ.
* Stale input: when the newest chunk is older than ``stale_timeout_s``, the next step issues
  servoStop (braking at ``stop_deceleration``) — at most one period after the timeout, so the stop
  is commanded within two control periods — and sends nothing more until a new chunk arrives.
* A protective, safeguard or emergency stop reported by the controller, its control program
  stopping (teach pendant, RTDE watchdog), or a setpoint the guard rejects puts the runtime in
  ``FAULT``; it stays there, sending nothing, until :meth:`recover` is called explicitly (the
  driver's ``~/recover`` service): that unlocks a protective stop, restarts the program, and
  resynchronises on the measured joints. Emergency and safeguard stops are released on the robot
  first; recover() refuses while they last.
* Dry run until enabled: a policy never moves the arm by surprise. Unless ``execute_on_start``,
  chunks are planned and checked (and refused, and shown as the planned path) exactly as when
  executing, but nothing is streamed: the arm holds. :meth:`enable` (the driver's ``~/enable``
  service) starts execution with the next chunk; :meth:`disable` brakes with servoStop and holds.
  With ``operator_heartbeat_timeout_s`` > 0 an operator's heartbeat (a deadman switch) must keep
  arriving: once it is older than that, or reports released, execution is disabled the same way
  and stays disabled until enabled again.
* A dropped connection: ``DISCONNECTED``, reconnect attempts every ``reconnect_period_s``; after
  reconnecting the setpoint restarts from the measured joints and every chunk received before the
  drop is discarded, so no stale command is ever sent.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
from collections import Counter, deque

import numpy as np

from fedvla.config import parse_enum, require, require_positive
from fedvla.robot.backends import ArmBackend, ArmState, BackendError, CommandRefused, SafetyStatus, ServoSettings
from fedvla.robot.ik import IkSolver
from fedvla.robot.retarget import Retargeter, RetargetError
from fedvla.robot.safety import MotionLimiter, SafetyGuard, Violation

log = logging.getLogger("fedvla.robot")


LATENCY_WINDOW = 200  # chunks over which the observation-to-setpoint latency is reported
SETPOINT_HISTORY_S = 2.0  # setpoints kept for time-aligned chunks: longer than any useful latency
LATE = "late"  # what submitting a time-aligned chunk whose every action's time has passed returns
# Points of a braking path checked against the limits, as fractions of the way to where it stops.
BRAKING_PATH_CHECKS = (0.0, 1 / 3, 2 / 3, 1.0)


class ChunkAggregator(str, enum.Enum):
    LATEST = "latest"
    CROSSFADE = "crossfade"
    ENSEMBLE = "ensemble"


class ArmMode(str, enum.Enum):
    IDLE = "idle"  # connected, holding: no (fresh) chunk to execute
    TRACKING = "tracking"  # executing a chunk
    FAULT = "fault"  # protective/emergency stop or a refused setpoint: waits for recover()
    DISCONNECTED = "disconnected"


@dataclasses.dataclass(kw_only=True)
class ControllerConfig:
    execute_steps: int = 4  # actions of each chunk executed (the policy's execute_steps)
    reconnect_period_s: float = 1.0
    execute_on_start: bool = False  # False: dry run (plan, check, show) until enable() (module docstring)
    operator_heartbeat_timeout_s: float = 0.0  # > 0: execution needs an operator heartbeat this fresh
    # Chunks run on their observation's clock, from the setpoint then (module docstring); False:
    # from the setpoint on arrival, as if no time had passed since the observation.
    time_aligned: bool = True
    chunk_aggregator: ChunkAggregator = ChunkAggregator.LATEST  # how overlapping time-aligned chunks merge
    ensemble_decay: float = 0.01  # ensemble: the i-th oldest chunk weighs exp(-decay·i) (ACT's m)

    def __post_init__(self) -> None:
        require(self.execute_steps >= 1, "execute_steps", f"must be at least 1, got {self.execute_steps}")
        self.chunk_aggregator = parse_enum(ChunkAggregator, self.chunk_aggregator, "chunk_aggregator")
        require(self.ensemble_decay >= 0, "ensemble_decay", f"is negative ({self.ensemble_decay})", "a rate >= 0")
        require_positive(self.reconnect_period_s, "reconnect_period_s")
        require(self.operator_heartbeat_timeout_s >= 0, "operator_heartbeat_timeout_s",
                f"is negative ({self.operator_heartbeat_timeout_s})", "0 (no heartbeat) or a timeout in seconds")


@dataclasses.dataclass
class Trajectory:
    start_s: float
    step_period_s: float
    waypoints: np.ndarray  # (n + 1, 6): the setpoint when it arrived, then one per action
    gripper_closed: list[bool]
    observed_s: float | None = None  # when the observation the chunk answers was taken (controller time)
    streamed: bool = False  # a setpoint computed from it has been sent
    aligned: bool = False  # planned from the setpoint at start_s (time-aligned), not from the one on arrival
    # The chunk this one took over from (merged over their overlap, by ``aggregator``), and when.
    previous: Trajectory | None = None
    arrived_s: float = 0.0
    aggregator: ChunkAggregator = ChunkAggregator.LATEST
    ensemble_decay: float = 0.0
    ran_dry: bool = False  # the arm reached its last waypoint with no newer chunk (counted once)

    @property
    def end_s(self) -> float:
        return self.start_s + self.step_period_s * (len(self.waypoints) - 1)

    @property
    def merge_end_s(self) -> float:
        """When the chunks this one took over from stop counting: the end of the previous one, and a
        cross-fade lasts at least one action step (a hand-over squeezed into the last milliseconds of
        the old chunk would be the jump it is there to avoid)."""
        if self.previous is None:
            return self.start_s
        if self.aggregator is ChunkAggregator.CROSSFADE:
            return self.arrived_s + max(self.previous.end_s - self.arrived_s, self.step_period_s)
        return self.previous.end_s

    def target(self, now_s: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """(joint reference, its velocity, gripper closed): this chunk's own (:meth:`own_target`)
        merged with the chunks it took over from while they last (module docstring)."""
        q, velocity, gripper = self.own_target(now_s)
        previous = self.previous
        if previous is None or now_s >= self.merge_end_s:
            return q, velocity, gripper
        if self.aggregator is ChunkAggregator.CROSSFADE:
            old_q, old_velocity, _ = previous.target(now_s)
            span = self.merge_end_s - self.arrived_s
            weight = float(np.clip((now_s - self.arrived_s) / span, 0.0, 1.0))
            ramp = (q - old_q) / span if 0.0 < weight < 1.0 else 0.0
            return (1 - weight) * old_q + weight * q, (1 - weight) * old_velocity + weight * velocity + ramp, gripper
        covering = [self]  # ENSEMBLE: every chunk covering now, newest first
        while covering[-1].previous is not None and now_s < covering[-1].previous.end_s:
            covering.append(covering[-1].previous)
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))[::-1]  # the oldest weighs 1
        weights /= weights.sum()
        references = [chunk.own_target(now_s) for chunk in covering]
        return (sum(w * r[0] for w, r in zip(weights, references)),
                sum(w * r[1] for w, r in zip(weights, references)), gripper)

    def forget_finished(self, now_s: float) -> None:
        """Drop the older chunks that ended before ``now_s``: they no longer count."""
        chunk = self
        while chunk.previous is not None:
            if now_s >= chunk.merge_end_s:
                chunk.previous = None
            else:
                chunk = chunk.previous

    def own_target(self, now_s: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """(joint reference, its velocity, gripper closed) of this chunk alone: linear interpolation
        between waypoints; the last one holds (velocity zero)."""
        position = (now_s - self.start_s) / self.step_period_s
        index = int(np.clip(np.floor(position), 0, len(self.waypoints) - 2))
        fraction = float(np.clip(position - index, 0.0, 1.0))
        q = (1 - fraction) * self.waypoints[index] + fraction * self.waypoints[index + 1]
        moving = 0.0 <= position < len(self.waypoints) - 1
        velocity = (self.waypoints[index + 1] - self.waypoints[index]) / self.step_period_s * moving
        gripper = self.gripper_closed[min(max(int(np.ceil(position)) - 1, 0), len(self.gripper_closed) - 1)]
        return q, velocity, gripper


@dataclasses.dataclass
class Smoothness:
    """How smooth the streamed motion is (``fedvla bench realtime`` compares the chunk aggregators
    by it): the jerk of the setpoints (change of acceleration per period, the largest joint's,
    rad/s^3; its RMS over the periods streamed in a row) and the jumps of the reference where a
    new chunk takes over (rad, the largest joint's)."""

    jerk_sum_sq: float = 0.0
    jerk_samples: int = 0
    largest_reference_jump: float = 0.0
    hand_overs: int = 0
    _acceleration: np.ndarray | None = None

    @property
    def rms_jerk(self) -> float:
        return float(np.sqrt(self.jerk_sum_sq / self.jerk_samples)) if self.jerk_samples else 0.0

    def setpoint(self, previous_velocity: np.ndarray, velocity: np.ndarray, period_s: float, continuing: bool) -> None:
        """A setpoint streamed one period after the last (``continuing``) or the first of a run."""
        acceleration = (velocity - previous_velocity) / period_s
        if continuing and self._acceleration is not None:
            self.jerk_sum_sq += float(np.max(np.abs(acceleration - self._acceleration)) / period_s) ** 2
            self.jerk_samples += 1
        self._acceleration = acceleration if continuing else None

    def hand_over(self, old_reference: np.ndarray, new_reference: np.ndarray) -> None:
        self.largest_reference_jump = max(self.largest_reference_jump,
                                          float(np.max(np.abs(new_reference - old_reference))))
        self.hand_overs += 1


class ArmController:
    def __init__(self, backend: ArmBackend, guard: SafetyGuard, ik: IkSolver, retargeter: Retargeter,
                 config: ControllerConfig | None = None, servo: ServoSettings | None = None) -> None:
        self.backend, self.guard, self.ik, self.retargeter = backend, guard, ik, retargeter
        self.config = config or ControllerConfig()
        self.servo = servo or ServoSettings()
        self.kinematics = guard.kinematics
        self.limiter = MotionLimiter(guard.max_velocity, guard.max_acceleration, backend.period_s)
        self.mode = ArmMode.DISCONNECTED
        self.fault_reason = ""
        self.refused: Counter[str] = Counter()  # refused chunks by reason
        self.refused_executing: Counter[str] = Counter()  # those refused while execution was enabled
        self.limit_brakes = 0  # periods braked instead of following the chunk, to stop within the limits
        self.chunk_merges = 0  # chunks merged with the one executing (chunk_aggregator)
        self.dry_holds = 0  # chunks whose last waypoint came with no newer chunk: the arm held, waiting
        self.late_actions = 0  # actions of time-aligned chunks whose time had passed when they arrived
        self.smoothness = Smoothness()
        self.setpoint: np.ndarray | None = None
        self.velocity = np.zeros(6)
        self.measured_q: np.ndarray | None = None
        self.gripper_closed = False  # as the robot last reported it
        self.trajectory: Trajectory | None = None
        # Seconds from the observation a chunk answers (its camera frame) to the first setpoint sent
        # from that chunk: the loop's end-to-end latency, over the last chunks.
        self.observation_to_setpoint_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.object_in_base: np.ndarray | None = None
        self._setpoints: deque[tuple[float, np.ndarray]] = deque()  # (time, setpoint), last SETPOINT_HISTORY_S
        self._last_chunk_s: float | None = None
        self._stopped = True  # servoStop sent, nothing streaming
        self._next_reconnect_s = -np.inf
        self.enabled = self.config.execute_on_start  # False: dry run
        self._heartbeat_s: float | None = None  # when the operator's heartbeat last said "alive"

    # Inputs ---------------------------------------------------------------------------------
    def submit_chunk(self, actions: np.ndarray, step_period_s: float, received_s: float,
                     observed_s: float | None = None) -> Violation | str | None:
        """Plan a chunk (horizon x action_dim) received at ``received_s`` and take it; returns the
        refusal reason (None when accepted). Only possible while connected and not in FAULT.
        ``observed_s``: when the observation it answers was taken, on the same clock (latency)."""
        plan = self.plan_chunk(actions, step_period_s, self.planning_start(observed_s))
        return self.take_plan(plan, received_s, observed_s)

    def _why_not_plannable(self) -> str | None:
        """Why no chunk can be planned or taken now (FAULT, DISCONNECTED, no setpoint), or None."""
        if self.mode in (ArmMode.FAULT, ArmMode.DISCONNECTED) or self.setpoint is None:
            return f"arm is {self.mode.value}"
        return None

    def planning_start(self, observed_s: float | None = None) -> tuple[np.ndarray, np.ndarray | None, float | None] | str:
        """What a plan starts from: (the setpoint, the object pose, the time of that setpoint: the
        observation's for a time-aligned chunk, None for one that runs from the setpoint on
        arrival), or why nothing can be planned."""
        why = self._why_not_plannable()
        if why is not None:
            return why
        start, start_s = self.setpoint, None
        if self.config.time_aligned and observed_s is not None and self._setpoints and observed_s >= self._setpoints[0][0]:
            start_s = observed_s
            start = next(q for t, q in reversed(self._setpoints) if t <= observed_s)
        return start.copy(), None if self.object_in_base is None else self.object_in_base.copy(), start_s

    def plan_chunk(self, actions: np.ndarray, step_period_s: float,
                   start: tuple[np.ndarray, np.ndarray | None, float | None] | str) -> Trajectory | Violation | str:
        """Retarget, check and solve IK for a chunk's executed actions from ``start``
        (:meth:`planning_start`): a trajectory (its start time set by :meth:`take_plan`), or the
        refusal reason. Changes nothing: the driver plans without holding the control loop's lock
        (IK for a chunk takes tens of milliseconds on a busy machine; the 125 Hz loop cannot wait)."""
        if isinstance(start, str):
            return start
        setpoint, object_in_base, start_s = start
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            return Violation.WRONG_SIZE
        if not (np.isfinite(step_period_s) and step_period_s > 0):
            return Violation.NOT_FINITE
        actions = actions[: self.config.execute_steps]
        q, tool = setpoint, self.kinematics.fk(setpoint).homogeneous
        waypoints, grippers = [q], []
        for action in actions:
            try:
                target, closed = self.retargeter.target(action, tool, object_in_base)
            except RetargetError:
                return Violation.NOT_FINITE if not np.all(np.isfinite(action)) else Violation.WRONG_SIZE
            problem = self.guard.check_tool_position(target[:3, 3])
            if problem is not None:
                return problem
            result = self.ik.solve(target, q)
            if not result.converged:
                return Violation.UNREACHABLE
            problem = self.guard.check_target(result.q)
            if problem is None and np.any(np.abs(result.q - q) / step_period_s > self.guard.max_velocity):
                problem = Violation.VELOCITY  # a jump the arm could not follow in one action step
            if problem is not None:
                return problem
            q, tool = result.q, self.kinematics.fk(result.q).homogeneous
            waypoints.append(q)
            grippers.append(closed)
        return Trajectory(0.0 if start_s is None else start_s, step_period_s, np.stack(waypoints), grippers,
                          aligned=start_s is not None)

    def take_plan(self, plan: Trajectory | Violation | str, received_s: float,
                  observed_s: float | None = None) -> Violation | str | None:
        """Execute (or, in dry run, show) a plan from :meth:`plan_chunk`; the refusal reason, counted,
        when it is one or when the arm stopped meanwhile. A time-aligned plan keeps its clock (its
        reference may be partway along on arrival) and is dropped (``late``, not counted as a
        refusal) when its last action's time has passed. Any other starts on arrival, from the
        setpoint it was made from; if the loop moved the setpoint since, from the new one (the first
        step absorbs the difference, within the guard's limits)."""
        if not isinstance(plan, Trajectory):
            return self._refuse(plan)
        why = self._why_not_plannable()  # (since the plan was made)
        if why is not None:
            return self._refuse(why)
        waypoints = plan.waypoints.copy()
        if plan.aligned:
            past = min(len(waypoints) - 1, int(np.floor((received_s - plan.start_s) / plan.step_period_s)))
            self.late_actions += max(past, 0)
            if received_s >= plan.end_s:
                return LATE
        else:
            waypoints[0] = self.setpoint
        trajectory = Trajectory(plan.start_s if plan.aligned else received_s, plan.step_period_s, waypoints,
                                plan.gripper_closed, observed_s, aligned=plan.aligned, arrived_s=received_s,
                                aggregator=self.config.chunk_aggregator,
                                ensemble_decay=self.config.ensemble_decay)
        current = self.trajectory
        if (plan.aligned and trajectory.aggregator is not ChunkAggregator.LATEST and current is not None
                and current.aligned and self.mode is ArmMode.TRACKING and received_s < current.end_s):
            trajectory.previous = current
            problem = self._check_merge(trajectory, received_s)
            if problem is not None:
                return self._refuse(problem)
            self.chunk_merges += 1
        if current is not None and self.mode is ArmMode.TRACKING:
            self.smoothness.hand_over(current.target(received_s)[0], trajectory.target(received_s)[0])
        self.trajectory = trajectory
        self._last_chunk_s = received_s
        if self.mode is ArmMode.IDLE and self.enabled:
            self.mode = ArmMode.TRACKING
        return None

    def _check_merge(self, trajectory: Trajectory, received_s: float) -> Violation | None:
        """A merged reference, sampled on arrival, at the new chunk's action times in the overlap and
        at the old chunk's end: each sample a valid target, and the joint speed between samples
        within the limit (the chunk's own waypoints were checked when it was planned)."""
        overlap_end = trajectory.merge_end_s
        times = [received_s, *(t for t in trajectory.start_s + trajectory.step_period_s *
                               np.arange(1, len(trajectory.waypoints)) if received_s < t < overlap_end), overlap_end]
        samples = [trajectory.target(t)[0] for t in times]
        for (t0, q0), (t1, q1) in zip(zip(times, samples), zip(times[1:], samples[1:])):
            if t1 > t0 and np.any(np.abs(q1 - q0) / (t1 - t0) > self.guard.max_velocity):
                return Violation.VELOCITY
        return next((p for p in map(self.guard.check_target, samples) if p is not None), None)

    def enable(self, now_s: float) -> str:
        """Start executing chunks (from the next one: a plan made in dry run is not executed).
        Raises :class:`ExecutionRefused` while a required operator heartbeat is missing."""
        if self.config.operator_heartbeat_timeout_s > 0 and not self._heartbeat_fresh(now_s):
            raise ExecutionRefused(f"no operator heartbeat in the last {self.config.operator_heartbeat_timeout_s:g} s: "
                                   "hold the deadman switch, then enable")
        if self.enabled:
            return "already enabled"
        self.enabled, self.trajectory = True, None
        log.info("execution enabled: the next action chunk moves the arm")
        return "enabled: the next action chunk moves the arm"

    def disable(self, why: str = "disabled") -> str:
        """Stop executing: brake (servoStop), drop the trajectory, plan in dry run from now on."""
        was = self.enabled
        self.enabled = False
        self.request_stop()
        if was:
            log.warning("execution disabled (%s): the arm holds; chunks are planned and shown, not executed", why)
        return f"dry run ({why})"

    def operator_heartbeat(self, now_s: float, alive: bool) -> None:
        """The operator's deadman switch: pressed (alive) or released."""
        if alive:
            self._heartbeat_s = now_s
        else:
            self._heartbeat_s = None
            if self.enabled:
                self.disable("operator heartbeat released")

    def _heartbeat_fresh(self, now_s: float) -> bool:
        return self._heartbeat_s is not None and now_s - self._heartbeat_s <= self.config.operator_heartbeat_timeout_s

    def recover(self) -> str:
        """Leave FAULT after the operator fixed the cause: unlock a protective stop, resynchronise
        on the measured joints. Raises BackendError when the robot is not back to normal."""
        if self.mode is not ArmMode.FAULT:
            return f"nothing to recover from ({self.mode.value})"
        state = self.backend.read()
        if state.safety not in (SafetyStatus.NORMAL, SafetyStatus.PROTECTIVE_STOP):
            raise BackendError(f"the robot is in {state.safety.value}: release it on the robot first")
        self.backend.resume()
        state = self.backend.read()
        if state.safety is not SafetyStatus.NORMAL or not state.program_running:
            raise BackendError(f"the robot did not resume ({state.safety.value}, program "
                               f"{'running' if state.program_running else 'stopped'}): check the teach pendant")
        self._resync(state.q)
        self.mode, self.fault_reason = ArmMode.IDLE, ""
        log.info("recovered: holding at the measured joints, waiting for a new action chunk")
        return "recovered"

    def source_lost(self, why: str) -> None:
        """The chunks' publisher is gone (the middleware's liveliness says so): brake now rather than
        run out the chunk in hand. Execution stays enabled: the next chunk, from a restarted
        policy, moves the arm again."""
        if self.trajectory is not None or self.mode is ArmMode.TRACKING:
            log.warning("the action chunk source is gone (%s): stopping", why)
            self.request_stop()

    def request_stop(self) -> None:
        """Stop now (the driver's ~/stop service): brake and drop the trajectory."""
        self.trajectory = None
        if self.mode is ArmMode.TRACKING:
            self.mode = ArmMode.IDLE
        self._send_stop()

    # The control loop ----------------------------------------------------------------------------
    def step(self, now_s: float) -> None:
        self._step(now_s)
        if self.setpoint is not None:  # (the setpoint in force from now: what a chunk observed now starts from)
            self._setpoints.append((now_s, self.setpoint.copy()))
            while now_s - self._setpoints[0][0] > SETPOINT_HISTORY_S:
                self._setpoints.popleft()

    def _step(self, now_s: float) -> None:
        if self.mode is ArmMode.DISCONNECTED or not self.backend.is_connected:
            self._reconnect(now_s)
            return
        try:
            state = self.backend.read()
        except BackendError as err:
            self._disconnected(str(err))
            return
        self.measured_q, self.gripper_closed = state.q, state.gripper_closed
        problem = _stopped_reason(state)
        if problem is not None:
            if self.mode is not ArmMode.FAULT:
                self._fault(problem, send_stop=False)
            elif state.safety is not SafetyStatus.NORMAL and problem != self.fault_reason:
                # ur_rtde reads "program running" and the safety mode over two RTDE streams: a
                # protective stop can show as a stopped program first. Name the actual cause.
                self.fault_reason = problem
                log.error("arm fault: %s; call recover once the cause is cleared", problem)
            return
        if self.enabled and self.config.operator_heartbeat_timeout_s > 0 and not self._heartbeat_fresh(now_s):
            self.disable("operator heartbeat stale")
        if not self.enabled:
            self._drop_stale_plan(now_s)
        if self.mode is not ArmMode.TRACKING or self.trajectory is None or not self._stream(state, now_s):
            self._kick_watchdog()  # holding: nothing else tells the controller the driver is alive

    def _stream(self, state: ArmState, now_s: float) -> bool:
        """One servoJ setpoint towards the trajectory; False when none was sent."""
        if self._stopped:  # (re)start streaming from where the arm is, as it moves (it may still brake)
            self.setpoint = state.q.copy()
            self.velocity = np.clip(state.qd, -self.guard.max_velocity, self.guard.max_velocity)
        try:
            if now_s - self._last_chunk_s > self.guard.config.stale_timeout_s:
                log.warning("no action chunk for %.2f s (stale_timeout_s %.2f): stopping",
                            now_s - self._last_chunk_s, self.guard.config.stale_timeout_s)
                self.trajectory, self.mode = None, ArmMode.IDLE
                self._send_stop()  # a command too: it counts as this period's watchdog kick
                return True
            self.trajectory.forget_finished(now_s)
            if self.trajectory.aligned and now_s >= self.trajectory.end_s and not self.trajectory.ran_dry:
                self.trajectory.ran_dry, self.dry_holds = True, self.dry_holds + 1
                log.info("the action chunk ran out before the next one came: holding at its last waypoint")
            target, target_velocity, gripper_closed = self.trajectory.target(now_s)
            q, velocity = self.limiter.step(self.setpoint, self.velocity, target, target_velocity,
                                            goal=self.trajectory.waypoints[-1])
            if not self._can_stop_within_limits(q, velocity):
                # Braking from here would carry the arm out (a chunk reversing at speed near the
                # workspace's edge: measured 2.6 cm past the reference). Brake now instead, along
                # the path the previous setpoint was checked to stop on.
                q, velocity = self.limiter.brake(self.setpoint, self.velocity)
                self.limit_brakes += 1
            problem = self.guard.check_setpoint(q, self.setpoint, self.velocity, self.backend.period_s)
            if problem is not None:
                self._fault(f"setpoint refused: {problem.value}")
                return True  # faulted: nothing more this period
            self.backend.servo_j(q, self.servo)  # also counts as a watchdog kick (UR: any register update)
            self.backend.set_gripper(gripper_closed)
            self.smoothness.setpoint(self.velocity, velocity, self.backend.period_s, continuing=not self._stopped)
            self.setpoint, self.velocity, self._stopped = q, velocity, False
            if not self.trajectory.streamed:
                self.trajectory.streamed = True
                if self.trajectory.observed_s is not None:
                    self.observation_to_setpoint_s.append(now_s - self.trajectory.observed_s)
        except CommandRefused as err:
            self._fault(str(err), send_stop=False)
        except BackendError as err:
            self._disconnected(str(err))
        return True

    def _can_stop_within_limits(self, q: np.ndarray, velocity: np.ndarray) -> bool:
        """Whether the arm, braking from setpoint ``q`` moving at ``velocity``, stops inside the
        joint limits and the workspace (checked at four points of the braking path: a straight
        line in joint space, a curve of a few centimetres for the tool)."""
        stop = self.limiter.stopping_point(q, velocity)
        return all(self.guard.check_target(q + fraction * (stop - q)) is None
                   for fraction in BRAKING_PATH_CHECKS)

    def _drop_stale_plan(self, now_s: float) -> None:
        """Dry run: a planned (shown) trajectory goes away once its chunk is stale, as it would stop."""
        if self.trajectory is not None and now_s - self._last_chunk_s > self.guard.config.stale_timeout_s:
            self.trajectory = None

    def _kick_watchdog(self) -> None:
        try:
            self.backend.kick_watchdog()
        except BackendError as err:
            self._disconnected(str(err))

    # Internals -------------------------------------------------------------------------------
    def _refuse(self, reason: Violation | str) -> Violation | str:
        key = reason.value if isinstance(reason, Violation) else reason
        self.refused[key] += 1
        if self.enabled:
            self.refused_executing[key] += 1
        log.warning("action chunk refused: %s", key)
        return reason

    def _send_stop(self) -> None:
        if not self._stopped and self.backend.is_connected:
            self.backend.servo_stop(self.guard.config.stop_deceleration)
        self._stopped = True
        self.velocity = np.zeros(6)
        if self.measured_q is not None:
            self.setpoint = self.measured_q.copy()

    def _fault(self, reason: str, send_stop: bool = True) -> None:
        self.mode, self.fault_reason, self.trajectory = ArmMode.FAULT, reason, None
        log.error("arm fault: %s; call recover once the cause is cleared", reason)
        if send_stop:
            try:
                self._send_stop()
            except BackendError:
                pass
        else:
            self._stopped, self.velocity = True, np.zeros(6)

    def _resync(self, measured_q: np.ndarray) -> None:
        self.setpoint, self.velocity, self.measured_q = measured_q.copy(), np.zeros(6), measured_q.copy()
        self._setpoints.clear()  # (a chunk observed before this answers a state that is gone)
        self.trajectory, self._last_chunk_s, self._stopped = None, None, True

    def _disconnected(self, reason: str) -> None:
        log.error("lost the arm: %s; reconnecting every %.1f s", reason, self.config.reconnect_period_s)
        self.mode, self.trajectory = ArmMode.DISCONNECTED, None
        self._next_reconnect_s = -np.inf

    def _reconnect(self, now_s: float) -> None:
        self.mode = ArmMode.DISCONNECTED
        if now_s < self._next_reconnect_s:
            return
        self._next_reconnect_s = now_s + self.config.reconnect_period_s
        try:
            self.backend.connect()
            state = self.backend.read()
        except BackendError as err:
            log.warning("reconnect failed: %s", err)
            return
        self._resync(state.q)
        problem = _stopped_reason(state)
        self.mode = ArmMode.IDLE if problem is None else ArmMode.FAULT
        self.fault_reason = problem or ""
        log.info("arm connected (%s)", self.mode.value)


class ExecutionRefused(RuntimeError):
    """Execution cannot be enabled now (the reason says what is missing)."""


def _stopped_reason(state: ArmState) -> str | None:
    """Why the robot will not execute setpoints now (None: it will)."""
    if state.safety is not SafetyStatus.NORMAL:
        return f"robot reports {state.safety.value}"
    if not state.program_running:
        return "the robot's control program stopped (teach pendant, RTDE watchdog or another client)"
    return None
