"""``fedvla bench posture``: the IK posture prior learned from demonstrations (GMR,
:mod:`fedvla.robot.posture_prior`) against the fixed one (the home pose), on demonstrations the
prior never saw.

The demonstrations' joints (the first six proprio dimensions: the arm) give the tool poses; the
prior is fitted on the training episodes' (tool position, joints); for every step of the held-out
episodes IK solves the step's tool pose twice, seeded and pulled by the home pose, and by the GMR
posture for its tool position. Per prior: how far the solution lies from the demonstrated joints
(naturalness), how often IK converged without restarts, and its iterations. Printed, never asserted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class PostureFigures:
    prior: str
    distance_rad: np.ndarray  # per held-out step: |q_ik - q_demo|
    converged: float
    iterations_mean: float


def demonstration_postures(datasets: list[Path]) -> list[np.ndarray]:
    """Per episode, the arm's joints at every step (T, 6)."""
    from safetensors.numpy import load_file

    from fedvla.data.episodes import load_meta

    episodes = []
    for dataset in datasets:
        meta = load_meta(dataset)
        for info in meta.episodes:
            episodes.append(load_file(str(Path(dataset) / info.file))["proprio"][:, :6].astype(np.float64))
    return episodes


def posture_figures(episodes: list[np.ndarray], held_out_every: int = 5, components: int = 6,
                    steps_per_episode: int = 10) -> list[PostureFigures]:
    from fedvla.robot.ik import IkConfig, IkSolver
    from fedvla.robot.kinematics import HOME_Q, ArmKinematics
    from fedvla.robot.posture_prior import PosturePrior, tool_context

    kinematics = ArmKinematics()
    train = [e for i, e in enumerate(episodes) if i % held_out_every]
    test = [e for i, e in enumerate(episodes) if not i % held_out_every]
    postures = np.concatenate(train)
    prior = PosturePrior(components=components).fit([tool_context(kinematics, q) for q in postures], postures)
    solver = IkSolver(kinematics, IkConfig(restarts=0))
    home = np.array(HOME_Q)
    results = {"fixed (home)": [], "GMR from demonstrations": []}
    for episode in test:
        for q in episode[np.linspace(0, len(episode) - 1, steps_per_episode).astype(int)]:
            target = kinematics.fk(q)
            guess = prior.predict(tool_context(kinematics, q))
            for name, start in (("fixed (home)", home), ("GMR from demonstrations", guess)):
                solved = solver.solve(target, start, start)
                results[name].append((np.linalg.norm(solved.q - q), solved.converged, solved.iterations))
    return [PostureFigures(name, np.array([d for d, _, _ in rows]), float(np.mean([c for _, c, _ in rows])),
                           float(np.mean([i for _, _, i in rows]))) for name, rows in results.items()]


def plot(figures: list[PostureFigures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    top = max(float(f.distance_rad.max()) for f in figures) or 1.0
    bins = np.linspace(0, top, 30)
    for f in figures:
        axes.hist(f.distance_rad, bins=bins, alpha=0.6, label=f"{f.prior} (median {np.median(f.distance_rad):.3f} rad)")
    axes.set(xlabel="IK solution's distance to the demonstrated joints (rad)", ylabel="held-out steps",
             title="IK posture prior: fixed vs learned from demonstrations")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
