"""The arm's kinematic model, from ``urdf/ur3_gripper.urdf`` through Pinocchio.

:class:`ArmKinematics` keeps only the six arm joints (the gripper's joints are locked open: the
runtime commands the gripper separately), and expresses every pose in the robot's ``base_link``
frame (REP-103, the frame ur_rtde's ``actual_TCP_pose`` uses up to the DH ``base`` rotation).
The tool frame is ``tcp`` (between the fingertips) unless configured otherwise.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from fedvla.config import ConfigError

ARM_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint")
GRIPPER_JOINT = "gripper_finger_joint"
URDF_NAME = "ur3_gripper.urdf"
# The usual UR "home": elbow up, tool pointing down, clear of the singular straight-arm zero pose.
HOME_Q = (0.0, -np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0.0)


def find_urdf(name: str = URDF_NAME) -> Path:
    """The installed ``share/fedvla_bringup/urdf/<name>`` (ament index), else the source tree's."""
    from fedvla.paths import ament_prefixes

    for prefix in ament_prefixes():
        candidate = prefix / "share" / "fedvla_bringup" / "urdf" / name
        if candidate.is_file():
            return candidate
    source = Path(__file__).resolve().parents[4] / "urdf" / name
    if source.is_file():
        return source
    raise ConfigError("urdf_path", f"cannot find {name}", "build the workspace (.ci/setup) or give urdf_path")


@dataclasses.dataclass(frozen=True)
class JointLimits:
    lower: np.ndarray  # (6,) rad
    upper: np.ndarray  # (6,) rad
    velocity: np.ndarray  # (6,) rad/s


class ArmKinematics:
    """Forward kinematics and frame Jacobians of the six arm joints (q: (6,) rad, ARM_JOINTS order)."""

    def __init__(self, urdf_path: str | Path | None = None, tool_frame: str = "tcp", base_frame: str = "base_link") -> None:
        import pinocchio as pin

        path = Path(urdf_path).expanduser() if urdf_path else find_urdf()
        if not path.is_file():
            raise ConfigError("urdf_path", f"{path} does not exist", "a URDF file, e.g. urdf/ur3_gripper.urdf")
        full = pin.buildModelFromUrdf(str(path))
        missing = [j for j in ARM_JOINTS if not full.existJointName(j)]
        if missing:
            raise ConfigError("urdf_path", f"{path.name} has no joint {missing[0]}", "a UR arm URDF")
        # Lock everything but the arm (the gripper moves by its own command), at the neutral pose.
        locked = [full.getJointId(n) for n in full.names[1:] if n not in ARM_JOINTS]
        # The finger's travel, for the joint state of a gripper commanded open or closed.
        self.gripper_limits = (0.0, 0.0)
        if full.existJointName(GRIPPER_JOINT):
            index = full.joints[full.getJointId(GRIPPER_JOINT)].idx_q
            self.gripper_limits = (float(full.lowerPositionLimit[index]), float(full.upperPositionLimit[index]))
        self.model = pin.buildReducedModel(full, locked, pin.neutral(full))
        # pinocchio's Data is scratch space: one per thread, since the driver plans chunks (IK) in
        # its executor thread while the control loop checks setpoints (FK) in its own.
        self._thread_data = threading.local()
        self.urdf_path = path
        for frame in (tool_frame, base_frame):
            if not self.model.existFrame(frame):
                raise ConfigError("tool_frame" if frame == tool_frame else "base_frame",
                                  f"{path.name} has no frame {frame!r}", "tcp, tool0, flange (tool); base_link (base)")
        self.tool_frame, self.base_frame = tool_frame, base_frame
        self._tool_id = self.model.getFrameId(tool_frame)
        self._base_id = self.model.getFrameId(base_frame)
        pin.framesForwardKinematics(self.model, self.data, pin.neutral(self.model))
        # base_link is fixed to the world: its placement never changes.
        self._world_to_base = self.data.oMf[self._base_id].copy()
        self._pin = pin
        self.limits = JointLimits(lower=self.model.lowerPositionLimit.copy(), upper=self.model.upperPositionLimit.copy(),
                                  velocity=self.model.velocityLimit.copy())
        self.joint_names = ARM_JOINTS

    @property
    def data(self):
        """This thread's pinocchio Data."""
        data = getattr(self._thread_data, "data", None)
        if data is None:
            data = self._thread_data.data = self.model.createData()
        return data

    def fk(self, q: np.ndarray):
        """Tool pose in the base frame (a ``pinocchio.SE3``)."""
        pin = self._pin
        pin.framesForwardKinematics(self.model, self.data, np.asarray(q, dtype=np.float64))
        return self._world_to_base.actInv(self.data.oMf[self._tool_id])

    def fk_and_jacobian(self, q: np.ndarray):
        """(tool pose in the base frame, 6x6 Jacobian of the tool frame in its own (LOCAL) axes)."""
        pin = self._pin
        q = np.asarray(q, dtype=np.float64)
        pin.computeJointJacobians(self.model, self.data, q)  # also runs forward kinematics
        pin.updateFramePlacements(self.model, self.data)
        jacobian = pin.getFrameJacobian(self.model, self.data, self._tool_id, pin.ReferenceFrame.LOCAL)
        return self._world_to_base.actInv(self.data.oMf[self._tool_id]), jacobian

    def tool_path(self, waypoints: np.ndarray) -> np.ndarray:
        """(n, 3) tool positions in the base frame along joint waypoints (n, 6)."""
        return np.array([self.fk(q).translation for q in waypoints]).reshape(-1, 3)

    def link_poses(self, q: np.ndarray) -> dict[str, np.ndarray]:
        """4x4 pose in the base frame of every link frame (for /tf and RViz)."""
        pin = self._pin
        pin.framesForwardKinematics(self.model, self.data, np.asarray(q, dtype=np.float64))
        return {frame.name: self._world_to_base.actInv(self.data.oMf[i]).homogeneous
                for i, frame in enumerate(self.model.frames) if frame.type == pin.FrameType.BODY}
