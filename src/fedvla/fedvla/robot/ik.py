"""Inverse kinematics: damped least squares on SE(3) with a posture prior.

Solves ``q* = argmin_q ||log(FK(q)^-1 T)||^2 + posture_weight * ||q - q_prior||^2`` subject to the
joint limits, by Levenberg-Marquardt steps on the 6-D pose error (Pinocchio's ``log6`` and its
Jacobian ``Jlog6``; ``log(T^-1 FK(q))`` has the same norm and a simpler Jacobian)::

    e = log6(T^-1 FK(q)),   J_e = Jlog6(T^-1 FK(q)) J_tool(q)   (J_tool: the tool frame's LOCAL Jacobian)
    (J_e^T J_e + (w + mu) I) dq = -J_e^T e - w (q - q_prior)

with ``mu`` the LM damping (raised when a step does not lower the cost, lowered when it does) and
``q`` clamped into the limits after each step. The prior (the current joints by default) keeps the
arm in its current configuration when several solutions exist and regularises singular poses.
Its weight must stay tiny: the minimiser sits about ``w |q - q_prior| / sigma_min(J)^2`` away from
the exact solution, so ``w`` = 1e-6 already misses a 0.1 mm tolerance for a solution a few
radians from the prior; the default 1e-10 does not, and still bounds steps at singularities.

A gradient method from one seed can end in a local minimum (the elbow has to pass through the
straight-arm singularity to reach the other branch, for example): about a quarter of random
reachable targets from the home pose do. Then the solver restarts from ``restarts`` random seeds
within the limits and keeps the best result; warm-started tracking never needs to.

Convergence means the pose error is within ``position_tolerance_m`` and
``orientation_tolerance_rad``. A solve that ends without converging says so
(:attr:`IkResult.converged` False, with its error): callers must never send it as if it had.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fedvla.config import require, require_positive
from fedvla.robot.kinematics import ArmKinematics


@dataclasses.dataclass(kw_only=True)
class IkConfig:
    position_tolerance_m: float = 1e-4
    orientation_tolerance_rad: float = 1e-3
    max_iterations: int = 60
    posture_weight: float = 1e-10  # w: pull towards q_prior (see the module doc)
    initial_damping: float = 1e-3  # mu at the first step
    max_step_rad: float = 0.25  # largest joint change per iteration
    restarts: int = 10  # extra solves from random seeds when the first is stuck in a local minimum (0: none)
    seed: int = 0  # of the restart seeds (deterministic)

    def __post_init__(self) -> None:
        require_positive(self.position_tolerance_m, "position_tolerance_m")
        require_positive(self.orientation_tolerance_rad, "orientation_tolerance_rad")
        require(self.max_iterations >= 1, "max_iterations", f"must be at least 1, got {self.max_iterations}")
        require(self.posture_weight >= 0, "posture_weight", "must not be negative", "a number >= 0")
        require_positive(self.initial_damping, "initial_damping")
        require_positive(self.max_step_rad, "max_step_rad")
        require(self.restarts >= 0, "restarts", "must not be negative", "0 or more")


@dataclasses.dataclass
class IkResult:
    q: np.ndarray  # (6,) the best joints found (within limits)
    converged: bool
    position_error_m: float
    orientation_error_rad: float
    iterations: int  # over all attempts


class IkSolver:
    def __init__(self, kinematics: ArmKinematics, config: IkConfig | None = None) -> None:
        import pinocchio as pin

        self.kinematics = kinematics
        self.config = config or IkConfig()
        self._pin = pin
        self._lower, self._upper = kinematics.limits.lower, kinematics.limits.upper
        self._rng = np.random.default_rng(self.config.seed)
        # Restart seeds: anywhere in the limits, within one turn (every pose is reachable there).
        self._seed_lower, self._seed_upper = np.maximum(self._lower, -np.pi), np.minimum(self._upper, np.pi)

    def solve(self, target, q_seed: np.ndarray, q_prior: np.ndarray | None = None) -> IkResult:
        """Joints that put the tool at ``target`` (a ``pinocchio.SE3`` or 4x4 matrix in the base frame),
        starting from ``q_seed`` (warm start: the current joints), prior ``q_prior`` (default the seed)."""
        pin = self._pin
        target = target if isinstance(target, pin.SE3) else pin.SE3(np.asarray(target, dtype=np.float64))
        seed = np.clip(np.asarray(q_seed, dtype=np.float64), self._lower, self._upper)
        prior = seed if q_prior is None else np.asarray(q_prior, dtype=np.float64)
        best = self._solve_from(target, seed, prior)
        iterations = best.iterations
        for _ in range(self.config.restarts):
            if best.converged:
                break
            attempt = self._solve_from(target, self._rng.uniform(self._seed_lower, self._seed_upper), prior)
            iterations += attempt.iterations
            if attempt.converged or _error_norm(attempt) < _error_norm(best):
                best = attempt
        best.iterations = iterations
        return best

    def _solve_from(self, target, q: np.ndarray, prior: np.ndarray) -> IkResult:
        config = self.config
        weight, damping = config.posture_weight, config.initial_damping
        eye = np.eye(6)
        offset, error, jacobian = self._linearise(target, q)
        cost = error @ error + weight * float((q - prior) @ (q - prior))
        for iterations in range(config.max_iterations):
            if self._within_tolerance(*self._errors(offset)):
                return self._result(q, offset, iterations)
            gradient = jacobian.T @ error + weight * (q - prior)
            step = np.linalg.solve(jacobian.T @ jacobian + (weight + damping) * eye, -gradient)
            # Trust region: far from the target a full Gauss-Newton step leaps across the workspace
            # into another solution's basin (or a singularity); short steps follow the error down.
            largest = float(np.abs(step).max())
            if largest > config.max_step_rad:
                step *= config.max_step_rad / largest
            candidate = np.clip(q + step, self._lower, self._upper)
            candidate_offset, candidate_error, candidate_jacobian = self._linearise(target, candidate)
            candidate_cost = candidate_error @ candidate_error + weight * float((candidate - prior) @ (candidate - prior))
            if candidate_cost < cost:
                q, offset, error, jacobian, cost = candidate, candidate_offset, candidate_error, candidate_jacobian, candidate_cost
                damping = max(damping / 3.0, 1e-9)
            else:
                damping = min(damping * 5.0, 1e3)
        return self._result(q, offset, config.max_iterations)

    def _linearise(self, target, q: np.ndarray):
        """(offset = T^-1 FK(q), e = log6(offset), de/dq)."""
        pin = self._pin
        pose, jacobian = self.kinematics.fk_and_jacobian(q)
        offset = target.actInv(pose)  # the tool's pose in the target's frame
        return offset, pin.log6(offset).vector, pin.Jlog6(offset) @ jacobian

    def _errors(self, offset) -> tuple[float, float]:
        """(position error in m, orientation error in rad) of the tool relative to the target."""
        return float(np.linalg.norm(offset.translation)), float(np.linalg.norm(self._pin.log3(offset.rotation)))

    def _within_tolerance(self, position_error_m: float, orientation_error_rad: float) -> bool:
        return (position_error_m <= self.config.position_tolerance_m
                and orientation_error_rad <= self.config.orientation_tolerance_rad)

    def _result(self, q: np.ndarray, offset, iterations: int) -> IkResult:
        position, orientation = self._errors(offset)
        return IkResult(q=q.copy(), converged=self._within_tolerance(position, orientation), position_error_m=position,
                        orientation_error_rad=orientation, iterations=iterations)


def _error_norm(result: IkResult) -> float:
    return result.position_error_m + 0.1 * result.orientation_error_rad
