"""The GMR posture prior: fitted on demonstrated (tool position, joints) pairs, it predicts the
posture of a held-out demonstration far better than the fixed home posture, and IK started from it
ends at the demonstrated posture."""
import numpy as np
import pytest

from fedvla.robot.kinematics import HOME_Q, ArmKinematics
from fedvla.robot.posture_prior import PosturePrior, tool_context

pytest.importorskip("sklearn")


def _demonstrations(rng, count):
    """Postures of a demonstrator who reaches with the elbow up and the wrist turned with the base."""
    a, b = rng.uniform(-0.6, 0.6, count), rng.uniform(-0.4, 0.3, count)
    return np.array(HOME_Q)[None] + np.stack([a, b, -1.2 * b, 0.5 * b, 0 * a, 0.8 * a], axis=1)


def test_gmr_predicts_demonstrated_postures_and_ik_from_it_finds_them() -> None:
    from fedvla.robot.ik import IkConfig, IkSolver

    kinematics = ArmKinematics()
    rng = np.random.default_rng(0)
    train, held_out = _demonstrations(rng, 300), _demonstrations(rng, 20)
    prior = PosturePrior(components=4).fit([tool_context(kinematics, q) for q in train], train)
    predicted = np.array([prior.predict(tool_context(kinematics, q)) for q in held_out])
    gmr_error = np.linalg.norm(predicted - held_out, axis=1)
    home_error = np.linalg.norm(np.array(HOME_Q)[None] - held_out, axis=1)
    assert gmr_error.mean() < 0.25 * home_error.mean()
    solver = IkSolver(kinematics, IkConfig(restarts=0))
    from_gmr, from_home = [], []
    for q, guess in zip(held_out, predicted):
        target = kinematics.fk(q)
        gmr = solver.solve(target, guess, guess)
        home = solver.solve(target, np.array(HOME_Q), np.array(HOME_Q))
        assert gmr.converged
        from_gmr.append((np.linalg.norm(gmr.q - q), gmr.iterations))
        from_home.append((np.linalg.norm(home.q - q), home.iterations, home.converged))
    assert np.mean([d for d, _ in from_gmr]) < 1e-2  # the demonstrated posture itself
    assert np.mean([i for _, i in from_gmr]) < np.mean([i for _, i, _ in from_home])


def test_an_unfitted_or_underfed_prior_says_so() -> None:
    from fedvla.config import ConfigError

    with pytest.raises(ValueError, match="fit the posture prior"):
        PosturePrior().predict([0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="contexts"):
        PosturePrior(components=5).fit(np.zeros((3, 3)), np.zeros((3, 6)))


def test_the_posture_bench_compares_both_priors_on_held_out_episodes(tmp_path) -> None:
    from fedvla.bench.posture import plot, posture_figures

    rng = np.random.default_rng(1)
    episodes = [_demonstrations(rng, 12) for _ in range(10)]
    fixed, learned = posture_figures(episodes, components=3, steps_per_episode=4)
    assert (fixed.prior, learned.prior) == ("fixed (home)", "GMR from demonstrations")
    assert len(fixed.distance_rad) == len(learned.distance_rad) == 2 * 4  # episodes 0 and 5 held out
    assert learned.iterations_mean <= fixed.iterations_mean and learned.converged == 1.0
    plot([fixed, learned], tmp_path / "posture.png")
    assert (tmp_path / "posture.png").stat().st_size > 5000
