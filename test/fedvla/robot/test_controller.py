"""The arm runtime on the simulated UR3, in simulated time: chunks become smooth, limited motion;
bad actions are refused; stale input stops the arm; faults wait for an explicit recovery; a
dropped connection never replays old commands. Plus a fuzz test: nothing outside the limits ever
reaches the arm."""
import numpy as np
import pytest

pin = pytest.importorskip("pinocchio")

from fedvla.robot.backends import BackendError, SafetyStatus, SimulatedArm  # noqa: E402
from fedvla.robot.controller import ArmController, ArmMode, ControllerConfig, ExecutionRefused  # noqa: E402
from fedvla.robot.ik import IkConfig, IkSolver  # noqa: E402
from fedvla.robot.kinematics import ArmKinematics  # noqa: E402
from fedvla.robot.retarget import RetargetConfig, Retargeter, hand_in_object, robot_target  # noqa: E402
from fedvla.robot.safety import SafetyConfig, SafetyGuard, Violation  # noqa: E402

PERIOD = 0.008  # a CB3 controller
START = np.array([0.0, -1.2, 1.6, -1.97, -1.57, 0.0])  # tool about 0.3 m in front of the base, pointing down


@pytest.fixture(scope="module")
def kinematics():
    return ArmKinematics()


def make(kinematics, execution: dict | None = None, **safety):
    """Executing from the start unless ``execution`` says otherwise (ControllerConfig fields)."""
    arm = SimulatedArm(PERIOD, START)
    guard = SafetyGuard(kinematics, SafetyConfig(**safety))
    config = ControllerConfig(**({"execute_steps": 4, "execute_on_start": True} | (execution or {})))
    controller = ArmController(arm, guard, IkSolver(kinematics, IkConfig(restarts=0)), Retargeter(RetargetConfig()),
                               config)
    controller.step(0.0)  # connects
    assert controller.mode is ArmMode.IDLE
    return arm, guard, controller


def run(arm, controller, start_s, seconds):
    t = start_s
    for _ in range(int(round(seconds / PERIOD))):
        controller.step(t)
        arm.advance(PERIOD)
        t += PERIOD
    return t


def wait_for_mode(runtime, mode: ArmMode, timeout_s: float = 5.0) -> None:
    """Until the running loop of ``runtime`` (an ArmRuntime) reports ``mode``."""
    import time

    deadline = time.monotonic() + timeout_s
    while runtime.snapshot().mode is not mode and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runtime.snapshot().mode is mode


def servo_commands(arm):
    return [(t, q) for t, kind, q in arm.commands if kind == "servo_j"]


def assert_within_limits(arm, guard, kinematics):
    """Every servoJ setpoint, judged against the arm's state when it arrived."""
    commands = servo_commands(arm)
    assert len(commands) == len(arm.servo_from)
    for (_, q), (previous_q, previous_v) in zip(commands, arm.servo_from):
        assert np.all(q >= guard.lower) and np.all(q <= guard.upper)
        v = (q - previous_q) / PERIOD
        assert np.all(np.abs(v) <= guard.max_velocity * (1 + 1e-6) + 1e-9)
        assert np.all(np.abs(v - previous_v) / PERIOD <= guard.max_acceleration * (1 + 1e-6) + 1e-9)
        assert guard.check_tool_position(kinematics.fk(q).translation) is None


def test_a_chunk_moves_the_tool_by_the_actions_steps(kinematics) -> None:
    arm, guard, controller = make(kinematics, stale_timeout_s=2.0)
    start_tool = kinematics.fk(START).translation.copy()
    chunk = np.array([[1.0, 0.0, 0.0, -1.0]] * 4)  # +1 cm along x per action, gripper open
    assert controller.submit_chunk(chunk, 0.1, 0.0) is None
    assert controller.mode is ArmMode.TRACKING
    # The setpoint trails the 0.4 s chunk (acceleration-limited) and settles on its last waypoint.
    run(arm, controller, 0.0, 1.0)
    moved = kinematics.fk(arm.q).translation - start_tool
    np.testing.assert_allclose(moved, [0.04, 0.0, 0.0], atol=2e-4)
    np.testing.assert_allclose(kinematics.fk(arm.q).rotation, kinematics.fk(START).rotation, atol=1e-3)
    assert_within_limits(arm, guard, kinematics)


def test_chunks_in_a_row_move_the_tool_at_the_commanded_speed(kinematics) -> None:
    """A policy at 10 Hz sending 4-action chunks of 1.5 cm steps, each planned from the setpoint it
    meets: the arm keeps the pace, on a straight path. Chasing each new chunk's reference as if it
    stood still braked at every chunk boundary, and limiting each joint on its own bent the path
    (measured before the fix: 5.6 of 15 cm, 1.4 cm off in height)."""
    arm, guard, controller = make(kinematics, stale_timeout_s=2.0)
    start_tool = kinematics.fk(START).translation.copy()
    t, steps = 0.0, 10
    for _ in range(steps):
        assert controller.submit_chunk(np.array([[-1.5, 0.0, 0.0, -1.0]] * 4), 0.1, t) is None
        t = run(arm, controller, t, 0.1)
    moved = kinematics.fk(arm.q).translation - start_tool
    assert -moved[0] > 0.75 * 0.015 * steps and abs(moved[2]) < 0.005, moved
    assert_within_limits(arm, guard, kinematics)


def test_a_fast_descent_stops_at_its_goal_above_the_workspace_floor(kinematics) -> None:
    """A chunk that ends 5 mm above the workspace's floor, approached at full pace: the setpoints
    brake onto it and never pass below (a twin demonstration's grasp is 5 mm above it)."""
    arm, guard, controller = make(kinematics, stale_timeout_s=2.0)
    start_tool = kinematics.fk(START).translation.copy()
    floor = guard.config.workspace_min[2]
    step_cm = (start_tool[2] - floor - 0.005) / 4 * 100  # four actions, down to 5 mm above the floor
    t = 0.0
    for _ in range(3):  # re-sent as a closed-loop policy would, from wherever the arm is
        remaining_cm = (kinematics.fk(controller.setpoint).translation[2] - floor - 0.005) * 100
        chunk = np.array([[0.0, 0.0, -min(step_cm, remaining_cm / 4), -1.0]] * 4)
        assert controller.submit_chunk(chunk, 0.1, t) is None
        t = run(arm, controller, t, 0.2)
    t = run(arm, controller, t, 0.5)
    assert controller.mode is not ArmMode.FAULT, controller.fault_reason
    lowest = min(kinematics.fk(q).translation[2] for _, q in servo_commands(arm))
    assert floor + 0.004 < lowest and abs(kinematics.fk(arm.q).translation[2] - floor - 0.005) < 0.001
    assert_within_limits(arm, guard, kinematics)


def test_a_late_chunk_runs_on_its_observations_clock_and_a_chunk_past_its_time_is_refused(kinematics) -> None:
    """Four 5 mm actions observed at t = 0 and arriving 0.25 s later: their reference is already
    12.5 mm along, so the arm gets there sooner than had the chunk started on arrival (unstamped),
    at the same place; a chunk whose last action was due before it arrived is dropped as late (its
actions counted, no refusal: nothing in it was unsafe)."""
    start_tool = kinematics.fk(START).translation.copy()
    chunk = np.array([[0.5, 0.0, 0.0, -1.0]] * 4)

    def done_at(observed_s):
        arm, _, controller = make(kinematics, stale_timeout_s=2.0)
        t = run(arm, controller, 0.0, 0.25)  # holding: the setpoints' history covers the observation
        assert controller.submit_chunk(chunk, 0.1, t, observed_s=observed_s) is None
        while np.linalg.norm(kinematics.fk(controller.setpoint).translation - start_tool - [0.02, 0, 0]) > 2e-4:
            t = run(arm, controller, t, PERIOD)
        return t, controller

    aligned_s, controller = done_at(0.0)
    target, _, _ = controller.trajectory.target(0.25)
    np.testing.assert_allclose(kinematics.fk(target).translation - start_tool, [0.0125, 0, 0], atol=2e-4)
    on_arrival_s, _ = done_at(None)
    assert aligned_s < on_arrival_s - 0.05, (aligned_s, on_arrival_s)  # (measured 0.61 s against 0.67 s)
    late_before = controller.late_actions
    assert late_before == 2  # (due at 0.1 and 0.2 s, arrived at 0.25 s)
    assert controller.submit_chunk(chunk, 0.1, aligned_s, observed_s=aligned_s - 0.45) == "late"
    assert controller.late_actions == late_before + 4 and not controller.refused


def test_a_delta_chunk_goes_from_the_setpoint_at_its_observation(kinematics) -> None:
    """The arm moves along x; a chunk observed at t = 0.2 arrives at t = 0.3, after 1 more cm: its
    four 1 cm steps end 4 cm from where the tool was at the observation, not from where it is on
    arrival (the policy saw the first)."""
    arm, _, controller = make(kinematics, stale_timeout_s=2.0)
    t = run(arm, controller, 0.0, 0.1)
    chunk = np.array([[1.0, 0.0, 0.0, -1.0]] * 8)
    assert controller.submit_chunk(chunk, 0.1, t, observed_s=t) is None
    observed_s = t + 0.2
    t = run(arm, controller, t, 0.2)
    at_observation = kinematics.fk(controller.setpoint).translation.copy()
    t = run(arm, controller, t, 0.1)
    assert kinematics.fk(controller.setpoint).translation[0] > at_observation[0] + 0.008
    assert controller.submit_chunk(chunk[:4], 0.1, t, observed_s=observed_s) is None
    run(arm, controller, t, 1.0)
    np.testing.assert_allclose(kinematics.fk(arm.q).translation, at_observation + [0.04, 0, 0], atol=5e-4)


def overlapping_chunks(kinematics, aggregator: str, decay: float = 0.01):
    """Chunk A (eight 1 cm steps along x, observed and arriving at 0.25 s), then chunk B (four
    along y, observed at 0.35 s, arriving at 0.4 s): (arm, guard, controller, A, B, the reference
    an instant before B arrived, the time B arrived)."""
    arm, guard, controller = make(kinematics, {"chunk_aggregator": aggregator, "ensemble_decay": decay},
                                  stale_timeout_s=2.0)
    t = run(arm, controller, 0.0, 0.25)
    assert controller.submit_chunk(np.array([[1.0, 0.0, 0.0, -1.0]] * 8), 0.1, t, observed_s=t) is None
    chunk_a = controller.trajectory
    t = run(arm, controller, t, 0.15)
    before = chunk_a.target(t)[0]
    assert controller.submit_chunk(np.array([[0.0, 1.0, 0.0, -1.0]] * 4), 0.1, t, observed_s=t - 0.05) is None
    return arm, guard, controller, chunk_a, controller.trajectory, before, t


def test_crossfade_hands_over_continuously_and_ensemble_averages_the_overlap(kinematics) -> None:
    """Latest-wins jumps to the new chunk's reference on arrival; the cross-fade starts where the
    old reference was and reaches the new chunk's own by the old one's end; the ensemble is the
    exp(-m·i) weighted mean of the chunks covering a time (ACT's temporal ensembling). The arm
    stays within its limits throughout."""
    _, _, controller, _, chunk_b, before, arrived = overlapping_chunks(kinematics, "latest")
    assert np.max(np.abs(chunk_b.target(arrived)[0] - before)) > 1e-3  # the jump the others avoid
    assert controller.smoothness.largest_reference_jump == pytest.approx(np.max(np.abs(chunk_b.target(arrived)[0] - before)))

    arm, guard, controller, chunk_a, chunk_b, before, arrived = overlapping_chunks(kinematics, "crossfade")
    np.testing.assert_allclose(chunk_b.target(arrived)[0], before, atol=1e-12)
    halfway = (arrived + chunk_a.end_s) / 2
    np.testing.assert_allclose(chunk_b.target(halfway)[0],
                               (chunk_a.own_target(halfway)[0] + chunk_b.own_target(halfway)[0]) / 2, atol=1e-12)
    np.testing.assert_allclose(chunk_b.target(chunk_a.end_s)[0], chunk_b.own_target(chunk_a.end_s)[0], atol=1e-12)
    run(arm, controller, arrived, 1.5)
    assert controller.mode is not ArmMode.FAULT, controller.fault_reason
    assert_within_limits(arm, guard, kinematics)
    assert controller.smoothness.hand_overs == 1 and controller.smoothness.largest_reference_jump < 1e-9

    arm, guard, controller, chunk_a, chunk_b, _, arrived = overlapping_chunks(kinematics, "ensemble", decay=0.5)
    t = arrived + 0.05
    weight_b = np.exp(-0.5)
    np.testing.assert_allclose(chunk_b.target(t)[0], (chunk_a.own_target(t)[0] + weight_b * chunk_b.own_target(t)[0])
                               / (1 + weight_b), atol=1e-12)
    run(arm, controller, arrived, 1.5)
    assert controller.mode is not ArmMode.FAULT, controller.fault_reason
    assert_within_limits(arm, guard, kinematics)


def test_a_merge_the_arm_could_not_follow_is_refused_and_the_old_chunk_runs_on(kinematics) -> None:
    """A chunk reversing at 25 cm/s, observed 0.2 s before it arrives just as the chunk along +x
    ends: cross-fading onto it within the one action step a hand-over takes at least would outrun
    the joints, so it is refused (velocity) and the first chunk stays."""
    arm, _, controller = make(kinematics, {"chunk_aggregator": "crossfade"}, stale_timeout_s=2.0)
    t = run(arm, controller, 0.0, 0.25)
    assert controller.submit_chunk(np.array([[1.0, 0.0, 0.0, -1.0]] * 4), 0.1, t, observed_s=t) is None
    chunk_a = controller.trajectory
    t = run(arm, controller, t, chunk_a.end_s - 0.01 - t)
    assert controller.submit_chunk(np.array([[-2.5, 0.0, 0.0, -1.0]] * 4), 0.1, t, observed_s=t - 0.2) == Violation.VELOCITY
    assert controller.trajectory is chunk_a


def test_the_latency_runs_from_the_observation_to_the_chunks_first_setpoint(kinematics) -> None:
    """Per chunk, once: its observation's time to the first servo setpoint computed from it (the
    next control period after it arrived); dry run and unstamped chunks measure nothing."""
    arm, _, controller = make(kinematics, stale_timeout_s=2.0)
    chunk = np.array([[1.0, 0.0, 0.0, -1.0]] * 4)
    assert controller.submit_chunk(chunk, 0.1, 0.05, observed_s=0.0) is None  # the frame is 50 ms old on arrival
    t = run(arm, controller, 0.05, 0.1)
    assert list(controller.observation_to_setpoint_s) == pytest.approx([0.05])  # the first period after arrival
    assert controller.submit_chunk(chunk, 0.1, t + 0.004, observed_s=t - 0.03) is None
    t = run(arm, controller, t + 0.008, 0.1)
    assert list(controller.observation_to_setpoint_s)[1] == pytest.approx(0.038 + 0.0)
    assert controller.submit_chunk(chunk, 0.1, t) is None  # unstamped: not measured
    run(arm, controller, t, 0.1)
    assert len(controller.observation_to_setpoint_s) == 2


def test_in_dry_run_chunks_are_planned_and_checked_but_nothing_moves(kinematics) -> None:
    arm, _, controller = make(kinematics, execution={"execute_on_start": False}, stale_timeout_s=0.3)
    chunk = np.array([[1.0, 0.0, 0.0, 1.0]] * 4)
    assert controller.submit_chunk(chunk, 0.1, 0.0) is None
    assert controller.trajectory is not None and controller.mode is ArmMode.IDLE  # planned, shown, held
    assert controller.submit_chunk(np.array([[np.nan, 0, 0, 0]]), 0.1, 0.0) == Violation.NOT_FINITE  # still checked
    t = run(arm, controller, 0.0, 0.2)
    assert servo_commands(arm) == [] and np.allclose(arm.q, START) and not arm.gripper_closed
    run(arm, controller, t, 0.2)
    assert controller.trajectory is None  # a stale plan is no longer shown
    # Enabled, the next chunk moves the arm; the plan made in dry run is not executed.
    assert controller.submit_chunk(chunk, 0.1, 0.4) is None
    assert controller.enable(0.4).startswith("enabled") and controller.trajectory is None
    assert controller.submit_chunk(chunk, 0.1, 0.41) is None and controller.mode is ArmMode.TRACKING
    run(arm, controller, 0.41, 0.2)
    assert servo_commands(arm) and all(time >= 0.4 - 1e-9 for time, _ in servo_commands(arm))  # (the arm's clock)


def test_revoking_enable_brakes_and_holds(kinematics) -> None:
    arm, _, controller = make(kinematics, stale_timeout_s=5.0)
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.15)
    assert controller.disable("operator").startswith("dry run")
    stops = [time for time, kind, _ in arm.commands if kind == "servo_stop"]
    streamed = len(servo_commands(arm))
    assert len(stops) == 1 and controller.mode is ArmMode.IDLE and not controller.enabled
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, t)
    run(arm, controller, t, 0.3)
    assert len(servo_commands(arm)) == streamed and not np.any(arm.qd)  # planned, never sent


def test_a_stale_operator_heartbeat_stops_execution_until_enabled_again(kinematics) -> None:
    arm, _, controller = make(kinematics, execution={"execute_on_start": False, "operator_heartbeat_timeout_s": 0.1},
                              stale_timeout_s=5.0)
    with pytest.raises(ExecutionRefused, match="no operator heartbeat"):
        controller.enable(0.0)
    controller.operator_heartbeat(0.0, alive=True)
    controller.enable(0.0)
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, 0.0)
    t = 0.0
    for _ in range(10):  # the operator holds the switch for 80 ms, then lets go of it
        controller.operator_heartbeat(t, alive=True)
        t = run(arm, controller, t, PERIOD)
    assert controller.enabled and servo_commands(arm)
    t = run(arm, controller, t, 0.15)
    stops = [time for time, kind, _ in arm.commands if kind == "servo_stop"]
    assert not controller.enabled and len(stops) == 1 and stops[0] <= 0.08 + 0.1 + 2 * PERIOD
    controller.operator_heartbeat(t, alive=True)  # back, but execution waits for an explicit enable
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, t)
    assert controller.mode is ArmMode.IDLE
    controller.operator_heartbeat(t, alive=False)  # released: refused at once
    with pytest.raises(ExecutionRefused):
        controller.enable(t)


@pytest.mark.parametrize(("action", "reason"), [
    ([np.nan, 0, 0, 0], Violation.NOT_FINITE),
    ([1e6, 0, 0, 0], Violation.WORKSPACE),
    ([0, 0, -40.0, 0], Violation.WORKSPACE),  # 40 cm down: through the table
    ([1.0, 2.0], Violation.WRONG_SIZE),
])
def test_bad_actions_are_refused_with_their_reason_and_nothing_moves(kinematics, action, reason) -> None:
    arm, _, controller = make(kinematics)
    assert controller.submit_chunk(np.array([action]), 0.1, 0.0) == reason
    run(arm, controller, 0.0, 0.1)
    assert servo_commands(arm) == [] and controller.refused[reason.value] == 1


def test_a_jump_faster_than_the_joint_speed_limit_is_refused(kinematics) -> None:
    arm, _, controller = make(kinematics, velocity_scale=0.05)
    # 8 cm in one 0.1 s action step needs far more than 5 % of the joint speeds.
    assert controller.submit_chunk(np.array([[0.0, 8.0, 0, 0]]), 0.1, 0.0) == Violation.VELOCITY


def test_stale_input_stops_the_arm_within_two_periods(kinematics) -> None:
    arm, guard, controller = make(kinematics, stale_timeout_s=0.2)
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.5)
    stops = [time for time, kind, _ in arm.commands if kind == "servo_stop"]
    assert len(stops) == 1 and stops[0] - 0.2 <= 2 * PERIOD
    assert all(time < stops[0] for time, _ in servo_commands(arm))  # nothing streamed after the stop
    assert controller.mode is ArmMode.IDLE and not np.any(arm.qd)
    # A new chunk resumes from where the arm stands.
    assert controller.submit_chunk(np.array([[0.0, 1.0, 0.0, 1.0]]), 0.1, t) is None
    run(arm, controller, t, 0.2)
    assert arm.gripper_closed


def test_a_lost_chunk_source_brakes_at_once_and_a_new_chunk_resumes(kinematics) -> None:
    arm, _, controller = make(kinematics, stale_timeout_s=5.0)
    controller.submit_chunk(np.array([[2.0, 0.0, 0.0, -1.0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.1)
    controller.source_lost("the policy died")  # 0.3 s of the chunk left, 4.9 s before it is stale
    t = run(arm, controller, t, 0.3)
    stops = [time for time, kind, _ in arm.commands if kind == "servo_stop"]
    assert len(stops) == 1 and stops[0] <= 0.1 + 1e-9
    assert all(time < stops[0] for time, _ in servo_commands(arm)) and not np.any(arm.qd)
    assert controller.mode is ArmMode.IDLE and controller.enabled
    controller.source_lost("again")  # holding already: nothing more to do
    assert len([1 for _, kind, _ in arm.commands if kind == "servo_stop"]) == 1
    assert controller.submit_chunk(np.array([[0.0, 1.0, 0.0, 1.0]]), 0.1, t) is None  # a restarted policy
    run(arm, controller, t, 0.2)
    assert arm.gripper_closed


def test_a_protective_stop_waits_for_an_explicit_recovery(kinematics) -> None:
    arm, _, controller = make(kinematics)
    controller.submit_chunk(np.array([[1.0, 0, 0, 0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.1)
    sent = len(servo_commands(arm))
    arm.trigger(SafetyStatus.PROTECTIVE_STOP)
    t = run(arm, controller, t, 0.1)
    assert controller.mode is ArmMode.FAULT and "protective_stop" in controller.fault_reason
    assert controller.submit_chunk(np.array([[1.0, 0, 0, 0]]), 0.1, t) == "arm is fault"
    t = run(arm, controller, t, 0.5)
    assert len(servo_commands(arm)) == sent  # nothing sent while stopped, nothing resumed by itself
    assert controller.recover() == "recovered" and arm.safety is SafetyStatus.NORMAL
    np.testing.assert_array_equal(controller.setpoint, arm.q)
    assert controller.submit_chunk(np.array([[0, 1.0, 0, 0]]), 0.1, t) is None


def test_an_emergency_stop_cannot_be_recovered_from_software(kinematics) -> None:
    arm, _, controller = make(kinematics)
    arm.trigger(SafetyStatus.EMERGENCY_STOP)
    run(arm, controller, 0.0, 0.02)
    with pytest.raises(BackendError, match="in emergency_stop: release it on the robot first"):
        controller.recover()
    assert controller.mode is ArmMode.FAULT


def test_a_stopped_control_program_is_a_fault_until_recovered(kinematics) -> None:
    arm, _, controller = make(kinematics)
    controller.submit_chunk(np.array([[1.0, 0, 0, 0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.1)
    sent = len(servo_commands(arm))
    arm.stop_program()  # e.g. the RTDE watchdog tripped, or someone pressed stop on the pendant
    t = run(arm, controller, t, 0.2)
    assert controller.mode is ArmMode.FAULT and "control program stopped" in controller.fault_reason
    assert len(servo_commands(arm)) == sent
    assert controller.recover() == "recovered" and arm.program_running
    assert controller.submit_chunk(np.array([[0, 1.0, 0, 0]]), 0.1, t) is None
    run(arm, controller, t, 0.1)
    assert len(servo_commands(arm)) > sent


def test_a_protective_stop_seen_after_the_stopped_program_names_the_cause(kinematics) -> None:
    """ur_rtde reports the program state and the safety mode over two streams: the stopped script
    of a protective stop can arrive first. The fault reason must end up naming the stop."""
    arm, _, controller = make(kinematics)
    controller.submit_chunk(np.array([[1.0, 0, 0, 0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.1)
    arm.stop_program()
    t = run(arm, controller, t, 0.05)
    assert "control program stopped" in controller.fault_reason
    arm.trigger(SafetyStatus.PROTECTIVE_STOP)
    run(arm, controller, t, 0.05)
    assert controller.mode is ArmMode.FAULT and "protective_stop" in controller.fault_reason


def test_after_a_dropped_connection_no_old_command_is_sent(kinematics) -> None:
    arm, _, controller = make(kinematics)
    controller.submit_chunk(np.array([[1.0, 0, 0, 0]] * 4), 0.1, 0.0)
    t = run(arm, controller, 0.0, 0.1)
    arm.drop_connection()
    t = run(arm, controller, t, 0.3)
    assert controller.mode is ArmMode.DISCONNECTED
    assert controller.submit_chunk(np.array([[1.0, 0, 0, 0]]), 0.1, t) == "arm is disconnected"
    sent = len(servo_commands(arm))
    arm.q = arm.q + 0.05  # moved by hand (freedrive) while the link was down
    arm.restore()
    t = run(arm, controller, t, 1.5)
    assert controller.mode is ArmMode.IDLE and len(servo_commands(arm)) == sent
    np.testing.assert_array_equal(controller.setpoint, arm.q)  # resynchronised on the measured joints


def test_fuzzed_policy_outputs_never_produce_a_command_outside_the_limits(kinematics) -> None:
    arm, guard, controller = make(kinematics, stale_timeout_s=0.3)
    rng = np.random.default_rng(7)
    kinds = [lambda: rng.normal(0, 1, (4, 4)),  # ordinary
             lambda: rng.normal(0, 50, (4, 4)),  # huge
             lambda: np.where(rng.random((4, 4)) < 0.2, np.nan, rng.normal(0, 1, (4, 4))),  # NaN
             lambda: np.where(rng.random((4, 4)) < 0.2, np.inf * rng.choice([-1, 1], (4, 4)), 1.0),  # inf
             lambda: rng.choice([-1e9, 1e9, 0.0], (4, 4)),  # extremes
             lambda: rng.normal(0, 1, (4, rng.integers(1, 9))),  # wrong sizes
             lambda: np.tile(rng.uniform(-30, 30, (1, 4)), (4, 1))]  # jumps
    t, outcomes = 0.0, {"accepted": 0, "refused": 0}
    for i in range(10_000):
        chunk = kinds[i % len(kinds)]()
        period = float(rng.choice([0.1, 0.05, 1e-9, np.nan, -1.0])) if i % 11 == 0 else 0.1
        outcomes["accepted" if controller.submit_chunk(chunk, period, t) is None else "refused"] += 1
        for _ in range(2):
            controller.step(t)
            arm.advance(PERIOD)
            t += PERIOD
    assert controller.mode in (ArmMode.IDLE, ArmMode.TRACKING), controller.fault_reason
    assert outcomes["accepted"] > 500 and outcomes["refused"] > 3000
    assert len(servo_commands(arm)) > 1000
    assert_within_limits(arm, guard, kinematics)


def test_object_centric_retargeting_keeps_the_tool_to_object_relation() -> None:
    object_a = np.eye(4)
    object_a[:3, 3] = [0.3, 0.1, 0.05]
    hand = np.eye(4)
    hand[:3, 3] = [0.3, 0.1, 0.15]  # 10 cm above object A
    relation = hand_in_object(object_a, hand)
    object_b = np.eye(4)
    object_b[:3, :3] = pin.rpy.rpyToMatrix(0, 0, np.pi / 2)
    object_b[:3, 3] = [0.2, -0.2, 0.05]
    target = robot_target(object_b, relation)
    np.testing.assert_allclose(target[:3, 3], [0.2, -0.2, 0.15])
    np.testing.assert_allclose(hand_in_object(object_b, target), relation, atol=1e-12)
    # An ee_pose action in the object frame lands relative to wherever the object is now.
    retarget = Retargeter(RetargetConfig(action_kind="ee_pose", action_frame="object"))
    tool, closed = retarget.target(np.array([0.0, 0.0, 0.1, 1.0]), np.eye(4), object_b)
    np.testing.assert_allclose(tool[:3, 3], [0.2, -0.2, 0.15]) and closed
    np.testing.assert_allclose(tool[:3, :3], pin.rpy.rpyToMatrix(np.pi, 0, 0), atol=1e-12)  # tool down


def test_object_poses_in_a_urdf_frame_are_moved_to_the_base_frame() -> None:
    from fedvla.config import ConfigError
    from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime

    runtime = ArmRuntime(ArmDriverConfig())
    pose = np.eye(4)
    pose[:3, 3] = (0.05, -0.02, 0.6)  # 60 cm in front of the camera
    runtime.set_object_pose(pose, "camera_color_optical_frame")
    camera = runtime.kinematics.link_poses(np.asarray(runtime.config.initial_joint_positions))["camera_color_optical_frame"]
    np.testing.assert_allclose(runtime.controller.object_in_base, camera @ pose)
    runtime.set_object_pose(pose, "base_link")
    np.testing.assert_array_equal(runtime.controller.object_in_base, pose)
    with pytest.raises(ConfigError, match="frame 'map' is not a link of ur3_gripper.urdf"):
        runtime.set_object_pose(pose, "map")
    with pytest.raises(ValueError, match="not a finite 4x4"):
        runtime.set_object_pose(np.full((4, 4), np.nan), "base_link")


def test_a_located_position_becomes_an_object_frame_parallel_to_the_base() -> None:
    from fedvla.config import ConfigError
    from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime

    runtime = ArmRuntime(ArmDriverConfig())
    camera = runtime.kinematics.link_poses(np.asarray(runtime.config.initial_joint_positions))["camera_color_optical_frame"]
    runtime.set_object_position(np.array([0.05, -0.02, 0.6]), "camera_color_optical_frame")
    expected = np.eye(4)
    expected[:3, 3] = camera[:3, :3] @ [0.05, -0.02, 0.6] + camera[:3, 3]
    np.testing.assert_allclose(runtime.controller.object_in_base, expected, atol=1e-12)
    for bad in ([np.nan, 0.0, 0.5], [0.1, 0.2]):
        with pytest.raises(ValueError, match="is not three finite coordinates"):
            runtime.set_object_position(np.array(bad), "base_link")
    np.testing.assert_allclose(runtime.controller.object_in_base, expected, atol=1e-12)  # refused: kept
    with pytest.raises(ConfigError, match="object_position_topic: is set together with object_pose_topic"):
        ArmDriverConfig(object_pose_topic="/a", object_position_topic="/b")


def test_planning_a_chunk_does_not_hold_up_the_control_loop() -> None:
    """IK for a chunk runs outside the loop's lock: with every solve slowed to 30 ms (a busy
    machine), the loop keeps its period while the chunk is planned, and the plan is still taken."""
    import threading
    import time

    from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime

    runtime = ArmRuntime(ArmDriverConfig())  # the simulated UR3, in real time
    solve = runtime.controller.ik.solve

    def slow_solve(*args, **kwargs):
        time.sleep(0.03)
        return solve(*args, **kwargs)

    runtime.controller.ik.solve = slow_solve
    cycles: list[float] = []
    step = runtime.controller.step

    def counted_step(now_s):
        cycles.append(time.monotonic())
        return step(now_s)

    runtime.controller.step = counted_step
    runtime.start()
    try:
        wait_for_mode(runtime, ArmMode.IDLE)
        result: list = []
        planner = threading.Thread(target=lambda: result.append(
            runtime.submit_chunk(np.array([[0.0, 0.5, 0.0, 1.0]] * 4), 0.1)))
        began = time.monotonic()
        planner.start()
        planner.join()
        planned = time.monotonic()
    finally:
        runtime.close()
    during = [t for t in cycles if began <= t <= planned]
    gaps = np.diff(during)
    assert planned - began > 0.1  # four slowed solves
    assert result == [None]
    assert len(during) > 0.5 * (planned - began) / runtime.backend.period_s and gaps.max() < 0.05, gaps.max()


def test_a_stalled_loop_names_its_slowest_part_and_its_time_waiting_for_a_cpu(core_warnings) -> None:
    """A stall's warning says which part of the cycle took the time and how much of it the thread
    waited for a CPU: here the lock, held by another thread, with the CPU free."""
    import re
    import time

    from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime

    runtime = ArmRuntime(ArmDriverConfig(realtime_priority=0))  # the simulated UR3, in real time
    runtime.start()
    try:
        wait_for_mode(runtime, ArmMode.IDLE)
        with runtime._lock:
            time.sleep(0.2)
        time.sleep(0.05)
    finally:
        runtime.close()
    stalls = [m for m in core_warnings if m.startswith("control loop stalled")]
    assert stalls, core_warnings
    found = re.search(r"stalled for (\d+) ms \(slowest part of the cycle before: waiting for the lock, (\d+) ms; "
                      r"(\d+) ms of it waiting for a CPU\)", stalls[-1])
    assert found, stalls[-1]
    stalled, locked, queued = map(int, found.groups())
    assert locked >= 150 and stalled >= locked and queued < locked / 2


def test_recovery_runs_on_the_control_loops_thread() -> None:
    """ur_rtde restarts the control script holding the GIL, then arms the RTDE watchdog: recovered
    from the service's thread, the loop came back too late and the watchdog stopped the script.
    While the loop runs, recover() hands the work to it; failures reach the caller."""
    import threading

    from fedvla.robot.backends import BackendError, SafetyStatus
    from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime

    runtime = ArmRuntime(ArmDriverConfig())  # the simulated UR3, in real time
    recover, ran_on = runtime.controller.recover, []

    def recording_recover():
        ran_on.append(threading.current_thread().name)
        return recover()

    runtime.controller.recover = recording_recover
    runtime.start()
    try:
        wait_for_mode(runtime, ArmMode.IDLE)
        runtime.backend.trigger(SafetyStatus.EMERGENCY_STOP)
        wait_for_mode(runtime, ArmMode.FAULT)
        with pytest.raises(BackendError, match="release it on the robot first"):
            runtime.recover()
        runtime.backend.trigger(SafetyStatus.PROTECTIVE_STOP)
        assert runtime.recover() == "recovered"
        assert runtime.snapshot().mode is ArmMode.IDLE
    finally:
        runtime.close()
    assert ran_on == ["arm-control", "arm-control"]
    assert runtime.recover() == "nothing to recover from (idle)"  # no loop: on the caller's thread


def test_refusals_while_executing_are_counted_apart_from_dry_run_ones(kinematics) -> None:
    arm, _, controller = make(kinematics, execution={"execute_on_start": False})
    far = np.array([[40.0, 0.0, 0.0, 1.0]])  # a metre at once: outside the workspace
    controller.submit_chunk(far, 0.1, 0.0)
    controller.enable(0.0)
    controller.submit_chunk(far, 0.1, 0.1)
    controller.submit_chunk(far, 0.1, 0.2)
    assert sum(controller.refused.values()) == 3 and sum(controller.refused_executing.values()) == 2


def run_async(kinematics, latency_s: float, seconds: float = 3.0):
    """A policy on the async schedule (4 executed actions of 0.1 s, refilled at half the horizon
    left) whose chunks (3 mm steps along x, then back) reach the driver ``latency_s`` after their
    observation, in simulated time: (arm, guard, controller)."""
    from fedvla.app.inference_schedule import InferenceMode, InferenceSchedule

    arm, guard, controller = make(kinematics, stale_timeout_s=2.0)
    schedule = InferenceSchedule(InferenceMode.ASYNC, 0.1, 4, refill_threshold=0.5)
    t, in_flight = run(arm, controller, 0.0, 0.1), []
    while t < seconds:
        if schedule.due(t):
            schedule.observed(t)
            direction = 1.0 if t < seconds / 2 else -1.0
            in_flight.append((t + latency_s, t, np.array([[0.3 * direction, 0.0, 0.0, -1.0]] * 4)))
        if in_flight and in_flight[0][0] <= t:
            _, observed, chunk = in_flight.pop(0)
            assert controller.submit_chunk(chunk, 0.1, t, observed_s=observed) is None
            schedule.published(t)
        t = run(arm, controller, t, 0.025)
    return arm, guard, controller


def test_the_async_queue_never_runs_dry_below_the_refill_margin_and_holds_safely_beyond_it(kinematics) -> None:
    """Refilling at half of a 0.4 s horizon leaves a 0.2 s margin: a 150 ms policy never lets the
    driver run out; a 350 ms one does, and the arm holds at the last waypoint (no fault, no
    refusal, within the limits) until the next chunk."""
    _, _, controller = run_async(kinematics, 0.15)
    assert controller.dry_holds == 0 and controller.chunk_merges == 0 and not controller.refused
    arm, guard, controller = run_async(kinematics, 0.35)
    assert controller.dry_holds > 3 and not controller.refused
    assert controller.mode is ArmMode.TRACKING
    assert_within_limits(arm, guard, kinematics)


def test_the_setpoints_jerk_is_measured_as_the_streamed_setpoints_give_it(kinematics) -> None:
    """The RMS jerk the driver reports equals the one computed from the servoJ setpoints the arm
    received (third difference over the control period, the largest joint's), one run of streaming."""
    arm, _, controller = make(kinematics, stale_timeout_s=2.0)
    t = 0.0
    for step in range(6):
        assert controller.submit_chunk(np.array([[-1.0, 0.5 * (-1) ** step, 0.0, -1.0]] * 4), 0.1, t) is None
        t = run(arm, controller, t, 0.1)
    q = np.array([q for _, q in servo_commands(arm)])
    q = np.vstack([START, q])  # (the run starts at rest at START)
    jerk = np.max(np.abs(np.diff(q, n=3, axis=0)), axis=1) / PERIOD ** 3
    assert controller.smoothness.jerk_samples == len(jerk)
    assert controller.smoothness.rms_jerk == pytest.approx(float(np.sqrt(np.mean(jerk ** 2))), rel=1e-9)
