"""Safety limits of the arm, enforced before any command reaches a backend.

Two layers, both here so there is one definition of every limit:

* :class:`MotionLimiter` turns joint targets into servo setpoints that respect the velocity and
  acceleration limits by construction (straight at the target in joint space, no faster than the
  arm can still brake onto it, then an acceleration-bounded change of velocity);
* :class:`SafetyGuard` checks, independently, every setpoint about to be sent (finite, inside the
  joint limits less a margin, velocity and acceleration from the previous setpoint, tool inside
  the workspace box) and every target a policy action asks for. A violation is never clipped into
  something else: the command is refused and the reason reported.
"""
from __future__ import annotations

import dataclasses
import enum

import numpy as np

from fedvla.config import require, require_positive
from fedvla.robot.kinematics import ArmKinematics

# Velocity and acceleration checks of a setpoint allow this relative slack for rounding.
_TOLERANCE = 1e-6


class Violation(str, enum.Enum):
    NOT_FINITE = "not_finite"  # NaN or infinite values
    WRONG_SIZE = "wrong_size"
    JOINT_LIMIT = "joint_limit"
    VELOCITY = "velocity"
    ACCELERATION = "acceleration"
    WORKSPACE = "workspace"  # the tool would leave the workspace box
    UNREACHABLE = "unreachable"  # IK did not converge


@dataclasses.dataclass(kw_only=True)
class SafetyConfig:
    """Limits the runtime enforces (also the robot driver node's parameters)."""

    joint_margin_rad: float = 0.05  # stay this far inside the URDF's position limits
    velocity_scale: float = 0.5  # fraction of the URDF's joint speeds a policy may use
    max_joint_acceleration: float = 3.0  # rad/s^2, every joint
    stop_deceleration: float = 8.0  # rad/s^2 of servoStop when input goes stale or on a stop request
    workspace_min: tuple[float, float, float] = (-0.45, -0.45, 0.02)  # tool position box, base_link frame (m)
    workspace_max: tuple[float, float, float] = (0.45, 0.45, 0.55)
    stale_timeout_s: float = 0.5  # no new action chunk for this long: stop

    def __post_init__(self) -> None:
        self.workspace_min, self.workspace_max = tuple(self.workspace_min), tuple(self.workspace_max)
        require(self.joint_margin_rad >= 0, "joint_margin_rad", "must not be negative", "a number >= 0")
        require(0 < self.velocity_scale <= 1, "velocity_scale", f"{self.velocity_scale} is outside (0, 1]", "0 < x <= 1")
        require_positive(self.max_joint_acceleration, "max_joint_acceleration")
        require_positive(self.stop_deceleration, "stop_deceleration")
        require_positive(self.stale_timeout_s, "stale_timeout_s")
        require(len(self.workspace_min) == 3 and len(self.workspace_max) == 3, "workspace_min",
                "workspace bounds are (x, y, z)", "three numbers each")
        require(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)), "workspace_max",
                f"{self.workspace_max} is not above {self.workspace_min} on every axis", "max > min per axis")


class SafetyGuard:
    def __init__(self, kinematics: ArmKinematics, config: SafetyConfig) -> None:
        self.kinematics, self.config = kinematics, config
        limits = kinematics.limits
        self.lower = limits.lower + config.joint_margin_rad
        self.upper = limits.upper - config.joint_margin_rad
        self.max_velocity = limits.velocity * config.velocity_scale
        self.max_acceleration = np.full(6, config.max_joint_acceleration)
        self.workspace_min = np.asarray(config.workspace_min)
        self.workspace_max = np.asarray(config.workspace_max)

    def check_target(self, q: np.ndarray) -> Violation | None:
        """A joint target (from IK) the arm may be asked to reach: finite, inside the joint limits,
        tool inside the workspace."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (6,):
            return Violation.WRONG_SIZE
        if not np.all(np.isfinite(q)):
            return Violation.NOT_FINITE
        if np.any(q < self.lower) or np.any(q > self.upper):
            return Violation.JOINT_LIMIT
        return self.check_tool_position(self.kinematics.fk(q).translation)

    def check_tool_position(self, position: np.ndarray) -> Violation | None:
        position = np.asarray(position, dtype=np.float64)
        if not np.all(np.isfinite(position)):
            return Violation.NOT_FINITE
        if np.any(position < self.workspace_min) or np.any(position > self.workspace_max):
            return Violation.WORKSPACE
        return None

    def check_setpoint(self, q: np.ndarray, previous_q: np.ndarray, previous_velocity: np.ndarray,
                       period_s: float) -> Violation | None:
        """A servo setpoint one period after ``previous_q`` (moving at ``previous_velocity``)."""
        problem = self.check_target(q)
        if problem is not None:
            return problem
        velocity = (np.asarray(q) - previous_q) / period_s
        if np.any(np.abs(velocity) > self.max_velocity * (1 + _TOLERANCE) + _TOLERANCE):
            return Violation.VELOCITY
        if np.any(np.abs(velocity - previous_velocity) / period_s > self.max_acceleration * (1 + _TOLERANCE) + _TOLERANCE):
            return Violation.ACCELERATION
        return None


class MotionLimiter:
    """Setpoints towards a (moving) joint target within velocity and acceleration limits."""

    def __init__(self, max_velocity: np.ndarray, max_acceleration: np.ndarray, period_s: float) -> None:
        self.max_velocity, self.max_acceleration, self.period_s = max_velocity, max_acceleration, period_s

    def step(self, q: np.ndarray, velocity: np.ndarray, target: np.ndarray,
             target_velocity: np.ndarray | None = None, goal: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(next setpoint, its velocity) one period on, towards ``target`` moving at
        ``target_velocity`` (a trajectory's reference; None: a fixed target), braking to stop at
        ``goal`` (where the trajectory ends and the arm holds; None: ``target``).

        The reference's own velocity is fed forward: chasing a moving reference as if it stood
        still braked the arm at every chunk boundary (a new chunk's reference starts at the
        setpoint). Limits scale the joints' velocities (and their change) together, keeping the
        direction of motion: clipping each joint on its own bent the tool's path, and a policy's
        next delta starts from the bent path, so the bend added up (1.4 cm of sag over 5.6 cm)."""
        dt, a_max = self.period_s, self.max_acceleration
        feedforward = np.zeros_like(q) if target_velocity is None else np.asarray(target_velocity)
        error = target - q
        # Relative to the reference: straight at it in joint space, as fast as the arm can still
        # meet it. Per joint (each at its own stopping speed) the joints' velocities turned as the
        # gaps closed; the limit on their change, shared to keep the direction, then starved the
        # braking joint, and a point-to-point move passed its goal by a quarter of its length.
        closing = error * _ratio_within(_stopping_speed(np.abs(error), a_max, dt), np.abs(error))
        desired = feedforward + closing
        desired = desired * _scale_within(desired, self.max_velocity)
        # Towards the goal, no faster than the arm can still stop there.
        to_goal = (target if goal is None else goal) - q
        stoppable = _stopping_speed(np.abs(to_goal), a_max, dt)
        towards = np.sign(desired) == np.sign(to_goal)
        desired = desired * _scale_within(np.where(towards, desired, 0.0), stoppable)
        change = desired - velocity
        new_velocity = velocity + change * _scale_within(change, a_max * dt)
        return q + new_velocity * dt, new_velocity

    def brake(self, q: np.ndarray, velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(next setpoint, its velocity) one period into braking: all joints slowed by the same
        factor (the joint-space direction kept), none by more than its acceleration limit."""
        new_velocity = velocity * (1.0 - self._braking_slowdown(velocity))
        return q + new_velocity * self.period_s, new_velocity

    def stopping_point(self, q: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """Where :meth:`brake`, repeated, stops the arm: on the straight joint-space line along
        ``velocity``. The fastest joint loses a·dt each period, so the speeds run through the
        fractions 1 - k·c of today's (c: this period's slowdown), and every later period's point
        lies on the way to this one."""
        slowdown = self._braking_slowdown(velocity)
        if slowdown == 0.0:
            return np.asarray(q, dtype=np.float64).copy()
        periods = np.floor(1.0 / slowdown)
        return q + velocity * self.period_s * (periods - slowdown * periods * (periods + 1) / 2)

    def _braking_slowdown(self, velocity: np.ndarray) -> float:
        """The fraction of ``velocity`` one period of braking takes off: as much as the joint nearest
        its acceleration limit allows, all of it when every joint can stop within the period."""
        return min(1.0, _ratio_within(self.max_acceleration * self.period_s, np.abs(velocity)))


def _stopping_speed(distance: np.ndarray, deceleration: np.ndarray, dt: float) -> np.ndarray:
    """The fastest speed from which the setpoints, slowing by at most ``deceleration * dt`` per
    period, stop exactly ``distance`` on, in their own discrete time.

    In units of a·dt per period and a·dt² of distance d: braking n+1 periods by one unit each from
    v covers (n+1)·v - n(n+1)/2, so with n(n+1)/2 <= d the largest whole n, v = n + (d - n(n+1)/2)/(n+1),
    and one period later the same formula gives v - 1. The continuous curve sqrt(2ad) asks for a
    little more than a·dt of braking each period; the clipped change lagged it and the setpoints
    passed the goal (0.4 mm onto the workspace floor below a grasp)."""
    per_period = deceleration * dt
    units = distance / (per_period * dt)
    whole = np.floor((np.sqrt(1.0 + 8.0 * units) - 1.0) / 2.0)
    return (whole + (units - whole * (whole + 1) / 2) / (whole + 1)) * per_period


def _ratio_within(bound: np.ndarray, magnitude: np.ndarray) -> float:
    """The largest factor that keeps every magnitude_i within bound_i (over magnitudes > 0; 0 when
    none is)."""
    moving = magnitude > 0
    return float(np.min(bound[moving] / magnitude[moving])) if np.any(moving) else 0.0


def _scale_within(vector: np.ndarray, bound: np.ndarray) -> float:
    """The largest factor <= 1 that brings every |vector_i| within bound_i."""
    over = np.abs(vector) > bound
    if not np.any(over):
        return 1.0
    return float(np.min(bound[over] / np.abs(vector[over])))
