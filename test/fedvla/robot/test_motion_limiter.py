"""The motion limiter on its own: point-to-point moves within the limits that stop at their goal."""
import numpy as np

from fedvla.robot.safety import MotionLimiter

PERIOD = 0.008
MAX_VELOCITY = np.array([1.57, 1.57, 1.57, 3.14, 3.14, 3.14])  # half a UR3's joint speeds
MAX_ACCELERATION = np.full(6, 3.0)


def run_to(goal: np.ndarray, velocity: np.ndarray | None = None, periods: int = 600):
    limiter = MotionLimiter(MAX_VELOCITY, MAX_ACCELERATION, PERIOD)
    q, v = np.zeros(6), np.zeros(6) if velocity is None else velocity
    path, velocities = [q], [v]
    for _ in range(periods):
        q, v = limiter.step(q, v, goal)
        path.append(q)
        velocities.append(v)
    return np.array(path), np.array(velocities)


def test_point_to_point_moves_stop_at_their_goal_within_the_limits() -> None:
    """From standstill to random goals of every size: no joint passes its goal (each joint braking
    at its own pace once passed it by a quarter of the move), and speed and acceleration stay
    within the limits at every period."""
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.1, 1.0):
        for _ in range(30):
            goal = rng.uniform(-0.5, 0.5, 6) * scale
            path, velocities = run_to(goal)
            np.testing.assert_allclose(path[-1], goal, atol=1e-6)
            passed = np.max((path - goal) * np.sign(goal), axis=0)
            assert np.all(passed <= 1e-4 * scale), (scale, passed)
            assert np.all(np.abs(velocities) <= MAX_VELOCITY * (1 + 1e-9))
            assert np.all(np.abs(np.diff(velocities, axis=0)) <= MAX_ACCELERATION * PERIOD * (1 + 1e-9))


def test_the_joints_move_in_a_straight_line_in_joint_space() -> None:
    """From standstill, the setpoints stay on the segment from start to goal."""
    goal = np.array([0.4, -0.1, 0.05, 0.3, -0.2, 0.01])
    path, _ = run_to(goal)
    fractions = path @ goal / (goal @ goal)
    np.testing.assert_allclose(path, np.outer(fractions, goal), atol=1e-9)
    assert np.all(np.diff(fractions) >= -1e-12)


def test_braking_stops_where_the_stopping_point_says_within_the_limits() -> None:
    """The controller checks the limits along the braking path from each setpoint before it sends
    it: braking, repeated, must end exactly at the stopping point, on a straight line, each joint
    slowing by no more than its acceleration limit."""
    limiter = MotionLimiter(MAX_VELOCITY, MAX_ACCELERATION, PERIOD)
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.uniform(-1, 1, 6)
        v = rng.uniform(-1, 1, 6) * MAX_VELOCITY * rng.uniform(0.001, 1)
        stop = limiter.stopping_point(q, v)
        path, speeds = [q], [v]
        while np.any(speeds[-1] != 0):
            q_next, v_next = limiter.brake(path[-1], speeds[-1])
            path.append(q_next)
            speeds.append(v_next)
            np.testing.assert_allclose(limiter.stopping_point(q_next, v_next), stop, atol=1e-12)
        np.testing.assert_allclose(path[-1], stop, atol=1e-12)
        assert np.all(np.abs(np.diff(speeds, axis=0)) <= MAX_ACCELERATION * PERIOD * (1 + 1e-9))
        along = (np.array(path) - path[0]) @ v / (v @ v)
        np.testing.assert_allclose(np.array(path), path[0] + np.outer(along, v), atol=1e-12)
    np.testing.assert_array_equal(limiter.stopping_point(q, np.zeros(6)), q)
