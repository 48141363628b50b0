"""A fake Universal Robots controller that speaks the real wire protocols on loopback, so tests (and
the workcell twin) can drive the real ``ur_rtde`` library (``rtde_receive``, ``rtde_control``, ``rtde_io``) against it.

Pure Python (stdlib + numpy). Written from the protocol descriptions (UR's RTDE guide, the dashboard
server command list) and from what ur_rtde 1.6 sends; no code is taken from either.

What is emulated
----------------
* **RTDE server** (default port 30004), protocol version 2: ``REQUEST_PROTOCOL_VERSION``,
  ``GET_URCONTROL_VERSION`` (configurable, e-series 5.x or CB3 3.x), ``CONTROL_PACKAGE_SETUP_OUTPUTS``
  (variable names + frequency; unknown or too-new names answer ``NOT_FOUND``),
  ``CONTROL_PACKAGE_SETUP_INPUTS`` (``NOT_FOUND`` for unknown names, ``IN_USE`` when another
  connection owns the input, as a real controller does), ``CONTROL_PACKAGE_START`` / ``PAUSE``, and
  ``DATA_PACKAGE`` both ways: outputs stream at the requested frequency (capped at the controller's
  500 Hz / 125 Hz); incoming input packages are decoded, recorded (:attr:`UrControllerSim.received_inputs`)
  and applied (input registers, digital/analog outputs, speed slider).
* **Dashboard server** (default 29999): greeting ``Connected: Universal Robots Dashboard Server`` and the
  usual commands (robotmode, safetymode, safetystatus, programState, running, PolyscopeVersion,
  is in remote control, get serial number, get robot model, power on/off, brake release, unlock
  protective stop, close (safety) popup, play, pause, stop, load, restart safety, quit, ...). Every
  command is recorded in :attr:`UrControllerSim.dashboard_commands`.
* **Script port** (default 30003, the one ur_rtde's ScriptClient uses; optionally a second one such as
  30002): programs (``def ...():`` ... ``end``) are recorded in :attr:`UrControllerSim.scripts`; URScript
  is *not* interpreted. Secondary programs (``sec ...():`` ... ``end``) run beside the main program, as
  on the robot: recorded in :attr:`UrControllerSim.secondary_programs`, their literal
  ``set_*_digital_out(n, True|False)`` calls applied. When the uploaded program is ur_rtde's RTDE control script the fake runs a
  Python model of that script's register handshake instead: ``runtime_state`` becomes PLAYING,
  ``output_int_register_<off>`` = 1 (ready) / 2 (done with command), and the command id in
  ``input_int_register_<off>`` is executed every controller cycle (``off`` is 0, or 24 with
  ``FLAG_UPPER_RANGE_REGISTERS``; read from the uploaded script). Any other program "runs" for
  ``custom_script_duration`` seconds; literal ``write_output_integer_register(i, v)`` calls in it are
  applied so ur_rtde's sendCustomScript* handshakes complete.
* **Commands of the control script** (ids from ur_rtde's ``RTDE::RobotCommand``): servoJ (11: ``actual_q``
  follows the target, optionally rate limited by ``max_joint_speed``), servoStop (16), speedJ (9,
  integrated), speedStop (15), moveJ / moveL_FK (1 / 4: joint-space interpolation at the given speed,
  sync or async with the async-progress register), stopJ / stopL (34 / 33), setWatchdog (35: an RTDE
  watchdog on ``input_int_register_<off>``, action "stop"), triggerProtectiveStop (31), getStepTime (26),
  getActualJointPositionsHistory (27), isSteady (47), setPayload (17), setTcp (29), forward kinematics
  (43/44, 58) and stop script (255). Every other command is recorded and acknowledged without effect.
* **Kinematics**: ``actual_TCP_pose`` / ``target_TCP_pose`` follow the joints through the standard DH
  model of the chosen arm (UR3, UR3e, UR5, UR5e, UR10e; ``robot_model=None`` disables it) and the TCP
  offset set by setTcp.
* **Safety**: :meth:`UrControllerSim.protective_stop` (or ``sim.safety_mode = SafetyMode.PROTECTIVE_STOP``)
  sets safety mode 3 and bit 2 of ``safety_status_bits`` (what ``RTDEReceiveInterface.isProtectiveStopped()``
  tests), stops
  motion and, like a real controller, ends the running script (``runtime_state`` STOPPED), so ur_rtde
  commands return False until the stop is unlocked (dashboard ``unlock protective stop``) and the script
  re-uploaded (``reuploadScript()``). :meth:`emergency_stop` is similar (bits 6 and 7, power off).
* **Faults for tests**: :meth:`stop` (close every socket, controller thread paused; :meth:`start` resumes
  with the same state), :meth:`outage` (connections dropped and refused for a while, the controller keeps
  running), :meth:`drop_clients` (close current connections, keep listening; not with a live
  RTDEControlInterface, whose own reconnect then loops, see :meth:`ControllerCore.drop_clients`),
  :meth:`stall` / :meth:`resume` (stop / restart the RTDE output stream with the sockets left open).

What is not emulated
--------------------
URScript interpretation; inverse kinematics (moveJ_IK/moveL/servoL/speedL/force mode/jog/freedrive are
recorded and acknowledged, the arm does not move); dynamics (velocities are finite differences, no
acceleration limits, ``servoJ`` lookahead/gain ignored); the primary/secondary/real-time state streams
on 30001-30003 (ur_rtde does not read them); RTDE protocol version 1; the ExternalControl URCap
(``FLAG_USE_EXT_UR_CAP``: the fake never fetches the script from ``ur_cap_port``; call
:meth:`start_control_script` to pretend such a program runs); PolyScope's 5 s rule before a protective
stop may be unlocked (``protective_stop_unlock_delay`` restores it).

Process model
-------------
ur_rtde's pybind11 constructors keep the GIL while they block on the controller's answers, so a
controller made of Python threads in the test process would deadlock them. :class:`UrControllerSim`
therefore runs the controller (:class:`ControllerCore`) in a child process (module ``fedvla.twin.ur_controller.process``)
and forwards every call over a socketpair; everything it returns is a copy.

Ports
-----
ur_rtde 1.6's Python classes take no port arguments: RTDE is 30004 (receive, control, io), the dashboard
29999 and the script client 30003 are compiled in. Only the hostname is free. Linux routes all of
127.0.0.0/8 to the loopback interface, so :func:`free_loopback_host` picks a private 127.x.y.z address
per process on which those fixed ports are free: concurrent test runs never collide and nothing needs
127.0.0.1. (ur_rtde skips its "remote control" check for 127.0.0.1/localhost only; on other addresses it
asks the dashboard ``is in remote control``, which answers ``remote_control``.) Each port can still be
chosen explicitly (``0`` = any free port, read back from :attr:`UrControllerSim.rtde_port` etc.) for
clients that accept ports, e.g. ``dashboard_client.DashboardClient(host, port)`` or UR's own RTDE client.
"""

from fedvla.twin.ur_controller.connections import free_loopback_host
from fedvla.twin.ur_controller.core import ControllerCore
from fedvla.twin.ur_controller.dh import forward_kinematics
from fedvla.twin.ur_controller.process import UrControllerSim
from fedvla.twin.ur_controller.protocol import (
    CB3, DEFAULT_PORTS, E_SERIES, Command, RobotMode, RuntimeState, SafetyMode, SimState)

__all__ = [
    "UrControllerSim", "ControllerCore", "SimState", "RobotMode", "SafetyMode", "RuntimeState", "Command",
    "free_loopback_host", "forward_kinematics", "DEFAULT_PORTS", "E_SERIES", "CB3",
]
