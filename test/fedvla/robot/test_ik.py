"""UR3 kinematics from the URDF and the damped-least-squares IK with posture prior."""
import numpy as np
import pytest

pin = pytest.importorskip("pinocchio")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.robot.ik import IkConfig, IkSolver  # noqa: E402
from fedvla.robot.kinematics import HOME_Q, ArmKinematics  # noqa: E402


@pytest.fixture(scope="module")
def arm():
    return ArmKinematics()


def test_the_jacobian_matches_finite_differences(arm) -> None:
    q = np.array([0.3, -1.2, 1.4, -0.9, -1.6, 0.4])
    pose, jacobian = arm.fk_and_jacobian(q)
    eps = 1e-6
    for joint in range(6):
        dq = np.zeros(6)
        dq[joint] = eps
        # LOCAL Jacobian: the twist, in the tool's own axes, of a small joint motion.
        twist = pin.log6(pose.actInv(arm.fk(q + dq))).vector / eps
        np.testing.assert_allclose(jacobian[:, joint], twist, atol=1e-5)
    assert arm.limits.lower.shape == (6,) and arm.limits.upper[2] == pytest.approx(np.pi)


def test_tracking_from_the_current_joints_converges_in_a_few_iterations(arm) -> None:
    solver = IkSolver(arm)
    rng = np.random.default_rng(1)
    q = np.array(HOME_Q)
    for _ in range(100):
        target_q = q + rng.normal(0.0, 0.02, 6)
        result = solver.solve(arm.fk(target_q), q)
        assert result.converged and result.iterations <= 5
        assert result.position_error_m <= 1e-4 and result.orientation_error_rad <= 1e-3
        np.testing.assert_allclose(result.q, target_q, atol=1e-3)  # the nearby solution, not another branch
        q = result.q


def test_random_reachable_targets_from_home_converge(arm) -> None:
    solver = IkSolver(arm)
    rng = np.random.default_rng(2)
    lower, upper = np.maximum(arm.limits.lower, -np.pi), np.minimum(arm.limits.upper, np.pi)
    results = [solver.solve(arm.fk(rng.uniform(lower, upper)), np.array(HOME_Q)) for _ in range(60)]
    assert sum(r.converged for r in results) >= 59
    for r in results:
        assert np.all(r.q >= arm.limits.lower) and np.all(r.q <= arm.limits.upper)
        if r.converged:  # what converged really reaches the target
            assert r.position_error_m <= 1e-4


def test_an_unreachable_target_is_reported_not_hidden(arm) -> None:
    target = pin.SE3(np.eye(3), np.array([1.5, 0.0, 0.3]))  # the UR3 reaches about 0.5 m
    result = IkSolver(arm, IkConfig(restarts=1)).solve(target, np.array(HOME_Q))
    assert not result.converged and result.position_error_m > 0.5
    assert np.all(np.isfinite(result.q))


def test_a_warm_start_keeps_the_arm_on_its_branch(arm) -> None:
    # A pose has up to eight joint solutions (shoulder, elbow, wrist flips): the solver keeps the one it starts near.
    q_a = np.array([0.2, -1.3, 1.5, -1.8, -1.5, 0.3])
    target = arm.fk(q_a)
    solver = IkSolver(arm, IkConfig(restarts=0))
    near_a = solver.solve(target, q_a + 0.05)
    assert near_a.converged and np.abs(near_a.q - q_a).max() < 1e-3


def test_bad_settings_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="urdf_path: .*does not exist"):
        ArmKinematics(tmp_path / "none.urdf")
    with pytest.raises(ConfigError, match="tool_frame: ur3_gripper.urdf has no frame 'tip'"):
        ArmKinematics(tool_frame="tip")
    with pytest.raises(ConfigError, match="max_iterations: must be at least 1"):
        IkConfig(max_iterations=0)
