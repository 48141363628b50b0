"""The twin as the robot: ``python -m fedvla.twin`` serves a UR controller on loopback whose joints
move in MuJoCo, and our ur_rtde backend drives it as it drives a real UR3 (CB3, 125 Hz): servoJ
setpoints move the physical joints, the gripper output closes the fingers, and pushing into the
table is a protective stop."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rtde_control", reason="ur_rtde is not installed")
pytest.importorskip("mujoco")
pin = pytest.importorskip("pinocchio")

from fedvla.robot.backends import CommandRefused, SafetyStatus, ServoSettings  # noqa: E402
from fedvla.robot.ik import IkSolver  # noqa: E402
from fedvla.robot.kinematics import HOME_Q, ArmKinematics  # noqa: E402
from fedvla.robot.ur_rtde_arm import UrRtdeArm, UrRtdeConfig  # noqa: E402
from fedvla.twin.ur_controller import free_loopback_host  # noqa: E402


@pytest.fixture
def twin():
    try:
        host = free_loopback_host()
    except OSError as error:
        pytest.skip(f"no loopback address with the UR ports free: {error}")
    process = subprocess.Popen([sys.executable, "-m", "fedvla.twin", "--task", "sorting_pills", "--seed", "1",
                                "--host", host], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == f"ready {host}", line
        yield host, process
    finally:
        if process.poll() is None:
            process.stdin.write("quit\n")
            process.stdin.flush()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def command(process, text: str) -> str:
    process.stdin.write(text + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def servo_along(arm: UrRtdeArm, waypoints: np.ndarray, seconds: float, gripper_closed: bool) -> None:
    """Stream servoJ setpoints through joint waypoints at the controller's rate."""
    settings = ServoSettings()
    steps = int(seconds / arm.period_s)
    start = arm.read().q
    path = np.vstack([start, waypoints])
    for i in range(steps):
        s = (i + 1) / steps * (len(path) - 1)
        k = min(int(s), len(path) - 2)
        t0 = arm.init_period()
        arm.servo_j(path[k] + (path[k + 1] - path[k]) * (s - k), settings)
        arm.set_gripper(gripper_closed)
        arm.wait_period(t0)


@pytest.mark.timeout(120)
def test_servo_setpoints_move_the_physical_arm_and_the_table_stops_it(twin) -> None:
    host, process = twin
    kinematics = ArmKinematics()
    ik = IkSolver(kinematics)
    down = kinematics.fk(np.asarray(HOME_Q)).rotation
    # (IK first: once connected, the RTDE watchdog wants a command every 100 ms.)
    above = ik.solve(pin.SE3(down, np.array([0.3, 0.1, 0.15])), np.asarray(HOME_Q)).q
    into = ik.solve(pin.SE3(down, np.array([0.3, 0.1, -0.05])), above).q
    arm = UrRtdeArm(UrRtdeConfig(robot_ip=host, control_frequency_hz=125.0))
    arm.connect()
    try:
        assert arm.period_s == pytest.approx(1 / 125)  # a CB3, the paper's UR3
        np.testing.assert_allclose(arm.read().q, HOME_Q, atol=1e-3)
        servo_along(arm, above[None], 1.5, gripper_closed=False)
        servo_along(arm, above[None], 0.3, gripper_closed=True)
        reached = arm.read()
        np.testing.assert_allclose(reached.q, above, atol=0.01)  # tracked by the joint servos
        assert reached.safety is SafetyStatus.NORMAL
        assert reached.gripper_closed
        # Down through the table top: the contact force is over the limit, a protective stop.
        try:
            servo_along(arm, into[None], 1.5, gripper_closed=True)
        except CommandRefused:  # servoJ is refused once the stop ends the program
            pass
        stopped = arm.read()
        assert stopped.safety is SafetyStatus.PROTECTIVE_STOP
        tool_z = kinematics.fk(stopped.q).translation[2]
        assert -0.02 < tool_z < 0.03  # stopped on the table top, not through it
    finally:
        arm.close()
    assert command(process, "status").startswith("running sorting_pills 1")
    assert command(process, "reset open_drawer 3").startswith("running open_drawer 3")
    assert command(process, "reset fold_laundry 3").startswith("error: task: unknown task 'fold_laundry'")


@pytest.mark.timeout(120)
def test_resuming_after_a_cell_reset_holds_the_arm_where_the_reset_put_it(twin) -> None:
    # The reset stops the control script with the last servoJ target still in the input registers;
    # a script restarted over them would drive the arm back there (into the new layout).
    host, process = twin
    kinematics = ArmKinematics()
    down = kinematics.fk(np.asarray(HOME_Q)).rotation
    away = IkSolver(kinematics).solve(pin.SE3(down, np.array([0.3, 0.1, 0.15])), np.asarray(HOME_Q)).q
    arm = UrRtdeArm(UrRtdeConfig(robot_ip=host, control_frequency_hz=125.0, watchdog_frequency_hz=0))
    arm.connect()
    try:
        servo_along(arm, away[None], 1.2, gripper_closed=False)
        np.testing.assert_allclose(arm.read().q, away, atol=0.01)
        assert command(process, "reset sorting_pills 2").startswith("running sorting_pills 2")
        time.sleep(0.1)  # the next RTDE packages
        assert not arm.read().program_running
        arm.resume()
        assert arm.read().program_running
        time.sleep(1.0)  # no command: the arm must stay put
        np.testing.assert_allclose(arm.read().q, HOME_Q, atol=1e-3)
    finally:
        arm.close()
