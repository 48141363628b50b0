"""``fedvla bench ik``: the IK solver on the UR3 model — time per solve while tracking (warm
start from the previous solution, targets a small step apart, as the runtime uses it) and
convergence on random reachable targets from the home pose. Figures are printed, never asserted.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from fedvla.robot.ik import IkConfig, IkResult, IkSolver
from fedvla.robot.kinematics import HOME_Q, ArmKinematics


@dataclasses.dataclass
class IkFigures:
    setting: str
    solves: int
    converged: int
    milliseconds: list[float]
    iterations: list[int]

    def add(self, result: IkResult, milliseconds: float) -> None:
        self.solves += 1
        self.converged += result.converged
        self.milliseconds.append(milliseconds)
        self.iterations.append(result.iterations)

    @property
    def rate(self) -> float:
        return self.converged / self.solves

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.milliseconds, q))


def _timed(solver: IkSolver, target, seed: np.ndarray):
    start = time.perf_counter()
    result = solver.solve(target, seed)
    return result, (time.perf_counter() - start) * 1e3


def bench_ik(*, targets: int = 500, tracking_steps: int = 2000, step_rad: float = 0.01, seed: int = 0,
             config: IkConfig | None = None) -> list[IkFigures]:
    kinematics = ArmKinematics()
    solver = IkSolver(kinematics, config)
    rng = np.random.default_rng(seed)
    lower, upper = np.maximum(kinematics.limits.lower, -np.pi), np.minimum(kinematics.limits.upper, np.pi)
    home = np.array(HOME_Q)
    # Tracking: a random walk in joint space from home (the policy's targets move a little per step).
    tracking = IkFigures("tracking (warm start)", 0, 0, [], [])
    q_true, q = home.copy(), home.copy()
    for _ in range(tracking_steps):
        q_true = np.clip(q_true + rng.normal(0.0, step_rad, 6), lower, upper)
        result, ms = _timed(solver, kinematics.fk(q_true), q)
        tracking.add(result, ms)
        q = result.q if result.converged else q_true  # keep walking from a valid pose
    cold = IkFigures("random reachable from home", 0, 0, [], [])
    for _ in range(targets):
        cold.add(*_timed(solver, kinematics.fk(rng.uniform(lower, upper)), home))
    return [tracking, cold]
