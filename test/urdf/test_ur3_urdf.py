"""urdf/ur3_gripper.urdf: loads in Pinocchio, matches the published UR3 DH kinematics, and its
limits and frames are what the robot runtime relies on."""
from pathlib import Path

import numpy as np
import pytest

pin = pytest.importorskip("pinocchio")

URDF = Path(__file__).resolve().parents[2] / "urdf" / "ur3_gripper.urdf"
ARM_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint"]
# Published UR3 DH parameters (standard DH): a, d, alpha per joint.
DH_A = [0.0, -0.24365, -0.21325, 0.0, 0.0, 0.0]
DH_D = [0.1519, 0.0, 0.0, 0.11235, 0.08535, 0.0819]
DH_ALPHA = [np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0]


def dh_forward_kinematics(q: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    for theta, a, d, alpha in zip(q, DH_A, DH_D, DH_ALPHA):
        ct, st, ca, sa = np.cos(theta), np.sin(theta), np.cos(alpha), np.sin(alpha)
        T = T @ np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st],
                          [0, sa, ca, d], [0, 0, 0, 1]])
    return T


@pytest.fixture(scope="module")
def robot():
    model = pin.buildModelFromUrdf(str(URDF))
    return model, model.createData()


def _frame(model, data, name: str) -> pin.SE3:
    return data.oMf[model.getFrameId(name)]


def test_tool0_matches_the_dh_model(robot) -> None:
    model, data = robot
    rng = np.random.default_rng(0)
    for _ in range(50):
        q_arm = rng.uniform(-np.pi, np.pi, 6)
        q = pin.neutral(model)
        for name, value in zip(ARM_JOINTS, q_arm):
            q[model.joints[model.getJointId(name)].idx_q] = value
        pin.forwardKinematics(model, data, q)
        pin.updateFramePlacements(model, data)
        base_to_tool0 = _frame(model, data, "base").actInv(_frame(model, data, "tool0"))
        np.testing.assert_allclose(base_to_tool0.homogeneous, dh_forward_kinematics(q_arm), atol=1e-9)


def test_limits_are_the_published_ones(robot) -> None:
    model, _ = robot
    for name in ARM_JOINTS:
        idx = model.joints[model.getJointId(name)].idx_q
        expected_range = np.pi if name == "elbow_joint" else 2 * np.pi
        assert model.upperPositionLimit[idx] == pytest.approx(expected_range)
        assert model.lowerPositionLimit[idx] == pytest.approx(-expected_range)
        idx_v = model.joints[model.getJointId(name)].idx_v
        expected_speed = 2 * np.pi if name.startswith("wrist") else np.pi
        assert model.velocityLimit[idx_v] == pytest.approx(expected_speed)
    gripper = model.joints[model.getJointId("gripper_finger_joint")].idx_q
    assert (model.lowerPositionLimit[gripper], model.upperPositionLimit[gripper]) == pytest.approx((0.0, 0.0425))


def test_camera_looks_at_the_workspace(robot) -> None:
    model, data = robot
    q = pin.neutral(model)
    pin.forwardKinematics(model, data, q)
    pin.updateFramePlacements(model, data)
    optical = _frame(model, data, "camera_color_optical_frame")
    view = optical.rotation[:, 2]  # optical z: the viewing direction
    to_workspace = np.array([0.3, 0.0, 0.05]) - optical.translation
    cos_angle = view @ to_workspace / np.linalg.norm(to_workspace)
    assert cos_angle > np.cos(np.deg2rad(20))
    # Image "down" (optical y) points down in the world: the camera is mounted upright.
    assert optical.rotation[2, 1] < 0


def test_frames_the_runtime_uses_exist(robot) -> None:
    model, _ = robot
    for frame in ("world", "base_link", "base", "flange", "tool0", "tcp", "camera_link", "camera_color_optical_frame"):
        assert model.existFrame(frame), frame
