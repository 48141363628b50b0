"""Object-centric retargeting: policy actions → tool targets in the robot's base frame.

The invariant (skill-centric FL paper §5.1) is the tool's pose relative to the object it acts on::

    T_h^o = (T_o^w)^-1 T_h^w        (recorded: tool/hand pose in the object's frame)
    T_r^w = T_o'^w T_h^o            (robot target, for the object where it is now)

so an action expressed in the object's frame transfers to a scene where the object sits elsewhere.
Action layouts (``action_kind``; the last value is always the gripper, > ``gripper_threshold`` =
close, as in Meta-World):

* ``ee_delta``: (dx, dy, dz[, rx, ry, rz], gripper) — a step of the tool, position in units of
  ``position_scale_m``, rotation (a rotation vector) in units of ``rotation_scale_rad``, along the
  axes of ``action_frame`` (``base`` or ``object``); without rotation values the tool keeps its
  orientation.
* ``ee_pose``: (x, y, z[, rx, ry, rz], gripper) — the tool pose in ``action_frame``; without rotation
  values the orientation is ``default_orientation_rpy``.

Anything not finite is refused (:class:`RetargetError`), never clipped into a motion.
"""
from __future__ import annotations

import dataclasses
import enum

import numpy as np

from fedvla.config import parse_enum, require, require_positive


class ActionKind(str, enum.Enum):
    EE_DELTA = "ee_delta"
    EE_POSE = "ee_pose"


class ActionFrame(str, enum.Enum):
    BASE = "base"  # the robot's base_link
    OBJECT = "object"  # the target object's frame (its pose from the scene parse or the simulator)


ACTION_SIZES = (4, 7)  # (xyz, gripper) or (xyz, rotation vector, gripper)


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """What a policy's actions mean: stored with its training data and its checkpoints, so that a
    driver can refuse, before anything moves, a policy whose actions it would misread."""

    kind: ActionKind
    frame: ActionFrame
    action_dim: int
    position_scale_m: float  # ee_delta: metres per action unit
    rotation_scale_rad: float  # ee_delta with rotation: radians per action unit

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "frame": self.frame.value, "action_dim": self.action_dim,
                "position_scale_m": self.position_scale_m, "rotation_scale_rad": self.rotation_scale_rad}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> ActionSpace:
        try:
            return cls(ActionKind(data["kind"]), ActionFrame(data["frame"]), int(data["action_dim"]),
                       float(data["position_scale_m"]), float(data["rotation_scale_rad"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: the action space {data!r} is malformed ({err})") from None

    def describe(self) -> str:
        scale = f", {self.position_scale_m:g} m per unit" if self.kind is ActionKind.EE_DELTA else ""
        return f"{self.kind.value} in the {self.frame.value} frame, {self.action_dim} values{scale}"


class RetargetError(ValueError):
    """The action cannot become a tool target (wrong size, not finite, no object pose)."""


@dataclasses.dataclass(kw_only=True)
class RetargetConfig:
    action_kind: ActionKind = ActionKind.EE_DELTA
    action_frame: ActionFrame = ActionFrame.BASE
    position_scale_m: float = 0.01  # ee_delta: metres per action unit (Meta-World's hand moves 1 cm per unit)
    rotation_scale_rad: float = 0.05  # ee_delta: radians per action unit
    default_orientation_rpy: tuple[float, float, float] = (np.pi, 0.0, 0.0)  # ee_pose without rotation: tool down
    gripper_threshold: float = 0.0

    def __post_init__(self) -> None:
        self.action_kind = parse_enum(ActionKind, self.action_kind, "action_kind")
        self.action_frame = parse_enum(ActionFrame, self.action_frame, "action_frame")
        require_positive(self.position_scale_m, "position_scale_m")
        require_positive(self.rotation_scale_rad, "rotation_scale_rad")
        self.default_orientation_rpy = tuple(self.default_orientation_rpy)
        require(len(self.default_orientation_rpy) == 3, "default_orientation_rpy", "is (roll, pitch, yaw)", "3 numbers")


def execution_problem(space: ActionSpace, config: RetargetConfig) -> str | None:
    """Why a retargeter with ``config`` would misread actions of ``space`` (None: it reads them as meant)."""
    if space.action_dim not in ACTION_SIZES:
        return f"{space.action_dim} action values; the arm executes {' or '.join(map(str, ACTION_SIZES))}"
    if (space.kind, space.frame) != (config.action_kind, config.action_frame):
        return (f"the policy acts with {space.kind.value} in the {space.frame.value} frame; the driver is set to "
                f"{config.action_kind.value} in the {config.action_frame.value} frame (action_kind, action_frame)")
    if space.kind is ActionKind.EE_DELTA and not np.isclose(space.position_scale_m, config.position_scale_m):
        return (f"the policy's position unit is {space.position_scale_m:g} m; the driver's position_scale_m is "
                f"{config.position_scale_m:g}")
    if space.kind is ActionKind.EE_DELTA and space.action_dim == 7 and not np.isclose(
            space.rotation_scale_rad, config.rotation_scale_rad):
        return (f"the policy's rotation unit is {space.rotation_scale_rad:g} rad; the driver's rotation_scale_rad "
                f"is {config.rotation_scale_rad:g}")
    return None


def hand_in_object(object_in_world: np.ndarray, hand_in_world: np.ndarray) -> np.ndarray:
    """T_h^o = (T_o^w)^-1 T_h^w (4x4 homogeneous matrices)."""
    return np.linalg.inv(object_in_world) @ hand_in_world


def robot_target(object_in_world: np.ndarray, hand_in_object_frame: np.ndarray) -> np.ndarray:
    """T_r^w = T_o^w T_h^o: the tool target that keeps the recorded relation to the object."""
    return object_in_world @ hand_in_object_frame


class Retargeter:
    def __init__(self, config: RetargetConfig | None = None) -> None:
        import pinocchio as pin

        self.config = config or RetargetConfig()
        self._pin = pin
        self._default_rotation = pin.rpy.rpyToMatrix(*self.config.default_orientation_rpy)

    def target(self, action: np.ndarray, tool_in_base: np.ndarray,
               object_in_base: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """(4x4 tool target in the base frame, gripper closed?) for one action, from the tool's
        current (or previously targeted) pose ``tool_in_base``."""
        pin, config = self._pin, self.config
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape[0] not in ACTION_SIZES:
            raise RetargetError(f"{config.action_kind.value} actions have 4 (xyz, gripper) or 7 (xyz, rotation vector, "
                                f"gripper) values, got {action.shape[0]}")
        if not np.all(np.isfinite(action)):
            raise RetargetError(f"action has non-finite values: {action.tolist()}")
        frame = np.eye(4)
        if config.action_frame is ActionFrame.OBJECT:
            if object_in_base is None:
                raise RetargetError("action_frame is object but no object pose is known")
            frame = np.asarray(object_in_base, dtype=np.float64)
        rotation_part = action[3:6] if action.shape[0] == 7 else None
        gripper_closed = bool(action[-1] > config.gripper_threshold)
        target = np.eye(4)
        if config.action_kind is ActionKind.EE_DELTA:
            axes = frame[:3, :3]
            target[:3, 3] = tool_in_base[:3, 3] + axes @ (action[:3] * config.position_scale_m)
            rotation = tool_in_base[:3, :3]
            if rotation_part is not None:
                step = pin.exp3(axes @ (rotation_part * config.rotation_scale_rad))
                rotation = step @ rotation
            target[:3, :3] = rotation
        else:
            pose_in_frame = np.eye(4)
            pose_in_frame[:3, 3] = action[:3]
            pose_in_frame[:3, :3] = (pin.exp3(rotation_part) if rotation_part is not None
                                     else frame[:3, :3].T @ self._default_rotation)
            target = robot_target(frame, pose_in_frame)
        return target, gripper_closed
