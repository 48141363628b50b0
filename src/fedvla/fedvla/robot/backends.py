"""Arm backends behind one interface: the UR controller over RTDE (:mod:`fedvla.robot.ur_rtde_arm`)
and a simulated arm for machines without a robot.

The runtime (:class:`fedvla.robot.controller.ArmController`) only ever calls this interface, after
its safety checks: a backend executes, it does not judge.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import time

import numpy as np

from fedvla.config import require, require_positive


class SafetyStatus(str, enum.Enum):
    """The controller's own safety state (UR safety modes, simplified)."""

    NORMAL = "normal"
    PROTECTIVE_STOP = "protective_stop"  # a collision or limit tripped: unlock explicitly
    SAFEGUARD_STOP = "safeguard_stop"  # a safeguard input (light curtain, door) is open: close it
    EMERGENCY_STOP = "emergency_stop"  # e-stop pressed: release it on the robot, then unlock
    FAULT = "fault"  # violation / fault / other non-normal safety mode


class BackendError(RuntimeError):
    """The backend cannot do what was asked (not connected, connection lost)."""


class CommandRefused(BackendError):
    """Connected, but the controller refused the command (its program is not running): a fault for
    the operator, not a reason to reconnect."""


@dataclasses.dataclass
class ArmState:
    q: np.ndarray  # (6,) measured joint positions, rad
    qd: np.ndarray  # (6,) measured joint velocities, rad/s
    safety: SafetyStatus
    gripper_closed: bool
    program_running: bool = True  # the controller executes our commands (ur_rtde: the control script runs)


@dataclasses.dataclass(kw_only=True)
class ServoSettings:
    """servoJ parameters (UR semantics)."""

    lookahead_time_s: float = 0.1  # 0.03-0.2: smooths the trajectory, adds delay
    gain: float = 300.0  # 100-2000: proportional gain of the position servo
    servo_speed: float = 0.5  # (unused by servoJ on current firmware; passed as the API requires)
    servo_acceleration: float = 0.5

    def __post_init__(self) -> None:
        require(0.03 <= self.lookahead_time_s <= 0.2, "lookahead_time_s",
                f"{self.lookahead_time_s} is outside [0.03, 0.2] (UR servoJ)", "0.03 <= x <= 0.2")
        require(100 <= self.gain <= 2000, "gain", f"{self.gain} is outside [100, 2000] (UR servoJ)", "100 <= x <= 2000")


class ArmBackend(abc.ABC):
    """One arm. ``period_s`` is the controller's cycle (8 ms on a CB3, 2 ms on an e-series)."""

    period_s: float

    @abc.abstractmethod
    def connect(self) -> None:
        """Connect (again); raise :class:`BackendError` when the controller cannot be reached."""

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    def read(self) -> ArmState:
        """The latest state; raise :class:`BackendError` if the connection is gone."""

    @abc.abstractmethod
    def servo_j(self, q: np.ndarray, settings: ServoSettings) -> None:
        """Track joint setpoint ``q`` for the next period."""

    @abc.abstractmethod
    def servo_stop(self, deceleration: float) -> None:
        """Stop servoing, braking at ``deceleration`` rad/s^2."""

    @abc.abstractmethod
    def set_gripper(self, closed: bool) -> None: ...

    @abc.abstractmethod
    def resume(self) -> None:
        """The operator's explicit recovery: unlock a protective stop if there is one and restart
        whatever executes our commands; raise :class:`BackendError` if the arm stays stopped."""

    def kick_watchdog(self) -> None:
        """Tell the controller we are alive (backends with a watchdog stop the arm otherwise)."""

    def init_period(self) -> float:
        """Start of a control cycle (pair with :meth:`wait_period`, as ur_rtde's initPeriod/waitPeriod)."""
        return time.monotonic()

    def wait_period(self, start: float) -> None:
        """Sleep until one period after ``start``."""
        remaining = start + self.period_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def close(self) -> None:
        self.disconnect()


class SimulatedArm(ArmBackend):
    """A kinematic UR3: servoJ setpoints are reached in one period, servoStop brakes at the given
    deceleration; time advances only through :meth:`advance` (simulated time: the caller decides,
    in tests as fast as it likes, in the driver node at the control rate). Faults are injected with
    :meth:`trigger` and :meth:`drop_connection`."""

    def __init__(self, period_s: float = 0.008, initial_q: np.ndarray | None = None) -> None:
        require_positive(period_s, "control_period_s")
        self.period_s = period_s
        self.q = np.zeros(6) if initial_q is None else np.asarray(initial_q, dtype=np.float64).copy()
        self.qd = np.zeros(6)
        self.safety = SafetyStatus.NORMAL
        self.gripper_closed = False
        self.program_running = True
        self.time_s = 0.0
        self._connected = False
        self._reachable = True
        self._braking: float | None = None  # deceleration while a servoStop brakes
        self._servoed = False  # a servoJ setpoint arrived since the last advance
        self.commands: list[tuple[float, str, object]] = []  # (time, kind, value): what reached the arm
        self.servo_from: list[tuple[np.ndarray, np.ndarray]] = []  # (q, qd) of the arm when each servoJ came

    def connect(self) -> None:
        if not self._reachable:
            raise BackendError("simulated arm: connection refused")
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def read(self) -> ArmState:
        self._require_connected()
        return ArmState(q=self.q.copy(), qd=self.qd.copy(), safety=self.safety, gripper_closed=self.gripper_closed,
                        program_running=self.program_running)

    def servo_j(self, q: np.ndarray, settings: ServoSettings) -> None:
        self._require_connected()
        if self.safety is not SafetyStatus.NORMAL or not self.program_running:
            raise BackendError(f"simulated arm: servoJ refused ({self.safety.value}, "
                               f"program {'running' if self.program_running else 'stopped'})")
        q = np.asarray(q, dtype=np.float64)
        self.commands.append((self.time_s, "servo_j", q.copy()))
        self.servo_from.append((self.q.copy(), self.qd.copy()))
        self.qd = (q - self.q) / self.period_s
        self.q = q.copy()
        self._braking = None
        self._servoed = True

    def servo_stop(self, deceleration: float) -> None:
        self._require_connected()
        self.commands.append((self.time_s, "servo_stop", float(deceleration)))
        self._braking = float(deceleration)

    def set_gripper(self, closed: bool) -> None:
        self._require_connected()
        if closed != self.gripper_closed:
            self.commands.append((self.time_s, "gripper", bool(closed)))
        self.gripper_closed = bool(closed)

    def resume(self) -> None:
        self._require_connected()
        if self.safety is SafetyStatus.EMERGENCY_STOP:
            raise BackendError("simulated arm: the emergency stop is still pressed")
        self.safety, self.program_running = SafetyStatus.NORMAL, True

    def wait_period(self, start: float) -> None:
        """Real time (the driver node): sleep out the period, then let it pass for the arm."""
        super().wait_period(start)
        self.advance(self.period_s)

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds of simulated time pass (braking continues, servo holds)."""
        self.time_s += dt
        if self._braking is not None:
            step = np.clip(self.qd, -self._braking * dt, self._braking * dt)
            self.qd = self.qd - step
            self.q = self.q + self.qd * dt
            if not np.any(self.qd):
                self._braking = None
        elif not self._servoed:  # no new setpoint: the servo holds the last one
            self.qd = np.zeros(6)
        self._servoed = False

    # Fault injection (tests and demos).
    def trigger(self, safety: SafetyStatus) -> None:
        """The controller enters a safety state: motion stops at once (as a protective stop does)."""
        self.safety = safety
        if safety is not SafetyStatus.NORMAL:
            self.program_running = False  # a UR controller ends the running program on any stop
        self.qd = np.zeros(6)
        self._braking = None

    def stop_program(self) -> None:
        """The program executing our setpoints stops (watchdog, pendant): the arm halts."""
        self.trigger(self.safety)
        self.program_running = False

    def drop_connection(self, reachable: bool = False) -> None:
        """The link goes down; with ``reachable`` False, reconnecting fails until :meth:`restore`."""
        self._connected = False
        self._reachable = reachable

    def restore(self) -> None:
        self._reachable = True

    def _require_connected(self) -> None:
        if not self._connected:
            raise BackendError("simulated arm: not connected")
