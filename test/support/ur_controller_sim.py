"""A fake Universal Robots controller that speaks the real wire protocols on loopback, so tests can
drive the real ``ur_rtde`` library (``rtde_receive``, ``rtde_control``, ``rtde_io``) against it.

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
therefore runs the controller (:class:`ControllerCore`) in a child process (this file run as a script)
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
from __future__ import annotations

import collections
import contextlib
import enum
import errno
import math
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "UrControllerSim", "ControllerCore", "SimState", "RobotMode", "SafetyMode", "RuntimeState", "Command",
    "free_loopback_host", "DEFAULT_PORTS", "E_SERIES", "CB3",
]

E_SERIES, CB3 = (5, 15, 0), (3, 15, 7)  # URControl versions: an e-series (500 Hz) and a CB3 (125 Hz)
DEFAULT_PORTS = {"rtde": 30004, "dashboard": 29999, "script": 30003}

# --- RTDE wire format ---------------------------------------------------------------------------
RTDE_REQUEST_PROTOCOL_VERSION = 86  # 'V'
RTDE_GET_URCONTROL_VERSION = 118  # 'v'
RTDE_TEXT_MESSAGE = 77  # 'M'
RTDE_DATA_PACKAGE = 85  # 'U'
RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS = 79  # 'O'
RTDE_CONTROL_PACKAGE_SETUP_INPUTS = 73  # 'I'
RTDE_CONTROL_PACKAGE_START = 83  # 'S'
RTDE_CONTROL_PACKAGE_PAUSE = 80  # 'P'
_HEADER = struct.Struct(">HB")  # size (incl. header), type

# RTDE type name -> (struct format, element count)
_TYPE_FORMAT = {
    "BOOL": ("?", 1), "UINT8": ("B", 1), "UINT32": ("I", 1), "UINT64": ("Q", 1), "INT32": ("i", 1),
    "DOUBLE": ("d", 1), "VECTOR3D": ("3d", 3), "VECTOR6D": ("6d", 6), "VECTOR6INT32": ("6i", 6),
    "VECTOR6UINT32": ("6I", 6),
}


class RobotMode(enum.IntEnum):
    NO_CONTROLLER = -1
    DISCONNECTED = 0
    CONFIRM_SAFETY = 1
    BOOTING = 2
    POWER_OFF = 3
    POWER_ON = 4
    IDLE = 5
    BACKDRIVE = 6
    RUNNING = 7
    UPDATING_FIRMWARE = 8


class SafetyMode(enum.IntEnum):
    NORMAL = 1
    REDUCED = 2
    PROTECTIVE_STOP = 3
    RECOVERY = 4
    SAFEGUARD_STOP = 5
    SYSTEM_EMERGENCY_STOP = 6
    ROBOT_EMERGENCY_STOP = 7
    VIOLATION = 8
    FAULT = 9
    VALIDATE_JOINT_ID = 10
    UNDEFINED_SAFETY_MODE = 11
    AUTOMATIC_MODE_SAFEGUARD_STOP = 12
    SYSTEM_THREE_POSITION_ENABLING_STOP = 13


class RuntimeState(enum.IntEnum):
    STOPPING = 0
    STOPPED = 1
    PLAYING = 2
    PAUSING = 3
    PAUSED = 4
    RESUMING = 5


class Command(enum.IntEnum):
    """Command ids ur_rtde writes into ``input_int_register_<off>`` (those the fake acts on)."""

    NO_CMD = 0
    MOVEJ = 1
    MOVEJ_IK = 2
    MOVEL = 3
    MOVEL_FK = 4
    SPEEDJ = 9
    SPEEDL = 10
    SERVOJ = 11
    SERVOC = 12
    SPEED_STOP = 15
    SERVO_STOP = 16
    SET_PAYLOAD = 17
    SERVOL = 24
    GET_STEPTIME = 26
    GET_ACTUAL_JOINT_POSITIONS_HISTORY = 27
    SET_TCP = 29
    PROTECTIVE_STOP = 31
    STOPL = 33
    STOPJ = 34
    SET_WATCHDOG = 35
    GET_JOINT_TORQUES = 38
    GET_TCP_OFFSET = 40
    GET_FORWARD_KINEMATICS_DEFAULT = 43
    GET_FORWARD_KINEMATICS_ARGS = 44
    IS_STEADY = 47
    GET_ACTUAL_TOOL_FLANGE_POSE = 58
    STOP_SCRIPT = 255


# safety_status_bits (UR RTDE guide)
_SAFETY_BITS = {
    SafetyMode.NORMAL: (0,), SafetyMode.REDUCED: (1,), SafetyMode.PROTECTIVE_STOP: (2, 10),
    SafetyMode.RECOVERY: (3,), SafetyMode.SAFEGUARD_STOP: (4, 10), SafetyMode.SYSTEM_EMERGENCY_STOP: (5, 7, 10),
    SafetyMode.ROBOT_EMERGENCY_STOP: (6, 7, 10), SafetyMode.VIOLATION: (8, 10), SafetyMode.FAULT: (9, 10),
    SafetyMode.AUTOMATIC_MODE_SAFEGUARD_STOP: (4, 10), SafetyMode.SYSTEM_THREE_POSITION_ENABLING_STOP: (4, 10),
}
_POWERED_MODES = {RobotMode.POWER_ON, RobotMode.IDLE, RobotMode.BACKDRIVE, RobotMode.RUNNING}


def safety_status_bits_for(mode: int) -> int:
    return sum(1 << b for b in _SAFETY_BITS.get(SafetyMode(mode), ()))


# --- variables --------------------------------------------------------------------------------
def _build_output_types() -> dict[str, str]:
    v6 = "VECTOR6D"
    types = {
        "timestamp": "DOUBLE", "target_q": v6, "target_qd": v6, "target_qdd": v6, "target_current": v6,
        "target_moment": v6, "actual_q": v6, "actual_qd": v6, "actual_current": v6,
        "actual_current_window": v6, "joint_control_output": v6, "actual_TCP_pose": v6,
        "actual_TCP_speed": v6, "actual_TCP_force": v6, "target_TCP_pose": v6, "target_TCP_speed": v6,
        "actual_digital_input_bits": "UINT64", "joint_temperatures": v6, "actual_execution_time": "DOUBLE",
        "robot_mode": "INT32", "joint_mode": "VECTOR6INT32", "safety_mode": "INT32", "safety_status": "INT32",
        "actual_tool_accelerometer": "VECTOR3D", "speed_scaling": "DOUBLE", "target_speed_fraction": "DOUBLE",
        "actual_momentum": "DOUBLE", "actual_main_voltage": "DOUBLE", "actual_robot_voltage": "DOUBLE",
        "actual_robot_current": "DOUBLE", "actual_joint_voltage": v6, "actual_digital_output_bits": "UINT64",
        "runtime_state": "UINT32", "elbow_position": "VECTOR3D", "elbow_velocity": "VECTOR3D",
        "robot_status_bits": "UINT32", "safety_status_bits": "UINT32", "analog_io_types": "UINT32",
        "standard_analog_input0": "DOUBLE", "standard_analog_input1": "DOUBLE",
        "standard_analog_output0": "DOUBLE", "standard_analog_output1": "DOUBLE", "io_current": "DOUBLE",
        "euromap67_input_bits": "UINT32", "euromap67_output_bits": "UINT32",
        "euromap67_24V_voltage": "DOUBLE", "euromap67_24V_current": "DOUBLE", "tool_mode": "UINT32",
        "tool_analog_input_types": "UINT32", "tool_analog_input0": "DOUBLE", "tool_analog_input1": "DOUBLE",
        "tool_output_voltage": "INT32", "tool_output_current": "DOUBLE", "tool_temperature": "DOUBLE",
        "tcp_force_scalar": "DOUBLE", "output_bit_registers0_to_31": "UINT32",
        "output_bit_registers32_to_63": "UINT32", "tool_output_mode": "UINT8",
        "tool_digital_output0_mode": "UINT8", "tool_digital_output1_mode": "UINT8", "payload": "DOUBLE",
        "payload_cog": "VECTOR3D", "payload_inertia": v6, "script_control_line": "UINT32",
        "ft_raw_wrench": v6, "joint_position_deviation_ratio": v6, "collision_detection_ratio": "DOUBLE",
        "time_scale_source": "UINT32",
    }
    for i in range(64, 128):
        types[f"output_bit_register_{i}"] = "BOOL"
    for i in range(48):
        types[f"output_int_register_{i}"] = "INT32"
        types[f"output_double_register_{i}"] = "DOUBLE"
    return types


def _build_input_types() -> dict[str, str]:
    types = {
        "speed_slider_mask": "UINT32", "speed_slider_fraction": "DOUBLE",
        "standard_digital_output_mask": "UINT8", "standard_digital_output": "UINT8",
        "configurable_digital_output_mask": "UINT8", "configurable_digital_output": "UINT8",
        "tool_digital_output_mask": "UINT8", "tool_digital_output": "UINT8",
        "standard_analog_output_mask": "UINT8", "standard_analog_output_type": "UINT8",
        "standard_analog_output_0": "DOUBLE", "standard_analog_output_1": "DOUBLE",
        "input_bit_registers0_to_31": "UINT32", "input_bit_registers32_to_63": "UINT32",
        "external_force_torque": "VECTOR6D",
    }
    for i in range(64, 128):
        types[f"input_bit_register_{i}"] = "BOOL"
    for i in range(48):
        types[f"input_int_register_{i}"] = "INT32"
        types[f"input_double_register_{i}"] = "DOUBLE"
    return types


OUTPUT_TYPES = _build_output_types()
INPUT_TYPES = _build_input_types()
# Inputs can also be read back as outputs.
READABLE_TYPES = {**OUTPUT_TYPES, **{k: v for k, v in INPUT_TYPES.items() if k.startswith("input_")}}

# Variables that need a minimum software version: {name: (min CB3 (3, x) or None, min e-series (5, x) or None)}
_REGISTER_UPPER = re.compile(r"(input|output)_(int|double)_register_(\d+)$")
_MIN_VERSION = {
    "ft_raw_wrench": (None, (5, 9)), "payload": ((3, 11), (5, 5)), "payload_cog": ((3, 11), (5, 5)),
    "payload_inertia": ((3, 15), (5, 11)), "actual_current_window": (None, (5, 23)),
    "joint_position_deviation_ratio": (None, (5, 22)), "collision_detection_ratio": (None, (5, 22)),
    "time_scale_source": (None, (5, 22)), "script_control_line": ((3, 14), (5, 9)),
}


def _default_state(initial_q: Sequence[float]) -> dict[str, Any]:
    q = tuple(float(x) for x in initial_q)
    zero6 = (0.0,) * 6
    values: dict[str, Any] = {}
    for name, kind in READABLE_TYPES.items():
        fmt, n = _TYPE_FORMAT[kind]
        if n == 1:
            values[name] = False if kind == "BOOL" else (0.0 if kind == "DOUBLE" else 0)
        else:
            values[name] = (0.0,) * n if "D" in kind else (0,) * n
    values.update({
        "actual_q": q, "target_q": q, "actual_qd": zero6, "target_qd": zero6, "target_qdd": zero6,
        "joint_temperatures": (30.0,) * 6, "actual_execution_time": 0.1,
        "robot_mode": int(RobotMode.RUNNING), "joint_mode": (253,) * 6,  # 253 = JOINT_RUNNING
        "safety_mode": int(SafetyMode.NORMAL), "safety_status": int(SafetyMode.NORMAL),
        "safety_status_bits": safety_status_bits_for(SafetyMode.NORMAL),
        "runtime_state": int(RuntimeState.STOPPED), "robot_status_bits": 1,
        "actual_tool_accelerometer": (0.0, 0.0, -9.81), "speed_scaling": 1.0, "target_speed_fraction": 1.0,
        "actual_main_voltage": 48.0, "actual_robot_voltage": 48.0, "actual_robot_current": 0.5,
        "actual_joint_voltage": (47.5,) * 6, "tool_output_voltage": 24, "tool_temperature": 30.0,
        "tool_mode": 255, "payload": 0.0, "payload_cog": (0.0, 0.0, 0.0),
    })
    return values


def _norm(kind: str, value: Any) -> Any:
    """A value in the shape its RTDE type needs (tuples for vectors, bools for BOOL)."""
    fmt, n = _TYPE_FORMAT[kind]
    if n > 1:
        items = np.asarray(value, dtype=float).reshape(-1)
        if items.size != n:
            raise ValueError(f"{kind} needs {n} values, got {items.size}")
        if "INT" in kind:
            return tuple(int(round(x)) for x in items)
        return tuple(float(x) for x in items)
    if kind == "BOOL":
        return bool(value)
    if kind == "DOUBLE":
        return float(value)
    return int(value)


class SimState:
    """The controller's output variables, thread-safe: ``state.actual_q = q``, ``state.actual_q`` (a numpy
    copy), ``state.update(actual_q=q, robot_mode=7)`` (atomic), ``state.snapshot()``.

    Names are RTDE output names (plus ``input_*`` registers); a typo raises AttributeError. Setting
    ``safety_mode`` also sets ``safety_status`` and ``safety_status_bits``; ``robot_status_bits`` and
    ``timestamp`` are recomputed by the controller every cycle; the TCP poses follow the joints while a
    kinematic model is configured (set ``sim.robot_model = None`` to write them by hand).
    """

    def __init__(self, lock: threading.RLock, initial_q: Sequence[float]) -> None:
        object.__setattr__(self, "_lock", lock)
        object.__setattr__(self, "_values", _default_state(initial_q))

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name not in values:
            raise AttributeError(f"no RTDE variable {name!r}")
        with self._lock:
            value = values[name]
        return np.array(value) if isinstance(value, tuple) else value

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def get(self, name: str) -> Any:
        return getattr(self, name)

    def update(self, **values: Any) -> None:
        normalised = {}
        for name, value in values.items():
            kind = READABLE_TYPES.get(name)
            if kind is None:
                raise AttributeError(f"no RTDE variable {name!r}")
            normalised[name] = _norm(kind, value)
        if "safety_mode" in normalised:
            mode = normalised["safety_mode"]
            normalised.setdefault("safety_status", mode)
            normalised.setdefault("safety_status_bits", safety_status_bits_for(mode))
        with self._lock:
            self._values.update(normalised)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    # internal: raw access under the caller's lock
    def _raw(self) -> dict[str, Any]:
        return object.__getattribute__(self, "_values")


# --- kinematics -------------------------------------------------------------------------------
_DH = {  # d, a (standard DH, alpha = [pi/2, 0, 0, pi/2, -pi/2, 0]); UR's published parameters
    "UR3": ((0.1519, 0, 0, 0.11235, 0.08535, 0.0819), (0, -0.24365, -0.21325, 0, 0, 0)),
    "UR3e": ((0.15185, 0, 0, 0.13105, 0.08535, 0.0921), (0, -0.24355, -0.2132, 0, 0, 0)),
    "UR5": ((0.089159, 0, 0, 0.10915, 0.09465, 0.0823), (0, -0.425, -0.39225, 0, 0, 0)),
    "UR5e": ((0.1625, 0, 0, 0.1333, 0.0997, 0.0996), (0, -0.425, -0.3922, 0, 0, 0)),
    "UR10e": ((0.1807, 0, 0, 0.17415, 0.11985, 0.11655), (0, -0.6127, -0.57155, 0, 0, 0)),
}
_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)


def _rotvec_to_matrix(r: Sequence[float]) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _matrix_to_rotvec(m: np.ndarray) -> np.ndarray:
    cos = max(-1.0, min(1.0, (np.trace(m) - 1) / 2))
    angle = math.acos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(m) + 1) / 2, 0))
        i = int(np.argmax(axis))
        for j in range(3):
            if j != i:
                axis[j] = math.copysign(axis[j], m[i, j] + m[j, i])
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2 * math.sin(angle))
    return axis * angle


def forward_kinematics(model: str, q: Sequence[float], tcp_offset: Sequence[float] = (0,) * 6) -> np.ndarray:
    """Base -> TCP pose ``[x, y, z, rx, ry, rz]`` (rotation vector) of a UR arm, standard DH."""
    d, a = _DH[model]
    t = np.eye(4)
    for theta, di, ai, alpha in zip(q, d, a, _ALPHA):
        ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
        t = t @ np.array([[ct, -st * ca, st * sa, ai * ct], [st, ct * ca, -ct * sa, ai * st],
                          [0, sa, ca, di], [0, 0, 0, 1]])
    tcp = np.eye(4)
    tcp[:3, :3] = _rotvec_to_matrix(tcp_offset[3:])
    tcp[:3, 3] = tcp_offset[:3]
    t = t @ tcp
    return np.concatenate([t[:3, 3], _matrix_to_rotvec(t[:3, :3])])


# --- helpers ----------------------------------------------------------------------------------
def _set_linger_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def free_loopback_host(ports: Iterable[int] = DEFAULT_PORTS.values(), prefer: str | None = None) -> str:
    """A loopback address on which all ``ports`` can be bound now: a per-process 127.x.y.z address on
    Linux (all of 127/8 is loopback there), else 127.0.0.1. Raises OSError when none is free."""
    pid = os.getpid()
    candidates = [prefer] if prefer else []
    for k in range(16):
        n = (pid * 16 + k) % (254 * 254 * 200)
        candidates.append(f"127.{(n // (254 * 254)) % 200 + 50}.{(n // 254) % 254 + 1}.{n % 254 + 1}")
    candidates.append("127.0.0.1")
    last_error: OSError | None = None
    for host in candidates:
        probes = []
        try:
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            return host
        except OSError as error:
            last_error = error
        finally:
            for s in probes:
                s.close()
    raise OSError(errno.EADDRINUSE, f"no loopback address with ports {list(ports)} free: {last_error}")


def _version_ok(name: str, version: tuple[int, int, int]) -> bool:
    major, minor = version[0], version[1]
    m = _REGISTER_UPPER.match(name)
    if m and int(m.group(3)) >= 24:
        return (major == 3 and minor >= 9) or major >= 5 and (major > 5 or minor >= 3)
    rule = _MIN_VERSION.get(name)
    if rule is None:
        return True
    need = rule[0] if major < 5 else rule[1]
    return need is not None and (major, minor) >= need


# --- RTDE connection ----------------------------------------------------------------------------
class _Recipe:
    def __init__(self, recipe_id: int, names: list[str], types: list[str]) -> None:
        self.id = recipe_id
        self.names = names
        self.types = types
        self.struct = struct.Struct(">" + "".join(_TYPE_FORMAT[t][0] for t in types))


class _Connection:
    """One accepted TCP client of any of the servers."""

    def __init__(self, sim: ControllerCore, sock: socket.socket, kind: str) -> None:
        self.sim, self.sock, self.kind = sim, sock, kind
        self.send_lock = threading.Lock()
        self.closed = threading.Event()
        try:
            self.peer = sock.getpeername()
        except OSError:  # already gone
            self.peer = ("?", 0)
        self.thread: threading.Thread | None = None

    def send(self, data: bytes) -> bool:
        try:
            with self.send_lock:
                self.sock.sendall(data)
            return True
        except OSError:
            self.close()
            return False

    def close(self, abort: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if abort:
            _set_linger_reset(self.sock)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class _RtdeConnection(_Connection):
    def __init__(self, sim: ControllerCore, sock: socket.socket) -> None:
        super().__init__(sim, sock, "rtde")
        self.protocol_version = 1
        self.output: _Recipe | None = None
        self.frequency = 0.0
        self.next_output_id = 1
        self.inputs: dict[int, _Recipe] = {}
        self.next_input_id = 1
        self.started = False
        self.outbox: collections.deque[bytes] = collections.deque(maxlen=8)
        self.outbox_ready = threading.Condition()
        self.next_due = 0.0  # controller time of the next output package

    def message(self, kind: int, payload: bytes = b"") -> bool:
        return self.send(_HEADER.pack(_HEADER.size + len(payload), kind) + payload)

    def run(self) -> None:
        sender = threading.Thread(target=self._sender, name=f"ur-sim-rtde-send-{self.peer[1]}", daemon=True)
        sender.start()
        try:
            while not self.closed.is_set():
                header = _recv_exact(self.sock, _HEADER.size)
                if header is None:
                    break
                size, kind = _HEADER.unpack(header)
                payload = _recv_exact(self.sock, size - _HEADER.size) if size > _HEADER.size else b""
                if payload is None:
                    break
                try:
                    self.handle(kind, payload)
                except (struct.error, ValueError, IndexError, KeyError) as error:
                    self.sim._protocol_error(f"malformed RTDE message type {kind}: {error!r}")
        except OSError:
            pass
        finally:
            self.close()
            with self.outbox_ready:
                self.outbox_ready.notify_all()
            sender.join(timeout=1.0)
            self.sim._release_inputs(self)

    def _sender(self) -> None:
        while not self.closed.is_set():
            with self.outbox_ready:
                while not self.outbox and not self.closed.is_set():
                    self.outbox_ready.wait(0.1)
                packets = list(self.outbox)
                self.outbox.clear()
            for packet in packets:
                if not self.send(packet):
                    return

    def handle(self, kind: int, payload: bytes) -> None:
        sim = self.sim
        if kind == RTDE_REQUEST_PROTOCOL_VERSION:
            (version,) = struct.unpack(">H", payload[:2])
            accepted = version == 2  # version 1 (no recipe ids) is not emulated
            if accepted:
                self.protocol_version = version
            self.message(kind, struct.pack(">B", int(accepted)))
        elif kind == RTDE_GET_URCONTROL_VERSION:
            major, minor, bugfix = sim.urcontrol_version
            self.message(kind, struct.pack(">IIII", major, minor, bugfix, sim.build_number))
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS:
            (frequency,) = struct.unpack(">d", payload[:8])
            names = [n for n in payload[8:].decode("ascii", "replace").split(",") if n]
            types = [sim._output_type(n) for n in names]
            ok = names and "NOT_FOUND" not in types and 0 < frequency
            recipe_id = self.next_output_id if ok else 0
            with sim.lock:
                sim.output_recipes.append({"names": names, "frequency": frequency, "types": types,
                                           "connection": self.peer})
                if ok:
                    self.next_output_id += 1
                    self.output = _Recipe(recipe_id, names, types)
                    self.frequency = min(float(frequency), sim.controller_frequency)
                    self.next_due = sim._time
            sim._log("rtde", f"setup outputs {names} @ {frequency} Hz -> {types}")
            self.message(kind, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_INPUTS:
            names = [n for n in payload.decode("ascii", "replace").split(",") if n]
            types = sim._claim_inputs(self, names)
            ok = names and all(t in _TYPE_FORMAT for t in types)
            recipe_id = self.next_input_id if ok else 0
            if ok:
                self.inputs[recipe_id] = _Recipe(recipe_id, names, types)
                self.next_input_id += 1
            sim._log("rtde", f"setup inputs #{recipe_id} {names} -> {types}")
            self.message(kind, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_START:
            ok = self.output is not None or bool(self.inputs)
            with sim.lock:
                self.started = ok
                self.next_due = sim._time
            self.message(kind, struct.pack(">B", int(ok)))
        elif kind == RTDE_CONTROL_PACKAGE_PAUSE:
            with sim.lock:
                self.started = False
            with self.outbox_ready:
                self.outbox.clear()
            self.message(kind, struct.pack(">B", 1))
        elif kind == RTDE_DATA_PACKAGE:
            recipe = self.inputs.get(payload[0]) if payload else None
            if recipe is None or len(payload) - 1 != recipe.struct.size:
                sim._protocol_error(f"data package for unknown recipe or of wrong size: "
                                    f"id {payload[:1].hex()} {len(payload) - 1} bytes")
                return
            flat = list(recipe.struct.unpack(payload[1:]))
            values: dict[str, Any] = {}
            for name, kind_name in zip(recipe.names, recipe.types):
                n = _TYPE_FORMAT[kind_name][1]
                values[name] = flat[0] if n == 1 else tuple(flat[:n])
                del flat[:n]
            sim._on_input(self, recipe.id, values)
        elif kind == RTDE_TEXT_MESSAGE:
            sim._log("rtde", f"text message from client: {payload!r}")
        else:
            sim._protocol_error(f"unknown RTDE message type {kind}")

    def queue_output(self, packet: bytes) -> None:
        with self.outbox_ready:
            self.outbox.append(packet)
            self.outbox_ready.notify()


# --- emulated ur_rtde control script ------------------------------------------------------------
_DEFAULT_REALTIME = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66})


class _Program:
    """A program the controller "runs": ur_rtde's control script (handshake modelled) or anything else."""

    def __init__(self, text: str, control_script: bool, register_offset: int, realtime: frozenset[int],
                 duration: float) -> None:
        self.text = text
        self.control_script = control_script
        self.offset = register_offset
        self.realtime = realtime
        self.duration = duration
        self.executing = False
        self.busy_until_done = False  # a synchronous move is running: the script loop is blocked
        self.started_at = 0.0

    @staticmethod
    def parse(text: str, duration: float, default_offset: int) -> _Program:
        control = "rtde_cmd()" in text or "RTDE Control Script" in text
        offset = default_offset
        m = re.search(r"reg_offset_int\s*=\s*(?:#[^\n]*\n)?\s*(\d+)", text)
        if m:
            offset = int(m.group(1))
        realtime = _DEFAULT_REALTIME
        m = re.search(r"NODE_CONTROL_LOOP_BEGINS.*?\n\s*if\s+(cmd\s*==\s*\d+(?:\s+or\s+cmd\s*==\s*\d+)+)\s*:",
                      text, re.S)
        if m:
            realtime = frozenset(int(x) for x in re.findall(r"\d+", m.group(1)))
        return _Program(text, control, offset, realtime, duration)


class _Motion:
    """Joint-space motion: a move (interpolation to a goal) or a speed (constant velocity)."""

    def __init__(self, kind: str, start: np.ndarray, goal: np.ndarray | None = None, speed: float = 1.0,
                 velocity: np.ndarray | None = None, notify_done: bool = False, is_async: bool = False) -> None:
        self.kind, self.start, self.goal, self.velocity = kind, start, goal, velocity
        self.notify_done, self.is_async = notify_done, is_async
        self.elapsed = 0.0
        if goal is not None:
            self.duration = max(float(np.max(np.abs(goal - start))) / max(speed, 1e-6), 0.0)


# --- the controller ---------------------------------------------------------------------------
class ControllerCore:
    """The fake controller itself, in the process that runs it (see :class:`UrControllerSim` for the
    proxy tests use: ur_rtde's constructors hold the GIL while they wait for the controller, so the
    controller cannot be Python threads of the same process).

    Recorded for tests (all thread-safe to read; lists only grow until :meth:`clear_records`):
    ``received_inputs`` (every decoded input package: ``{"time", "recipe", "values", "connection"}``),
    ``servoj_targets`` (q of every servoJ package that arrived, numpy arrays), ``servoj_commands`` (with
    speed/acceleration/time/lookahead_time/gain), ``commands`` (what the emulated control script executed:
    ``(Command or int, registers)``), ``dashboard_commands``, ``output_recipes`` (every output setup:
    names, requested frequency, answered types), ``scripts`` (programs received),
    ``script_commands`` (single top-level script lines), ``protocol_errors``, ``watchdog_trips``.

    Options: ``host`` and the ports (``None`` = that server off, ``0`` = any free port; ``secondary_port``
    adds a second script port such as 30002); ``urcontrol_version`` (major, minor, bugfix) reported over
    RTDE and the dashboard (5.x: e-series, 500 Hz; 3.x: CB3, 125 Hz) and ``build_number``;
    ``robot_model`` ("auto": UR3e / UR3 by version; None: no kinematics, TCP poses left as set);
    ``initial_q``; ``max_joint_speed`` (rad/s limit on servoJ tracking, None: the target is reached in
    one cycle); ``remote_control`` (dashboard ``is in remote control``); ``serial_number``;
    ``script_start_delay`` (s from upload to PLAYING); ``custom_script_duration`` (how long a program
    that is not ur_rtde's control script "runs"); ``protective_stop_unlock_delay`` (PolyScope: 5 s);
    ``exclusive_inputs`` (an input owned by one RTDE connection is ``IN_USE`` for the others, as on a
    real controller); ``inputs_in_use`` (inputs always ``IN_USE``, like a fieldbus adapter holding them);
    ``unsupported_outputs`` (outputs answered ``NOT_FOUND``); ``controller_frequency`` (override of the
    cycle rate); ``verbose`` (print the log).
    """

    def __init__(self, host: str = "127.0.0.1", rtde_port: int = DEFAULT_PORTS["rtde"],
                 dashboard_port: int | None = DEFAULT_PORTS["dashboard"],
                 script_port: int | None = DEFAULT_PORTS["script"], secondary_port: int | None = None,
                 urcontrol_version: tuple[int, int, int] = E_SERIES, build_number: int = 12345,
                 robot_model: str | None = "auto", initial_q: Sequence[float] = (0.0, -1.2, 1.6, -1.97, -1.57, 0.0),
                 max_joint_speed: float | None = None, remote_control: bool = True,
                 serial_number: str = "20235500001", script_start_delay: float = 0.01,
                 custom_script_duration: float = 0.05, protective_stop_unlock_delay: float = 0.0,
                 exclusive_inputs: bool = True, inputs_in_use: Iterable[str] = (),
                 unsupported_outputs: Iterable[str] = (), controller_frequency: float | None = None,
                 verbose: bool = False) -> None:
        self.host = host
        self._requested_ports = {"rtde": rtde_port, "dashboard": dashboard_port, "script": script_port,
                                 "secondary": secondary_port}
        self.ports: dict[str, int] = {}
        self.urcontrol_version = tuple(int(x) for x in urcontrol_version)
        self.build_number = build_number
        self.e_series = self.urcontrol_version[0] >= 5
        if robot_model == "auto":
            robot_model = "UR3e" if self.e_series else "UR3"
        if robot_model is not None and robot_model not in _DH:
            raise ValueError(f"robot_model must be one of {sorted(_DH)} or None")
        self.robot_model = robot_model
        self.controller_frequency = float(controller_frequency or (500.0 if self.e_series else 125.0))
        self.period = 1.0 / self.controller_frequency
        self.max_joint_speed = max_joint_speed
        self.remote_control = remote_control
        self.serial_number = serial_number
        self.script_start_delay = script_start_delay
        self.custom_script_duration = custom_script_duration
        self.protective_stop_unlock_delay = protective_stop_unlock_delay
        self.exclusive_inputs = exclusive_inputs
        self.inputs_in_use = set(inputs_in_use)
        self.unsupported_outputs = set(unsupported_outputs)
        self.verbose = verbose

        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)  # notified after every controller cycle / input
        self.state = SimState(self.lock, initial_q)
        self.tcp_offset = np.zeros(6)
        self.inputs: dict[str, Any] = {}  # latest value of every input variable
        self._input_updated: dict[str, float] = {}  # monotonic time of the last update of each input
        self._input_owner: dict[str, _RtdeConnection] = {}

        self.received_inputs: list[dict[str, Any]] = []
        self.servoj_targets: list[np.ndarray] = []
        self.servoj_commands: list[dict[str, Any]] = []
        self.commands: list[tuple[Command | int, dict[str, Any]]] = []
        self.dashboard_commands: list[str] = []
        self.output_recipes: list[dict[str, Any]] = []
        self.scripts: list[str] = []
        self.secondary_programs: list[str] = []
        self.script_commands: list[str] = []
        self.protocol_errors: list[str] = []
        self.watchdog_trips = 0
        self.log: collections.deque[str] = collections.deque(maxlen=2000)

        self.program: _Program | None = None
        self._pending_program: tuple[float, _Program] | None = None
        self._last_program: _Program | None = None
        self.loaded_program = "<unnamed>"
        self._motion: _Motion | None = None
        self._servo_target: np.ndarray | None = None
        self._q_history: collections.deque[tuple[float, ...]] = collections.deque(maxlen=2000)
        self.watchdog: tuple[str, float] | None = None  # (input variable, min frequency)
        self._protective_stop_time = 0.0
        self._async_wr_count = 0
        self._async_op_id = 0
        self._time = 0.0  # controller time (s since boot), advanced one period per cycle
        self._cycle = 0

        self._running = False
        self._stalled = False
        self._accept_threads: list[threading.Thread] = []
        self._outage_timer: threading.Timer | None = None
        self._listeners: dict[str, socket.socket] = {}
        self._connections: set[_Connection] = set()
        self._tick_thread: threading.Thread | None = None
        self._tick_stop = threading.Event()

    # ---- life cycle ----
    def start(self) -> ControllerCore:
        """Listen on all ports and run the controller cycle. Raises OSError if a port is taken."""
        with self.lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
        if not self._listeners:
            self._open_listeners()
        if self._tick_thread is None:
            self._tick_stop.clear()
            self._tick_thread = threading.Thread(target=self._tick_loop, name="ur-sim-controller", daemon=True)
            self._tick_thread.start()
        self._running = True
        return self

    def _open_listeners(self) -> None:
        listeners: dict[str, socket.socket] = {}
        try:
            for name, port in self._requested_ports.items():
                if port is None:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listeners[name] = s
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((self.host, self.ports.get(name, port)))  # a restart reuses the ports picked first
                s.listen(8)
                s.settimeout(0.05)
        except OSError:
            for s in listeners.values():
                s.close()
            raise
        self._listeners = listeners
        self.ports = {name: s.getsockname()[1] for name, s in listeners.items()}
        for name, s in listeners.items():
            t = threading.Thread(target=self._accept_loop, args=(name, s), name=f"ur-sim-accept-{name}", daemon=True)
            t.start()
            self._accept_threads.append(t)
        self._log("sim", f"listening on {self.host} {self.ports}")

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, {}
        for s in listeners.values():
            with contextlib.suppress(OSError):
                s.close()
        for t in self._accept_threads:
            t.join(timeout=2.0)
        self._accept_threads = []

    def stop(self, abort: bool = False) -> None:
        """Close every socket (listeners first, then clients) and pause the controller cycle; the state
        is kept, :meth:`start` resumes. ``abort`` resets the client connections (RST) instead of closing."""
        self._running = False
        with self.lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
        self._close_listeners()
        self.drop_clients(abort=abort)
        self._tick_stop.set()
        if self._tick_thread is not None:
            self._tick_thread.join(timeout=2.0)
            self._tick_thread = None
        self._log("sim", "stopped")

    close = stop

    def outage(self, seconds: float, abort: bool = False) -> None:
        """A network outage: listeners closed, clients dropped, the controller keeps running (so an RTDE
        watchdog trips); listening again after ``seconds`` (or at :meth:`start`)."""
        self._close_listeners()
        self.drop_clients(abort=abort)
        self._log("sim", f"network outage for {seconds} s")

        def reopen() -> None:
            with self.lock:
                if self._outage_timer is None:
                    return
                self._outage_timer = None
            if self._running and not self._listeners:
                self._open_listeners()

        with self.lock:
            self._outage_timer = threading.Timer(seconds, reopen)
            self._outage_timer.daemon = True
            self._outage_timer.start()

    def drop_clients(self, abort: bool = False) -> None:
        """Close the current client connections; keep listening (the next connect succeeds).

        Careful with a live ``RTDEControlInterface``: ur_rtde 1.6.5 reconnects by itself when its RTDE
        connection drops, and when that succeeds its old receive thread never clears its reconnect flag,
        so it reconnects again and again and can crash the process. Use :meth:`outage` or :meth:`stop`
        (connections refused meanwhile: its reconnect fails once and it stays disconnected) instead."""
        with self.lock:
            connections = list(self._connections)
        for c in connections:
            c.close(abort=abort)
        for c in connections:
            if c.thread is not None and c.thread is not threading.current_thread():
                c.thread.join(timeout=2.0)

    def stall(self) -> None:
        """Stop sending RTDE output packages (sockets stay open: ur_rtde times out after ~2.5 s)."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    def __enter__(self) -> ControllerCore:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def rtde_port(self) -> int:
        return self.ports.get("rtde", self._requested_ports["rtde"])

    @property
    def dashboard_port(self) -> int | None:
        return self.ports.get("dashboard", self._requested_ports["dashboard"])

    @property
    def script_port(self) -> int | None:
        return self.ports.get("script", self._requested_ports["script"])

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connections(self) -> list[tuple[str, tuple[str, int]]]:
        """(kind, peer address) of each open client connection."""
        with self.lock:
            return [(c.kind, c.peer) for c in self._connections if not c.closed.is_set()]

    # ---- test-facing state ----
    @property
    def safety_mode(self) -> SafetyMode:
        return SafetyMode(self.state.safety_mode)

    @safety_mode.setter
    def safety_mode(self, mode: int) -> None:
        mode = SafetyMode(mode)
        with self.lock:
            self.state.update(safety_mode=int(mode))
            if mode not in (SafetyMode.NORMAL, SafetyMode.REDUCED, SafetyMode.RECOVERY):
                self._halt_motion()
                if mode == SafetyMode.PROTECTIVE_STOP:
                    self._protective_stop_time = time.monotonic()
                self._end_program(f"safety mode {mode.name}")
            self._changed.notify_all()

    @property
    def robot_mode(self) -> RobotMode:
        return RobotMode(self.state.robot_mode)

    @robot_mode.setter
    def robot_mode(self, mode: int) -> None:
        mode = RobotMode(mode)
        with self.lock:
            self.state.update(robot_mode=int(mode))
            if mode != RobotMode.RUNNING:
                self._halt_motion()
                self._end_program(f"robot mode {mode.name}")

    @property
    def runtime_state(self) -> RuntimeState:
        return RuntimeState(self.state.runtime_state)

    @property
    def program_running(self) -> bool:
        return self.runtime_state == RuntimeState.PLAYING

    def protective_stop(self) -> None:
        """A protective stop: safety mode 3, status bit 2, motion halted, script ended."""
        self.safety_mode = SafetyMode.PROTECTIVE_STOP

    def emergency_stop(self, system: bool = False) -> None:
        """An emergency stop: safety mode 7 (6 with ``system``), status bits 6 (5) and 7, arm powered off."""
        self.safety_mode = SafetyMode.SYSTEM_EMERGENCY_STOP if system else SafetyMode.ROBOT_EMERGENCY_STOP
        self.robot_mode = RobotMode.POWER_OFF

    def release_emergency_stop(self) -> None:
        """The e-stop button released: safety normal, the arm stays off until power on + brake release."""
        with self.lock:
            self.state.update(safety_mode=int(SafetyMode.NORMAL))

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Place the arm at ``q`` (actual and target), at rest."""
        q = np.asarray(q, dtype=float)
        with self.lock:
            self.state.update(actual_q=q, target_q=q, actual_qd=np.zeros(6), target_qd=np.zeros(6))
            self._update_tcp()

    def start_control_script(self) -> None:
        """Pretend ur_rtde's control script runs although nothing uploaded it (e.g. started by the
        ExternalControl URCap or a PolyScope program, ``FLAG_USE_EXT_UR_CAP`` / ``FLAG_CUSTOM_SCRIPT``)."""
        with self.lock:
            offset = 24 if any(k == "input_int_register_24" for k in self._input_owner) else 0
            self._start_program(_Program("# started by the test\nrtde_cmd()\n", True, offset, _DEFAULT_REALTIME, 0.0))

    def stop_program(self) -> None:
        with self.lock:
            self._end_program("stopped by the test")

    def output_register(self, index: int, kind: str = "int") -> Any:
        return getattr(self.state, f"output_{kind}_register_{index}")

    def input_value(self, name: str, default: Any = None) -> Any:
        with self.lock:
            return self.inputs.get(name, default)

    def clear_records(self) -> None:
        with self.lock:
            for records in (self.received_inputs, self.servoj_targets, self.servoj_commands, self.commands,
                            self.dashboard_commands, self.output_recipes, self.scripts, self.secondary_programs,
                            self.script_commands, self.protocol_errors):
                records.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate()`` holds (checked after each controller cycle and input package)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_cycles(self, n: int = 2, timeout: float = 2.0) -> bool:
        """Wait for ``n`` more controller cycles."""
        target = self._cycle + n
        return self.wait_for(lambda: self._cycle >= target, timeout)

    # ---- servers ----
    def _accept_loop(self, name: str, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if name == "rtde":
                conn: _Connection = _RtdeConnection(self, sock)
                target = conn.run
            elif name == "dashboard":
                conn = _Connection(self, sock, "dashboard")
                target = lambda c=conn: self._dashboard_loop(c)  # noqa: E731
            else:
                conn = _Connection(self, sock, name)
                target = lambda c=conn: self._script_loop(c)  # noqa: E731
            with self.lock:
                self._connections.add(conn)
            conn.thread = threading.Thread(target=self._serve, args=(conn, target), name=f"ur-sim-{name}", daemon=True)
            conn.thread.start()
            self._log(name, f"client {conn.peer} connected")

    def _serve(self, conn: _Connection, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            conn.close()
            with self.lock:
                self._connections.discard(conn)
                self._changed.notify_all()
            self._log(conn.kind, f"client {conn.peer} gone")

    def _dashboard_loop(self, conn: _Connection) -> None:
        conn.send(b"Connected: Universal Robots Dashboard Server\n")
        buffer = b""
        while not conn.closed.is_set():
            try:
                chunk = conn.sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = line.decode("utf-8", "replace").strip()
                if not command:
                    continue
                with self.lock:
                    self.dashboard_commands.append(command)
                reply, close_after = self._dashboard_reply(command)
                self._log("dashboard", f"{command!r} -> {reply!r}")
                conn.send(reply.encode() + b"\n")
                if close_after:
                    conn.close()
                    return

    def _dashboard_reply(self, command: str) -> tuple[str, bool]:
        c = command.lower()
        major, minor, bugfix = self.urcontrol_version
        with self.lock:
            s = self.state
            if c == "polyscopeversion":
                return f"URSoftware {major}.{minor}.{bugfix}.{self.build_number} (Jan 01 2024)", False
            if c == "version":
                return f"{major}.{minor}.{bugfix}.{self.build_number}", False
            if c == "robotmode":
                return f"Robotmode: {RobotMode(s.robot_mode).name}", False
            if c == "safetymode":
                return f"Safetymode: {SafetyMode(s.safety_mode).name}", False
            if c == "safetystatus":
                return f"Safetystatus: {SafetyMode(s.safety_mode).name}", False
            if c == "programstate":
                state = {RuntimeState.PLAYING: "PLAYING", RuntimeState.PAUSED: "PAUSED"}.get(
                    RuntimeState(s.runtime_state), "STOPPED")
                return f"{state} {self.loaded_program}", False
            if c == "running":
                return f"Program running: {str(self.program_running).lower()}", False
            if c == "is in remote control":
                return str(self.remote_control).lower(), False
            if c == "get serial number":
                return self.serial_number, False
            if c == "get robot model":
                return (self.robot_model or "UR3").rstrip("e"), False
            if c == "get loaded program":
                return f"Loaded program: {self.loaded_program}", False
            if c.startswith("load "):
                self.loaded_program = command[5:].strip()
                return f"Loading program: {self.loaded_program}", False
            if c == "play":
                if self.runtime_state == RuntimeState.PAUSED:
                    self.state.update(runtime_state=int(RuntimeState.PLAYING))
                    return "Starting program", False
                if self.safety_mode != SafetyMode.NORMAL or self.robot_mode != RobotMode.RUNNING:
                    return "Failed to execute: play", False
                if self._last_program is not None:
                    self._start_program(self._last_program)
                    return "Starting program", False
                return "Failed to execute: play", False
            if c == "pause":
                if self.program_running:
                    self.state.update(runtime_state=int(RuntimeState.PAUSED))
                    self._halt_motion()
                    return "Pausing program", False
                return "Failed to execute: pause", False
            if c == "stop":
                self._end_program("dashboard stop")
                return "Stopped", False
            if c == "power on":
                if s.robot_mode in (RobotMode.POWER_OFF, RobotMode.CONFIRM_SAFETY):
                    self.state.update(robot_mode=int(RobotMode.IDLE))
                return "Powering on", False
            if c == "power off":
                self.robot_mode = RobotMode.POWER_OFF
                return "Powering off", False
            if c == "brake release":
                if s.robot_mode in (RobotMode.IDLE, RobotMode.POWER_ON):
                    self.state.update(robot_mode=int(RobotMode.RUNNING))
                return "Brake releasing", False
            if c == "unlock protective stop":
                if self.safety_mode != SafetyMode.PROTECTIVE_STOP:
                    return "Protective stop releasing", False  # nothing to unlock
                if time.monotonic() - self._protective_stop_time < self.protective_stop_unlock_delay:
                    return ("Cannot unlock protective stop until 5s after occurrence. "
                            "Always inspect cause of protective stop before unlocking"), False
                self.state.update(safety_mode=int(SafetyMode.NORMAL))
                return "Protective stop releasing", False
            if c == "close safety popup":
                return "closing safety popup", False
            if c == "close popup":
                return "closing popup", False
            if c.startswith("popup"):
                return "showing popup", False
            if c == "restart safety":
                self.state.update(safety_mode=int(SafetyMode.NORMAL), robot_mode=int(RobotMode.POWER_OFF))
                self._end_program("restart safety")
                return "Restarting safety", False
            if c == "isprogramsaved":
                return f"true {self.loaded_program}", False
            if c.startswith("addtolog"):
                return "Added log message", False
            if c.startswith("setuserrole"):
                return f"Setting user role: {command[12:].strip()}", False
            if c == "get operational mode":
                return "NONE", False
            if c == "clear operational mode":
                return "No longer controlling the operational mode. ", False
            if c.startswith("set operational mode"):
                return f"Operational mode '{c[21:].strip()}' is set", False
            if c == "shutdown":
                return "Shutting down", True
            if c == "quit":
                return "Disconnected", True
        return f"could not understand: '{command}'", False

    def _script_loop(self, conn: _Connection) -> None:
        pending: list[str] = []  # lines of a program being received
        depth_open = False
        buffer = b""
        while not conn.closed.is_set():
            try:
                chunk = conn.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if not depth_open:
                    if re.match(r"(def|sec)\s+\w+\s*\(", line):
                        depth_open = True
                        pending = [line]
                    elif line.strip():
                        with self.lock:
                            self.script_commands.append(line)
                        self._log("script", f"command {line!r}")
                    continue
                pending.append(line)
                if line.rstrip() == "end":  # a top-level "end" closes the program
                    depth_open = False
                    self._on_program_text("\n".join(pending) + "\n")
                    pending = []

    def _on_program_text(self, text: str) -> None:
        if text.lstrip().startswith("sec"):
            self._run_secondary_program(text)
            return
        program = _Program.parse(text, self.custom_script_duration, 0)
        with self.lock:
            self.scripts.append(text)
            self._log("script", f"program received ({len(text)} bytes, control script: {program.control_script}, "
                                f"register offset {program.offset}, realtime {sorted(program.realtime)})")
            self._end_program("replaced by a new program")
            self._last_program = program
            if self.safety_mode == SafetyMode.NORMAL and self.robot_mode == RobotMode.RUNNING:
                self._pending_program = (time.monotonic() + self.script_start_delay, program)
            else:
                self._log("script", "program not started: robot not running or not in normal safety mode")

    def _run_secondary_program(self, text: str) -> None:
        """A ``sec`` program runs beside the main program (UR semantics: no motion, never stops the main
        program); its literal ``set_{standard,configurable,tool}_digital_out(n, True|False)`` calls apply."""
        with self.lock:
            self.secondary_programs.append(text)
            raw = self.state._raw()
            for bank, n, level in re.findall(r"set_(standard|configurable|tool)_digital_out\(\s*(\d+)\s*,\s*(True|False)\s*\)",
                                             text):
                bit = {"standard": 0, "configurable": 8, "tool": 16}[bank] + int(n)
                raw["actual_digital_output_bits"] = (raw["actual_digital_output_bits"] & ~(1 << bit)) | (
                    (level == "True") << bit)
            self._log("script", f"secondary program ran ({len(text)} bytes)")

    # ---- inputs ----
    def _output_type(self, name: str) -> str:
        kind = READABLE_TYPES.get(name)
        if kind is None or name in self.unsupported_outputs or not _version_ok(name, self.urcontrol_version):
            return "NOT_FOUND"
        return kind

    def _claim_inputs(self, conn: _RtdeConnection, names: list[str]) -> list[str]:
        types = []
        deadline = time.monotonic() + 0.3  # for owners whose close is still being noticed
        with self._changed:
            for name in names:
                kind = INPUT_TYPES.get(name)
                if kind is None or not _version_ok(name, self.urcontrol_version):
                    types.append("NOT_FOUND")
                    continue
                if name in self.inputs_in_use:
                    types.append("IN_USE")
                    continue
                if self.exclusive_inputs:
                    while (owner := self._input_owner.get(name)) not in (None, conn) and not owner.closed.is_set():
                        if time.monotonic() > deadline:
                            break
                        self._changed.wait(0.02)
                    owner = self._input_owner.get(name)
                    if owner not in (None, conn) and not owner.closed.is_set():
                        types.append("IN_USE")
                        continue
                    self._input_owner[name] = conn
                types.append(kind)
        return types

    def _release_inputs(self, conn: _RtdeConnection) -> None:
        with self._changed:
            for name in [n for n, c in self._input_owner.items() if c is conn]:
                del self._input_owner[name]
            self._changed.notify_all()

    def _on_input(self, conn: _RtdeConnection, recipe_id: int, values: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._changed:
            self.received_inputs.append({"time": self._time, "recipe": recipe_id, "values": values,
                                         "connection": conn.peer})
            self.inputs.update(values)
            for name in values:
                self._input_updated[name] = now
            self._apply_io(values)
            raw = self.state._raw()
            for name, value in values.items():
                if name.startswith("input_"):  # input registers can be read back as outputs
                    raw[name] = _norm(INPUT_TYPES[name], value)
            offset = self.program.offset if self.program is not None else self._guess_offset(values)
            if values.get(f"input_int_register_{offset}") == Command.SERVOJ:
                d = [values.get(f"input_double_register_{offset + i}") for i in range(11)]
                if None not in d:
                    q = np.array(d[:6])
                    self.servoj_targets.append(q)
                    self.servoj_commands.append({"q": q, "speed": d[6], "acceleration": d[7], "time": d[8],
                                                 "lookahead_time": d[9], "gain": d[10], "controller_time": self._time})
            self._changed.notify_all()

    @staticmethod
    def _guess_offset(values: dict[str, Any]) -> int:
        return 24 if "input_int_register_24" in values and "input_int_register_0" not in values else 0

    def _apply_io(self, v: dict[str, Any]) -> None:
        raw = self.state._raw()
        bits = raw["actual_digital_output_bits"]
        for mask_name, value_name, shift, width in (
                ("standard_digital_output_mask", "standard_digital_output", 0, 8),
                ("configurable_digital_output_mask", "configurable_digital_output", 8, 8),
                ("tool_digital_output_mask", "tool_digital_output", 16, 2)):
            if mask_name in v and value_name in v:
                mask = (int(v[mask_name]) & ((1 << width) - 1)) << shift
                bits = (bits & ~mask) | ((int(v[value_name]) << shift) & mask)
        raw["actual_digital_output_bits"] = bits
        if v.get("speed_slider_mask") == 1 and "speed_slider_fraction" in v:
            fraction = min(max(float(v["speed_slider_fraction"]), 0.0), 1.0)
            raw["target_speed_fraction"] = fraction
            raw["speed_scaling"] = fraction
        mask = v.get("standard_analog_output_mask")
        if mask:
            for i in (0, 1):
                if mask & (1 << i) and f"standard_analog_output_{i}" in v:
                    raw[f"standard_analog_output{i}"] = float(v[f"standard_analog_output_{i}"])

    # ---- controller cycle ----
    def _tick_loop(self) -> None:
        next_time = time.monotonic()
        while not self._tick_stop.is_set():
            next_time += self.period
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:  # far behind (machine busy): do not try to catch up
                next_time = time.monotonic()
            try:
                self._step()
            except Exception as error:  # keep the controller alive; the test sees it in protocol_errors
                self._protocol_error(f"controller cycle failed: {error!r}")

    def _step(self) -> None:
        now = time.monotonic()
        with self._changed:
            self._time += self.period
            self._cycle += 1
            if self._pending_program is not None and now >= self._pending_program[0]:
                _, program = self._pending_program
                self._pending_program = None
                self._start_program(program)
            program = self.program
            if program is not None and self.runtime_state == RuntimeState.PLAYING:
                if program.control_script:
                    self._run_control_script(program)
                elif now - program.started_at >= program.duration:
                    self._end_program("custom program finished")
                if self.watchdog is not None:
                    name, min_frequency = self.watchdog
                    last = self._input_updated.get(name, 0.0)
                    if now - last > 1.0 / min_frequency:
                        self.watchdog_trips += 1
                        self._log("rtde", f"watchdog: {name} not updated for {now - last:.3f} s, stopping program")
                        self._halt_motion()
                        self._end_program("RTDE watchdog")
            self._integrate_motion()
            self._update_tcp()
            raw = self.state._raw()
            raw["timestamp"] = self._time
            raw["robot_status_bits"] = ((raw["robot_mode"] in _POWERED_MODES) * 1
                                        | (raw["runtime_state"] == RuntimeState.PLAYING) * 2)
            self._q_history.append(raw["actual_q"])
            if not self._stalled:
                self._queue_outputs()
            self._changed.notify_all()

    def _queue_outputs(self) -> None:
        raw = self.state._raw()
        for conn in list(self._connections):
            if not isinstance(conn, _RtdeConnection) or not conn.started or conn.output is None:
                continue
            if self._time + 1e-9 < conn.next_due:
                continue
            conn.next_due += 1.0 / conn.frequency
            if conn.next_due < self._time:
                conn.next_due = self._time + 1.0 / conn.frequency
            flat: list[Any] = []
            for name, kind in zip(conn.output.names, conn.output.types):
                value = raw[name]
                if isinstance(value, tuple):
                    flat.extend(value)
                else:
                    flat.append(value)
            body = struct.pack(">B", conn.output.id) + conn.output.struct.pack(*flat)
            conn.queue_output(_HEADER.pack(_HEADER.size + len(body), RTDE_DATA_PACKAGE) + body)

    # ---- program / script model (called with the lock held) ----
    def _start_program(self, program: _Program) -> None:
        program.executing = False
        program.busy_until_done = False
        program.started_at = time.monotonic()
        self.program = program
        self._last_program = program
        self.watchdog = None
        self.state.update(runtime_state=int(RuntimeState.PLAYING))
        if program.control_script:
            self._write_int(program.offset + 0, 1)  # signal_ready()
            self._async_finished()  # reset_async_progress()
        else:
            for index, value in re.findall(r"write_output_integer_register\(\s*([\d\s+]+?)\s*,\s*(-?\d+)\s*\)",
                                           program.text):
                self._write_int(sum(int(x) for x in index.split("+") if x.strip()), int(value))
        self._log("script", f"program started (control script: {program.control_script})")

    def _end_program(self, why: str) -> None:
        self._pending_program = None
        if self.program is None and self.runtime_state == RuntimeState.STOPPED:
            return
        self._halt_motion()
        self.program = None
        self.watchdog = None
        self.state.update(runtime_state=int(RuntimeState.STOPPED))
        self._log("script", f"program stopped: {why}")

    def _write_int(self, index: int, value: int) -> None:
        self.state._raw()[f"output_int_register_{index}"] = int(value)

    def _write_double(self, index: int, values: Sequence[float]) -> None:
        raw = self.state._raw()
        for i, value in enumerate(values):
            raw[f"output_double_register_{index + i}"] = float(value)

    def _async_progress(self, value: int) -> None:
        self._async_wr_count = (self._async_wr_count + 1) % 128
        if value == 0:
            self._async_op_id = (self._async_op_id + 1) % 128
        reg = self._async_wr_count * 65536 + self._async_op_id * 16777216
        if value >= 0:
            reg += min(value, 32767) + 32768
        if self.program is not None:
            self._write_int(self.program.offset + 2, reg)

    def _async_finished(self) -> None:
        self._async_progress(-1)

    def _run_control_script(self, p: _Program) -> None:
        if p.busy_until_done:
            return  # a synchronous move blocks the script loop; _integrate_motion signals done
        cmd = int(self.inputs.get(f"input_int_register_{p.offset}", 0))
        if cmd in p.realtime:
            self._execute(p, cmd)
            if self.program is p:
                self._write_int(p.offset, 1)  # signal_ready()
        elif cmd == 0:
            p.executing = False
            self._write_int(p.offset, 1)
        elif not p.executing:
            p.executing = True
            keep_running = self._execute(p, cmd)
            if not keep_running:
                self._end_program("stop script command")
            elif self.program is p and not p.busy_until_done:
                self._write_int(p.offset, 2)  # signal_done_with_cmd()

    def _registers(self, p: _Program, ints: int = 2, doubles: int = 12) -> dict[str, Any]:
        return {**{f"int{i}": self.inputs.get(f"input_int_register_{p.offset + i}", 0) for i in range(ints)},
                **{f"double{i}": self.inputs.get(f"input_double_register_{p.offset + i}", 0.0) for i in range(doubles)}}

    def _execute(self, p: _Program, cmd: int) -> bool:
        """One command of the control script; False ends the script."""
        try:
            known: Command | int = Command(cmd)
        except ValueError:
            known = cmd
        regs = self._registers(p)
        self.commands.append((known, regs))
        d = [regs[f"double{i}"] for i in range(12)]
        raw = self.state._raw()
        q_now = np.array(raw["actual_q"])
        if cmd == Command.SERVOJ:
            self._motion = None
            self._servo_target = np.array(d[:6])
            raw["target_q"] = tuple(d[:6])
        elif cmd == Command.SERVO_STOP:
            self._servo_target = None
            self._halt_motion()
        elif cmd == Command.SPEEDJ:
            self._servo_target = None
            self._motion = _Motion("speed", q_now, velocity=np.array(d[:6]))
        elif cmd in (Command.SPEED_STOP, Command.STOPJ, Command.STOPL):
            self._halt_motion()
            if cmd in (Command.STOPJ, Command.STOPL) and regs["int1"] == 1:
                self._async_progress(0)
                self._async_finished()
        elif cmd in (Command.MOVEJ, Command.MOVEL_FK):
            self._servo_target = None
            is_async = regs["int1"] == 1
            self._motion = _Motion("move", q_now, goal=np.array(d[:6]), speed=d[6], notify_done=not is_async,
                                   is_async=is_async)
            raw["target_q"] = tuple(d[:6])
            if is_async:
                self._async_progress(0)
            else:
                p.busy_until_done = True
        elif cmd == Command.SET_WATCHDOG:
            if d[0] > 0:
                name = f"input_int_register_{p.offset}"
                self.watchdog = (name, float(d[0]))
                self._input_updated[name] = time.monotonic()
        elif cmd == Command.PROTECTIVE_STOP:
            self.safety_mode = SafetyMode.PROTECTIVE_STOP
            return True
        elif cmd == Command.GET_STEPTIME:
            self._write_double(p.offset, [self.period])
        elif cmd == Command.GET_ACTUAL_JOINT_POSITIONS_HISTORY:
            steps = max(int(regs["int1"]), 0)
            history = list(self._q_history)
            self._write_double(p.offset, history[-1 - min(steps, len(history) - 1)] if history else q_now)
        elif cmd == Command.GET_JOINT_TORQUES:
            self._write_double(p.offset, [0.0] * 6)
        elif cmd == Command.IS_STEADY:
            steady = self._motion is None and self._servo_target is None and not np.any(np.abs(raw["actual_qd"]) > 1e-4)
            self._write_int(p.offset + 1, int(steady))
        elif cmd == Command.SET_PAYLOAD:
            raw["payload"] = float(d[0])
            raw["payload_cog"] = (float(d[1]), float(d[2]), float(d[3]))
        elif cmd == Command.SET_TCP:
            self.tcp_offset = np.array(d[:6])
            self._update_tcp()
        elif cmd == Command.GET_TCP_OFFSET:
            self._write_double(p.offset, self.tcp_offset)
        elif cmd in (Command.GET_FORWARD_KINEMATICS_DEFAULT, Command.GET_ACTUAL_TOOL_FLANGE_POSE):
            if self.robot_model is not None:
                offset = self.tcp_offset if cmd == Command.GET_FORWARD_KINEMATICS_DEFAULT else np.zeros(6)
                self._write_double(p.offset, forward_kinematics(self.robot_model, q_now, offset))
        elif cmd == Command.GET_FORWARD_KINEMATICS_ARGS:
            if self.robot_model is not None:
                self._write_double(p.offset, forward_kinematics(self.robot_model, d[:6], d[6:12]))
        elif cmd == Command.STOP_SCRIPT:
            return False
        return True

    def _halt_motion(self) -> None:
        self._motion = None
        self._servo_target = None
        raw = self.state._raw()
        raw["actual_qd"] = (0.0,) * 6
        raw["target_qd"] = (0.0,) * 6
        raw["target_q"] = raw["actual_q"]

    def _integrate_motion(self) -> None:
        raw = self.state._raw()
        q = np.array(raw["actual_q"])
        moving = (self.program is not None and self.runtime_state == RuntimeState.PLAYING
                  and self.safety_mode in (SafetyMode.NORMAL, SafetyMode.REDUCED)
                  and self.robot_mode == RobotMode.RUNNING)
        if not moving:
            if self._motion is not None or self._servo_target is not None:
                self._halt_motion()
            return
        dt = self.period * float(raw["speed_scaling"] or 0.0) if self._motion is not None else self.period
        new_q = q
        if self._servo_target is not None:
            step = self._servo_target - q
            if self.max_joint_speed is not None:
                limit = self.max_joint_speed * self.period
                step = np.clip(step, -limit, limit)
            new_q = q + step
        elif self._motion is not None:
            m = self._motion
            m.elapsed += dt
            if m.kind == "speed":
                new_q = q + m.velocity * dt
            else:
                fraction = 1.0 if m.duration <= 0 else min(m.elapsed / m.duration, 1.0)
                new_q = m.start + (m.goal - m.start) * fraction
                if fraction >= 1.0:
                    self._motion = None
                    if m.is_async:
                        self._async_finished()
                    if m.notify_done and self.program is not None:
                        self.program.busy_until_done = False
                        self._write_int(self.program.offset, 2)
        qd = (new_q - q) / self.period
        raw["actual_q"] = tuple(float(x) for x in new_q)
        raw["actual_qd"] = tuple(float(x) for x in qd)
        if self._servo_target is not None:
            raw["target_qd"] = raw["actual_qd"]

    def _update_tcp(self) -> None:
        if self.robot_model is None:
            return
        raw = self.state._raw()
        for pose, q in (("actual_TCP_pose", "actual_q"), ("target_TCP_pose", "target_q")):
            raw[pose] = tuple(float(x) for x in forward_kinematics(self.robot_model, raw[q], self.tcp_offset))

    # ---- bookkeeping ----
    def _protocol_error(self, message: str) -> None:
        with self.lock:
            self.protocol_errors.append(message)
        self._log("error", message)

    def _log(self, source: str, message: str) -> None:
        line = f"[{self._time:9.3f}] {source}: {message}"
        self.log.append(line)
        if self.verbose:
            print("ur_controller_sim", line, flush=True)


# --- the test-facing proxy: the controller runs in a child process ------------------------------
def _plain(x: Any) -> Any:
    """Builtins and numpy only, so that results pickle whatever module name the child runs under."""
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, (list, collections.deque, set, frozenset)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, np.generic):
        return x.item()
    return x


_CALLS = frozenset({
    "start", "stop", "outage", "drop_clients", "stall", "resume", "protective_stop", "emergency_stop",
    "release_emergency_stop", "set_joint_positions", "start_control_script", "stop_program", "clear_records",
    "wait_cycles", "input_value", "output_register",
})
_GETS = frozenset({
    "received_inputs", "servoj_targets", "servoj_commands", "commands", "dashboard_commands", "scripts",
    "secondary_programs", "output_recipes",
    "script_commands", "protocol_errors", "watchdog_trips", "watchdog", "log", "inputs", "connections",
    "program_running", "running", "tcp_offset", "safety_mode", "robot_mode", "runtime_state", "ports",
    "controller_frequency", "period", "loaded_program",
})
_SETS = frozenset({
    "safety_mode", "robot_mode", "remote_control", "max_joint_speed", "protective_stop_unlock_delay",
    "inputs_in_use", "unsupported_outputs", "robot_model", "custom_script_duration", "script_start_delay",
    "verbose", "serial_number",
})
_ERRORS = {"AttributeError": AttributeError, "ValueError": ValueError, "KeyError": KeyError,
           "TypeError": TypeError, "OSError": OSError}


def _child_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    core: ControllerCore | None = None
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "init":  # (again: a fresh controller, the old one stopped)
                if core is not None:
                    core.stop()
                core = None
                core = ControllerCore(**args[0])
                result: Any = None
            elif core is None:
                raise RuntimeError("not initialised")
            elif op == "call":
                name, call_args, call_kwargs = args
                if name not in _CALLS:
                    raise AttributeError(name)
                result = getattr(core, name)(*call_args, **call_kwargs)
                if result is core:
                    result = None
            elif op == "get":
                if args[0] not in _GETS:
                    raise AttributeError(args[0])
                with core.lock:
                    result = _plain(getattr(core, args[0]))
            elif op == "set":
                if args[0] not in _SETS:
                    raise AttributeError(args[0])
                value = args[1]
                if args[0] in ("inputs_in_use", "unsupported_outputs"):
                    value = set(value)
                with core.lock:
                    setattr(core, args[0], value)
                result = None
            elif op == "state_get":
                result = core.state.get(args[0])
            elif op == "state_update":
                values = dict(args[0])
                with core.lock:
                    core.state.update(**{k: v for k, v in values.items() if k not in ("safety_mode", "robot_mode")})
                    for name in ("robot_mode", "safety_mode"):  # through the setters: programs stop etc.
                        if name in values:
                            setattr(core, name, values[name])
                result = None
            elif op == "state_snapshot":
                result = core.state.snapshot()
            elif op == "exit":
                core.stop()
                conn.send((True, None))
                break
            else:
                raise AttributeError(op)
            conn.send((True, _plain(result)))
        except Exception as error:  # noqa: BLE001 - every error goes back to the caller
            conn.send((False, (type(error).__name__, str(error))))
    if core is not None:
        core.stop()


def _kill(proc: Any) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=2)


class _StateProxy:
    """``sim.state``: the controller's RTDE output variables (see :class:`SimState`), read and written
    across the process boundary. ``sim.state.actual_q = q`` / ``sim.state.actual_q`` (numpy) /
    ``sim.state.update(...)`` (atomic) / ``sim.state.snapshot()``."""

    def __init__(self, sim: UrControllerSim) -> None:
        object.__setattr__(self, "_sim", sim)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._sim._rpc("state_get", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def get(self, name: str) -> Any:
        return self._sim._rpc("state_get", name)

    def update(self, **values: Any) -> None:
        self._sim._rpc("state_update", _plain({k: np.asarray(v) if isinstance(v, (list, tuple)) else v
                                               for k, v in values.items()}))

    def snapshot(self) -> dict[str, Any]:
        return self._sim._rpc("state_snapshot")


class UrControllerSim:
    """The fake UR controller for tests (see the module docstring for what is emulated).

    The controller runs in a child process (ur_rtde's constructors hold the GIL while they wait for the
    controller, so it cannot be threads of the test process); this object starts it and forwards every
    call over a pipe, thread-safe. Records (``servoj_targets``, ``received_inputs``, ...) are copies
    taken when read.

    >>> with UrControllerSim(host=free_loopback_host()) as sim:
    ...     receive = rtde_receive.RTDEReceiveInterface(sim.host)
    ...     sim.state.actual_q = [0.1] * 6

    ``start()`` listens (first call: starts the child); ``stop()`` closes every socket and pauses the
    controller (state kept; ``start()`` again resumes, like a network outage); ``drop_clients()``
    closes the current connections but keeps listening; ``shutdown()`` (and leaving the ``with``) ends
    the child. Options beyond the ports: see :class:`ControllerCore` (``robot_model``, ``initial_q``,
    ``max_joint_speed``, ``remote_control``, ``protective_stop_unlock_delay``, ``inputs_in_use``,
    ``unsupported_outputs``, ``controller_frequency``, ``verbose`` ...).
    """

    def __init__(self, host: str = "127.0.0.1", rtde_port: int = DEFAULT_PORTS["rtde"],
                 dashboard_port: int | None = DEFAULT_PORTS["dashboard"],
                 script_port: int | None = DEFAULT_PORTS["script"],
                 urcontrol_version: tuple[int, int, int] = E_SERIES, **options: Any) -> None:
        self.host = host
        self.urcontrol_version = tuple(urcontrol_version)
        self._options = _plain(dict(host=host, rtde_port=rtde_port, dashboard_port=dashboard_port,
                                    script_port=script_port, urcontrol_version=tuple(urcontrol_version), **options))
        self._proc: Any = None
        self._conn: Any = None
        self._finalizer: Any = None
        self._rpc_lock = threading.Lock()
        self.ports: dict[str, int] = {}
        self.state = _StateProxy(self)

    # ---- process plumbing ----
    def _spawn(self) -> None:
        import subprocess
        import weakref
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(child.fileno())],
                                          pass_fds=(child.fileno(),), close_fds=True)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        self._rpc("init", self._options)

    def _rpc(self, op: str, *args: Any) -> Any:
        with self._rpc_lock:
            if self._conn is None:
                raise RuntimeError("the fake controller is not started")
            try:
                self._conn.send((op, *args))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as error:
                raise RuntimeError(f"the fake controller process is gone: {error!r}") from error
        if not ok:
            kind, message = value
            raise _ERRORS.get(kind, RuntimeError)(message)
        return value

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._rpc("call", name, _plain(args), _plain(kwargs))

    # ---- life cycle ----
    def start(self) -> UrControllerSim:
        """Listen (RTDE, dashboard, script ports) and run the controller. OSError if a port is taken."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        try:
            self._call("start")
        except OSError:
            self.shutdown()
            raise
        self.ports = self._rpc("get", "ports")
        return self

    def reset(self, **options: Any) -> UrControllerSim:
        """A fresh controller (default state, no records) in the same process, with ``options``
        changed (e.g. ``urcontrol_version``); stopped until :meth:`start`. Cheaper than a new
        instance (no new process)."""
        self._options.update(_plain(options))
        self.host = self._options["host"]
        self.urcontrol_version = tuple(self._options["urcontrol_version"])
        self.ports = {}
        if self._proc is not None and self._proc.poll() is None:
            self._rpc("init", self._options)
        return self

    def stop(self, abort: bool = False) -> None:
        """Drop the network: close listeners and client connections (``abort``: with a TCP reset);
        the controller pauses with its state kept until :meth:`start`."""
        if self._conn is not None:
            self._call("stop", abort)

    def shutdown(self) -> None:
        """Stop everything and end the controller process."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._rpc("exit")
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=3)
            _kill(self._proc)
            self._proc = None

    def __enter__(self) -> UrControllerSim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ---- faults ----
    def drop_clients(self, abort: bool = False) -> None:
        """Close the current client connections; keep listening. Not with a live RTDEControlInterface:
        see :meth:`ControllerCore.drop_clients` (ur_rtde's own reconnect loops); use :meth:`outage`."""
        self._call("drop_clients", abort)

    def outage(self, seconds: float, abort: bool = False) -> None:
        """Network outage: connections dropped and refused for ``seconds``; the controller keeps running."""
        self._call("outage", seconds, abort)

    def stall(self) -> None:
        """Stop streaming RTDE outputs, sockets left open (ur_rtde gives up after ~2.5 s)."""
        self._call("stall")

    def resume(self) -> None:
        self._call("resume")

    # ---- safety and program ----
    @property
    def safety_mode(self) -> SafetyMode:
        return SafetyMode(self._rpc("get", "safety_mode"))

    @safety_mode.setter
    def safety_mode(self, mode: int) -> None:
        self._rpc("set", "safety_mode", int(mode))

    @property
    def robot_mode(self) -> RobotMode:
        return RobotMode(self._rpc("get", "robot_mode"))

    @robot_mode.setter
    def robot_mode(self, mode: int) -> None:
        self._rpc("set", "robot_mode", int(mode))

    @property
    def runtime_state(self) -> RuntimeState:
        return RuntimeState(self._rpc("get", "runtime_state"))

    @property
    def program_running(self) -> bool:
        return self._rpc("get", "program_running")

    def protective_stop(self) -> None:
        """Safety mode 3 (PROTECTIVE_STOP), safety_status_bits bit 2, motion halted, script ended."""
        self._call("protective_stop")

    def emergency_stop(self, system: bool = False) -> None:
        self._call("emergency_stop", system)

    def release_emergency_stop(self) -> None:
        self._call("release_emergency_stop")

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Place the arm at ``q`` (actual and target), at rest."""
        self._call("set_joint_positions", np.asarray(q, dtype=float))

    def start_control_script(self) -> None:
        """Pretend ur_rtde's control script runs without an upload (URCap / custom-script setups)."""
        self._call("start_control_script")

    def stop_program(self) -> None:
        self._call("stop_program")

    def set_option(self, name: str, value: Any) -> None:
        """Change a controller option at run time (``remote_control``, ``max_joint_speed``, ...)."""
        self._rpc("set", name, _plain(value))

    # ---- records ----
    def _get(self, name: str) -> Any:
        return self._rpc("get", name)

    received_inputs = property(lambda self: self._get("received_inputs"),
                               doc="Every decoded RTDE input package: {time, recipe, values, connection}.")
    servoj_targets = property(lambda self: self._get("servoj_targets"),
                              doc="q (numpy) of every servoJ package that arrived, in order.")
    servoj_commands = property(lambda self: self._get("servoj_commands"),
                               doc="Every servoJ package: q, speed, acceleration, time, lookahead_time, gain.")
    dashboard_commands = property(lambda self: self._get("dashboard_commands"))
    output_recipes = property(lambda self: self._get("output_recipes"),
                              doc="Every CONTROL_PACKAGE_SETUP_OUTPUTS: {names, frequency, types, connection}.")
    scripts = property(lambda self: self._get("scripts"), doc="Programs received on the script port(s).")
    secondary_programs = property(lambda self: self._get("secondary_programs"),
                                  doc="``sec`` programs received (they run beside the main program).")
    script_commands = property(lambda self: self._get("script_commands"))
    protocol_errors = property(lambda self: self._get("protocol_errors"))
    watchdog_trips = property(lambda self: self._get("watchdog_trips"))
    watchdog = property(lambda self: self._get("watchdog"), doc="(input variable, min frequency) or None.")
    inputs = property(lambda self: self._get("inputs"), doc="The latest value of every RTDE input variable.")
    connections = property(lambda self: self._get("connections"), doc="[(kind, peer)] of open connections.")
    log = property(lambda self: self._get("log"))
    running = property(lambda self: self._get("running"))
    controller_frequency = property(lambda self: self._get("controller_frequency"))
    tcp_offset = property(lambda self: self._get("tcp_offset"))

    @property
    def commands(self) -> list[tuple[Command | int, dict[str, Any]]]:
        """What the emulated control script executed: (command, input registers) in order."""
        known = set(int(c) for c in Command)
        return [(Command(c) if c in known else c, regs) for c, regs in self._get("commands")]

    def clear_records(self) -> None:
        self._call("clear_records")

    def input_value(self, name: str, default: Any = None) -> Any:
        return self._call("input_value", name, default)

    def output_register(self, index: int, kind: str = "int") -> Any:
        return self._call("output_register", index, kind)

    @property
    def rtde_port(self) -> int:
        return self.ports.get("rtde", self._options["rtde_port"])

    @property
    def dashboard_port(self) -> int | None:
        return self.ports.get("dashboard", self._options["dashboard_port"])

    @property
    def script_port(self) -> int | None:
        return self.ports.get("script", self._options["script_port"])

    def wait_cycles(self, n: int = 2, timeout: float = 2.0) -> bool:
        return self._call("wait_cycles", n, timeout)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 2.0, interval: float = 0.005) -> bool:
        """Poll ``predicate`` (run here, in the test process) until it is true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)


if __name__ == "__main__":  # the controller process (see UrControllerSim._spawn)
    _child_main(int(sys.argv[1]))
