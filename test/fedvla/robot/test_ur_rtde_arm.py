"""The ur_rtde backend (real ur_rtde library) driven by the arm runtime against the fake UR controller
(``fedvla.twin.ur_controller``), in real time: setpoints reach the controller within limits,
the gripper output follows the chunk, a refused connection and a dropped one are reported and
recovered without stale commands, a protective stop and a tripped watchdog are faults until
``recover``."""
import time

import numpy as np
import pytest

pytest.importorskip("rtde_control", reason="ur_rtde is not installed")
pin = pytest.importorskip("pinocchio")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.robot.backends import BackendError, SafetyStatus  # noqa: E402
from fedvla.robot.controller import ArmController, ArmMode, ControllerConfig  # noqa: E402
from fedvla.robot.ik import IkConfig, IkSolver  # noqa: E402
from fedvla.robot.kinematics import ArmKinematics  # noqa: E402
from fedvla.robot.retarget import RetargetConfig, Retargeter  # noqa: E402
from fedvla.robot.safety import SafetyConfig, SafetyGuard  # noqa: E402
from fedvla.robot.ur_rtde_arm import UrRtdeArm, UrRtdeConfig  # noqa: E402
from fedvla.twin.ur_controller import CB3, UrControllerSim  # noqa: E402

FORWARD = np.array([[1.0, 0, 0, 0]] * 4)  # +x tool deltas, gripper open
GRASP = np.array([[0, 1.0, 0, 1.0]] * 4)  # +y tool deltas, gripper closed


@pytest.fixture(scope="module")
def kinematics():
    return ArmKinematics()


def eventually(predicate, timeout=3.0):
    return UrControllerSim.wait_for(predicate, timeout)


class Runtime:
    """An ArmController on a UrRtdeArm, stepped in real time at the controller's rate."""

    def __init__(self, kinematics, host, **arm):
        self.arm = UrRtdeArm(UrRtdeConfig(robot_ip=host, **arm))
        self.guard = SafetyGuard(kinematics, SafetyConfig())
        self.controller = ArmController(self.arm, self.guard, IkSolver(kinematics, IkConfig(restarts=0)),
                                        Retargeter(RetargetConfig()), ControllerConfig(execute_steps=4, execute_on_start=True,
                                                                                       reconnect_period_s=0.2))
        self.started = time.monotonic()

    def now(self):
        return time.monotonic() - self.started

    def run(self, seconds):
        end = self.now() + seconds
        while self.now() < end:
            start = self.arm.init_period()
            self.controller.step(self.now())
            self.arm.wait_period(start)

    def run_until(self, predicate, timeout=5.0):
        end = self.now() + timeout
        while self.now() < end and not predicate():
            self.run(0.02)
        return predicate()

    def submit(self, actions):
        return self.controller.submit_chunk(actions, 0.1, self.now())

    def close(self):
        self.arm.close()


@pytest.fixture
def runtime(sim, kinematics):
    made = []

    def make(**arm):
        made.append(Runtime(kinematics, sim.host, **arm))
        return made[-1]

    yield make
    for runtime in made:
        runtime.close()


def assert_setpoints_within_limits(setpoints, guard, period):
    q = np.array(setpoints)
    assert np.all(q >= guard.lower) and np.all(q <= guard.upper)
    speed = np.abs(np.diff(q, axis=0)) / period
    assert speed.max() <= guard.max_velocity.max() * (1 + 1e-6)


@pytest.mark.parametrize("sim", [CB3], ids=["cb3"], indirect=True)
def test_a_chunk_becomes_servoj_setpoints_and_gripper_output(sim, runtime):
    rt = runtime(control_frequency_hz=125, gripper_output="tool:0")
    rt.controller.step(rt.now())
    assert rt.controller.mode is ArmMode.IDLE
    np.testing.assert_allclose(rt.controller.setpoint, sim.state.actual_q)
    assert sim.watchdog is not None and sim.watchdog[1] == pytest.approx(10.0)  # the RTDE watchdog is armed

    assert rt.submit(GRASP) is None
    rt.run(0.6)
    targets = sim.servoj_targets
    assert len(targets) > 20
    assert_setpoints_within_limits(targets, rt.guard, 1 / 125)
    last = sim.servoj_commands[-1]
    assert (last["time"], last["lookahead_time"], last["gain"]) == pytest.approx((1 / 125, 0.1, 300.0))
    assert eventually(lambda: sim.state.actual_digital_output_bits & (1 << 16))  # tool output 0: closed
    assert len(sim.secondary_programs) == 1 and sim.program_running  # beside the control script
    assert rt.arm.read().gripper_closed
    # the tool moved +y in the base frame, as the chunk said
    start_y = rt.controller.kinematics.fk(targets[0]).translation[1]
    assert rt.controller.kinematics.fk(rt.arm.read().q).translation[1] > start_y + 0.02

    # stale input: the runtime stops the servo and sends nothing more
    rt.run(0.4)
    assert rt.controller.mode is ArmMode.IDLE
    from fedvla.twin.ur_controller import Command
    assert Command.SERVO_STOP in [command for command, _ in sim.commands]
    count = len(sim.servoj_targets)
    rt.run(0.2)
    assert len(sim.servoj_targets) == count
    assert sim.protocol_errors == []


def test_connection_refused_is_a_clear_error(controller_process, kinematics):
    arm = UrRtdeArm(UrRtdeConfig(robot_ip=controller_process.host))  # nothing listens there now
    started = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot connect to the UR controller at {controller_process.host}"):
        arm.connect()
    assert time.monotonic() - started < 2.0 and not arm.is_connected
    with pytest.raises(BackendError, match="connection to the UR controller .* is gone"):
        arm.read()


def test_a_dropped_connection_reconnects_without_stale_commands(sim, runtime):
    rt = runtime()
    rt.controller.step(rt.now())
    assert rt.submit(FORWARD) is None
    rt.run(0.1)
    assert len(sim.servoj_targets) > 10

    sim.stop()  # the link goes down (listeners too, so nothing reconnects by itself)
    assert rt.run_until(lambda: rt.controller.mode is ArmMode.DISCONNECTED)
    assert rt.submit(FORWARD) == "arm is disconnected"
    rt.run(0.3)
    moved = np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0])
    sim.set_joint_positions(sim.state.actual_q + moved)  # the arm was moved by hand meanwhile
    sim.clear_records()
    sim.start()
    assert rt.run_until(lambda: rt.controller.mode is ArmMode.IDLE)
    resumed_q = sim.state.actual_q
    np.testing.assert_allclose(rt.controller.setpoint, resumed_q, atol=1e-9)
    rt.run(0.2)
    assert sim.servoj_targets == []  # nothing from before the drop is replayed
    assert rt.submit(FORWARD) is None
    rt.run(0.2)
    targets = sim.servoj_targets
    # the first setpoint is one period's step from where the arm was found, not where it was left
    assert targets and np.all(np.abs(targets[0] - resumed_q) <= rt.guard.max_velocity * rt.arm.period_s + 1e-9)


def test_a_link_that_drops_during_a_call_is_a_lost_connection(sim, runtime, core_warnings):
    """ur_rtde can find the link gone inside servoJ (isConnected() said yes a moment before) and
    raise RuntimeError from its own reconnect attempt: the controller must see a dropped link."""
    rt = runtime()
    rt.controller.step(rt.now())

    class DroppingControl:
        def __init__(self, control):
            self._control = control

        def __getattr__(self, name):
            if name in ("servoJ", "servoStop", "kickWatchdog"):
                def dropped(*args):
                    raise RuntimeError("Timeout connecting to UR dashboard server.")
                return dropped
            return getattr(self._control, name)

    rt.arm._control = DroppingControl(rt.arm._control)
    with pytest.raises(BackendError, match="connection to the UR controller at .* is gone: Timeout connecting"):
        rt.arm.servo_stop(5.0)
    assert rt.submit(FORWARD) is None
    # The next setpoint finds the link gone: the arm is lost (then reconnected at once, with new
    # interfaces, since the fake controller is still there), not a crash of the control loop.
    assert rt.run_until(lambda: any("lost the arm: the connection to the UR controller" in m for m in core_warnings))
    assert rt.run_until(lambda: rt.controller.mode is ArmMode.IDLE)
    assert not isinstance(rt.arm._control, DroppingControl)


def test_a_protective_stop_is_a_fault_until_recovered(sim, runtime):
    rt = runtime()
    rt.controller.step(rt.now())
    assert rt.submit(FORWARD) is None
    rt.run(0.1)
    sim.protective_stop()
    assert rt.run_until(lambda: rt.controller.mode is ArmMode.FAULT)
    # (the stopped script may be seen a moment before the safety mode: the reason follows it)
    assert rt.run_until(lambda: "protective_stop" in rt.controller.fault_reason)
    count = len(sim.servoj_targets)
    rt.run(0.2)
    assert len(sim.servoj_targets) == count  # nothing sent, nothing resumed by itself

    assert rt.controller.recover() == "recovered"
    assert "unlock protective stop" in sim.dashboard_commands
    assert sim.program_running and rt.arm.read().safety is SafetyStatus.NORMAL
    assert rt.submit(FORWARD) is None
    rt.run(0.2)
    assert len(sim.servoj_targets) > count


def test_recover_refuses_an_early_unlock_and_an_emergency_stop(sim, runtime):
    rt = runtime(unlock_timeout_s=0.3)
    rt.controller.step(rt.now())
    sim.set_option("protective_stop_unlock_delay", 30.0)  # PolyScope's 5 s rule, longer than the test
    sim.protective_stop()
    assert rt.run_until(lambda: rt.controller.mode is ArmMode.FAULT)
    with pytest.raises(BackendError, match="refused unlockProtectiveStop.*Cannot unlock protective stop until 5s after"):
        rt.controller.recover()
    assert rt.controller.mode is ArmMode.FAULT

    sim.emergency_stop()
    assert eventually(lambda: rt.arm.read().safety is SafetyStatus.EMERGENCY_STOP)
    with pytest.raises(BackendError, match="emergency_stop: release it on the robot first"):
        rt.controller.recover()
    sim.release_emergency_stop()  # safety normal again, but the arm stays powered off
    assert eventually(lambda: rt.arm.read().safety is SafetyStatus.NORMAL)
    with pytest.raises(BackendError, match="not powered on with brakes released"):
        rt.controller.recover()
    assert rt.controller.mode is ArmMode.FAULT


def test_a_tripped_watchdog_is_a_fault_until_recovered(sim, runtime):
    rt = runtime(watchdog_frequency_hz=5.0)
    rt.controller.step(rt.now())
    time.sleep(0.5)  # the driver hangs: no kick for longer than 1 / 5 Hz
    assert eventually(lambda: sim.watchdog_trips == 1 and not sim.program_running)
    rt.controller.step(rt.now())
    assert rt.controller.mode is ArmMode.FAULT and "control program stopped" in rt.controller.fault_reason
    assert rt.controller.recover() == "recovered" and sim.program_running
    assert rt.submit(FORWARD) is None
    rt.run(0.2)
    assert sim.servoj_targets and sim.watchdog_trips == 1  # kicked with every setpoint


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="robot_ip"):
        UrRtdeConfig(robot_ip=" ")
    with pytest.raises(ConfigError, match="control_frequency_hz.*500 \\(e-series\\) or 125 \\(CB3\\)"):
        UrRtdeConfig(robot_ip="10.0.0.2", control_frequency_hz=1000)
    with pytest.raises(ConfigError, match="gripper_output: 'tool:2' is not a digital output"):
        UrRtdeConfig(robot_ip="10.0.0.2", gripper_output="tool:2")
    assert UrRtdeConfig(robot_ip="10.0.0.2", gripper_output="configurable:3").gripper_bit == 11
    assert UrRtdeConfig(robot_ip="10.0.0.2", gripper_output="none").gripper_bit is None


def test_ur_rtdes_threads_start_one_level_below_a_real_time_caller(sim) -> None:
    """Made by the SCHED_FIFO control loop, ur_rtde's threads would share its priority, and FIFO
    gives a CPU to no equal: they start one level below, and the caller keeps its own."""
    import os
    import threading

    seen: dict = {}

    def connect_at_fifo_50() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        except (AttributeError, OSError) as err:
            seen["refused"] = err
            return
        before = set(os.listdir("/proc/self/task"))
        arm = UrRtdeArm(UrRtdeConfig(robot_ip=sim.host))
        arm.connect()
        started = set(os.listdir("/proc/self/task")) - before
        seen["started"] = {tid: (os.sched_getscheduler(int(tid)), os.sched_getparam(int(tid)).sched_priority)
                           for tid in started}
        seen["caller"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        arm.close()

    thread = threading.Thread(target=connect_at_fifo_50)
    thread.start()
    thread.join()
    if "refused" in seen:
        pytest.skip(f"SCHED_FIFO is not permitted here: {seen['refused']}")
    assert seen["started"] and set(seen["started"].values()) == {(os.SCHED_FIFO, 49)}, seen["started"]
    assert seen["caller"] == (os.SCHED_FIFO, 50)
