"""The real ur_rtde library (rtde_receive, rtde_control, rtde_io, dashboard_client) against the fake UR
controller of ``fedvla.twin.ur_controller``: state streams over RTDE and follows the fake;
servoJ setpoints arrive through the control script's input registers; a refused connection fails at
once; a dropped connection is noticed and reconnects; a protective stop and the RTDE watchdog stop the
script as on the robot.

ur_rtde's ports are fixed (RTDE 30004, dashboard 29999, script 30003), so every test runs its fake on
a loopback address of its own (``free_loopback_host``: 127.x.y.z per process) instead of 127.0.0.1;
one test uses 127.0.0.1 itself, serialised by a lock file and skipped while those ports are busy.
"""
import contextlib
import fcntl
import gc
import os
import tempfile
import time

import numpy as np
import pytest

rtde_receive = pytest.importorskip("rtde_receive", reason="ur_rtde is not installed")
rtde_control = pytest.importorskip("rtde_control", reason="ur_rtde is not installed")
rtde_io = pytest.importorskip("rtde_io", reason="ur_rtde is not installed")
dashboard_client = pytest.importorskip("dashboard_client", reason="ur_rtde is not installed")

from fedvla.twin.ur_controller import (  # noqa: E402
    CB3, E_SERIES, Command, RuntimeState, SafetyMode, UrControllerSim)

HOME = np.array([0.0, -1.2, 1.6, -1.97, -1.57, 0.0])  # the fake's initial joint positions
Q_A = np.array([0.1, -1.1, 1.5, -1.9, -1.5, 0.2])
Q_B = np.array([-0.2, -1.3, 1.7, -2.0, -1.6, 0.3])
SERVO = dict(speed=0.5, acceleration=0.5, lookahead_time=0.1, gain=300.0)


def eventually(predicate, timeout=3.0):
    return UrControllerSim.wait_for(predicate, timeout)


def servo_j(control, q, dt):
    return control.servoJ(list(map(float, q)), SERVO["speed"], SERVO["acceleration"], dt,
                          SERVO["lookahead_time"], SERVO["gain"])


def test_receive_reads_the_fakes_state_and_follows_it(sim, connect):
    receive = connect(rtde_receive.RTDEReceiveInterface, sim.host)

    assert receive.isConnected()
    np.testing.assert_allclose(receive.getActualQ(), HOME)
    assert receive.getRobotMode() == 7  # RUNNING
    assert receive.getSafetyMode() == SafetyMode.NORMAL and not receive.isProtectiveStopped()
    assert receive.getRuntimeState() == RuntimeState.STOPPED  # no program yet
    assert sim.output_recipes[-1]["frequency"] == 500  # e-series: ur_rtde asks for 500 Hz

    sim.state.actual_q = Q_A
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_A))
    sim.set_joint_positions(Q_B)
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_B) and np.allclose(receive.getTargetQ(), Q_B))
    # the TCP pose follows the joints through the arm's kinematics
    assert eventually(lambda: np.allclose(receive.getActualTCPPose(), sim.state.actual_TCP_pose))
    assert not np.allclose(receive.getActualTCPPose(), 0)
    stamp = receive.getTimestamp()
    assert eventually(lambda: receive.getTimestamp() > stamp)

    # digital outputs and the speed slider set through rtde_io come back over rtde_receive
    io = connect(rtde_io.RTDEIOInterface, sim.host)
    assert io.setStandardDigitalOut(3, True)
    assert eventually(lambda: receive.getDigitalOutState(3))
    assert io.setStandardDigitalOut(3, False)
    assert eventually(lambda: not receive.getDigitalOutState(3))
    assert io.setSpeedSlider(0.25)
    assert eventually(lambda: receive.getTargetSpeedFraction() == pytest.approx(0.25))
    assert sim.protocol_errors == []


def test_receive_custom_recipe_unknown_variable_and_drop(sim, connect):
    receive = connect(rtde_receive.RTDEReceiveInterface, sim.host, 125.0, ["timestamp", "actual_q"])
    assert sim.output_recipes[-1]["names"] == ["timestamp", "actual_q"]
    assert sim.output_recipes[-1]["frequency"] == 125
    sim.state.actual_q = Q_A
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_A))

    with pytest.raises(RuntimeError, match="not found by the controller.*no_such_variable"):
        rtde_receive.RTDEReceiveInterface(sim.host, -1.0, ["actual_q", "no_such_variable"])

    sim.drop_clients()  # the connection closes, the controller keeps listening
    assert eventually(lambda: not receive.isConnected())
    assert receive.reconnect()
    sim.state.actual_q = Q_B
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_B))


@pytest.mark.parametrize("sim", [E_SERIES, CB3], ids=["e-series", "cb3"], indirect=True)
def test_control_servoj_targets_reach_the_controller(sim, connect):
    version, host = sim.urcontrol_version, sim.host
    receive = connect(rtde_receive.RTDEReceiveInterface, host)
    control = connect(rtde_control.RTDEControlInterface, host)

    assert control.isConnected() and control.isProgramRunning()
    assert sim.program_running and len(sim.scripts) == 1 and "rtde_cmd()" in sim.scripts[0]
    frequency = 500 if version[0] == 5 else 125
    assert [r["frequency"] for r in sim.output_recipes] == [frequency, frequency]  # receive, control
    if host != "127.0.0.1":  # ur_rtde only asks PolyScope >= 5.6 for remote control, and not on 127.0.0.1
        assert ("is in remote control" in sim.dashboard_commands) == (version[0] == 5)

    dt = 1.0 / frequency
    targets = [HOME + 0.002 * k for k in range(1, 16)]
    for q in targets:
        start = control.initPeriod()
        assert servo_j(control, q, dt)
        control.waitPeriod(start)

    assert eventually(lambda: len(sim.servoj_targets) == len(targets))
    np.testing.assert_allclose(np.array(sim.servoj_targets), np.array(targets))
    last = sim.servoj_commands[-1]
    assert (last["time"], last["lookahead_time"], last["gain"]) == pytest.approx((dt, 0.1, 300.0))
    # on the wire: command id 11 in input_int_register_0, q in input_double_register_0..5
    package = [p["values"] for p in sim.received_inputs if p["values"].get("input_int_register_0") == 11][-1]
    assert [package[f"input_double_register_{i}"] for i in range(6)] == pytest.approx(targets[-1])
    # the fake tracks the setpoint, and the receive interface sees the motion
    assert eventually(lambda: np.allclose(receive.getActualQ(), targets[-1]))

    assert control.servoStop()  # not real-time: waits for the script's "done" handshake
    assert Command.SERVO_STOP in [command for command, _ in sim.commands]
    assert eventually(lambda: np.allclose(receive.getActualQd(), 0))

    control.stopScript()
    assert eventually(lambda: not control.isProgramRunning())
    assert sim.runtime_state == RuntimeState.STOPPED
    assert not servo_j(control, Q_A, dt)  # no script runs: ur_rtde refuses
    assert sim.protocol_errors == []


def test_connection_refused_raises_at_once(controller_process):
    host = controller_process.host  # the fake's address, nothing listening on it now
    for interface in (rtde_receive.RTDEReceiveInterface, rtde_control.RTDEControlInterface):
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="connect"):
            interface(host)
        assert time.monotonic() - started < 1.0


def _reconnected(interface):
    try:
        return interface.reconnect()
    except RuntimeError:  # still refused
        return False


def test_dropped_connection_is_noticed_and_reconnects(sim, connect):
    receive = connect(rtde_receive.RTDEReceiveInterface, sim.host)
    control = connect(rtde_control.RTDEControlInterface, sim.host)

    sim.stop()  # every socket closed (listeners first, so ur_rtde's own reconnect attempt is refused)
    assert eventually(lambda: not receive.isConnected() and not control.isConnected())
    time.sleep(0.2)  # let that background attempt fail before listening again
    sim.state.actual_q = Q_A  # the arm moved while the link was down
    sim.start()

    assert receive.reconnect() and receive.isConnected()
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_A))
    assert control.reconnect() and control.isConnected() and control.isProgramRunning()
    assert servo_j(control, Q_B, 0.002)
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_B))

    sim.outage(0.3)  # the network goes down for 0.3 s; the controller keeps running
    assert eventually(lambda: not receive.isConnected() and not control.isConnected())
    time.sleep(0.1)
    assert eventually(lambda: _reconnected(receive))
    assert control.reconnect() and control.isProgramRunning()
    assert servo_j(control, Q_A, 0.002)
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_A))


def test_protective_stop_is_visible_and_needs_unlock_and_reupload(sim, connect):
    receive = connect(rtde_receive.RTDEReceiveInterface, sim.host)
    control = connect(rtde_control.RTDEControlInterface, sim.host)
    assert servo_j(control, Q_A, 0.002)

    sim.protective_stop()
    assert eventually(receive.isProtectiveStopped)
    assert receive.getSafetyMode() == SafetyMode.PROTECTIVE_STOP
    assert receive.getSafetyStatusBits() & (1 << 2)
    assert eventually(lambda: not control.isProgramRunning())  # the controller ended the script
    assert not servo_j(control, Q_B, 0.002)

    dashboard = dashboard_client.DashboardClient(sim.host)
    dashboard.connect()
    try:
        assert "PROTECTIVE_STOP" in dashboard.safetystatus()
        dashboard.unlockProtectiveStop()
        assert eventually(lambda: receive.getSafetyMode() == SafetyMode.NORMAL and not receive.isProtectiveStopped())
    finally:
        dashboard.disconnect()
    assert control.reuploadScript()
    assert eventually(control.isProgramRunning)
    assert servo_j(control, Q_B, 0.002)
    assert eventually(lambda: np.allclose(receive.getActualQ(), Q_B))


def test_rtde_watchdog_stops_the_script_when_kicks_stop(sim, connect):
    control = connect(rtde_control.RTDEControlInterface, sim.host)
    assert control.setWatchdog(5.0)  # a kick needed at least every 200 ms
    assert tuple(sim.watchdog) == ("input_int_register_0", 5.0)

    for _ in range(10):
        assert control.kickWatchdog()
        time.sleep(0.01)
    assert sim.program_running and sim.watchdog_trips == 0

    assert eventually(lambda: not control.isProgramRunning())  # silence: the watchdog stops the script
    assert sim.watchdog_trips == 1
    assert not servo_j(control, Q_A, 0.002)


def test_second_control_interface_and_remote_control(sim, connect):
    sim.set_option("remote_control", False)
    if sim.host != "127.0.0.1":
        with pytest.raises(RuntimeError, match="remote control"):
            rtde_control.RTDEControlInterface(sim.host)
    sim.set_option("remote_control", True)

    connect(rtde_control.RTDEControlInterface, sim.host)
    # the control registers belong to the first connection, as on a real controller
    with pytest.raises(RuntimeError, match="already in use"):
        rtde_control.RTDEControlInterface(sim.host)


@contextlib.contextmanager
def _exclusive_127_0_0_1(timeout=10.0):
    path = os.path.join(tempfile.gettempdir(), "ur_controller_sim-127.0.0.1.lock")
    with open(path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("another test run holds 127.0.0.1's UR ports")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_on_127_0_0_1(started):
    with _exclusive_127_0_0_1():
        sim = started(UrControllerSim(host="127.0.0.1"))  # skips while something else holds the ports
        receive = control = None
        try:
            receive = rtde_receive.RTDEReceiveInterface("127.0.0.1")
            np.testing.assert_allclose(receive.getActualQ(), HOME)
            sim.state.actual_q = Q_B
            assert eventually(lambda: np.allclose(receive.getActualQ(), Q_B))

            control = rtde_control.RTDEControlInterface("127.0.0.1")
            assert "is in remote control" not in sim.dashboard_commands  # ur_rtde skips the check on 127.0.0.1
            assert servo_j(control, Q_A, 0.002)
            assert eventually(lambda: len(sim.servoj_targets) == 1)
            np.testing.assert_allclose(sim.servoj_targets[0], Q_A)
            assert eventually(lambda: np.allclose(receive.getActualQ(), Q_A))
        finally:
            del receive, control
            gc.collect()
            sim.shutdown()
