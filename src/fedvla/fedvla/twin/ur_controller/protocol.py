"""The UR controller's data model as RTDE exposes it: modes, command ids of ur_rtde's control
script, the RTDE wire format and variable tables (names, types, software versions that have them),
and :class:`SimState`, the controller's output variables."""
from __future__ import annotations

import enum
import re
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

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
