"""An IK posture prior learned from demonstrations: Gaussian mixture regression (GMR), the skill
paper's "GMR prior" (``../shared/papers/skill-centric-fl.md``).

A Gaussian mixture (scikit-learn) is fitted on ``x = [c, q]``: a context ``c`` (by default the
tool's position in the base frame, :func:`tool_context`) and the arm's joints ``q`` of every
demonstration step. For a new target, the prior is the mixture's conditional mean

    E[q | c] = Σ_k h_k(c) (μ_q,k + Σ_qc,k Σ_cc,k⁻¹ (c − μ_c,k)),   h_k(c) ∝ π_k N(c; μ_c,k, Σ_cc,k)

a posture the demonstrator would have used to reach there. The IK solver starts from it and pulls
towards it (:meth:`fedvla.robot.ik.IkSolver.solve` ``q_seed``/``q_prior``) instead of a fixed one
(the home pose): among the joint solutions of a pose it finds the demonstrated-looking one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedvla.config import require


def tool_context(kinematics, q: np.ndarray) -> np.ndarray:
    """The default context of joints ``q``: where they put the tool (x, y, z in the base frame)."""
    return np.asarray(kinematics.fk(np.asarray(q, dtype=np.float64)).translation, dtype=np.float64)


class PosturePrior:
    def __init__(self, components: int = 6, seed: int = 0, regularization: float = 1e-5) -> None:
        require(components >= 1, "components", f"must be at least 1, got {components}")
        self.components, self.seed, self.regularization = components, seed, regularization
        self.context_dim = 0
        self._mixture = None

    def fit(self, contexts: np.ndarray, postures: np.ndarray) -> PosturePrior:
        from sklearn.mixture import GaussianMixture

        contexts, postures = np.asarray(contexts, np.float64), np.asarray(postures, np.float64)
        require(len(contexts) == len(postures) and len(contexts) >= self.components, "contexts",
                f"{len(contexts)} contexts, {len(postures)} postures for {self.components} components",
                "as many of each, at least one per component")
        self.context_dim = contexts.shape[1]
        self._mixture = GaussianMixture(self.components, covariance_type="full", reg_covar=self.regularization,
                                        random_state=self.seed).fit(np.hstack([contexts, postures]))
        return self

    def predict(self, context: Sequence[float]) -> np.ndarray:
        """E[q | c] (the GMR posture) for one context."""
        if self._mixture is None:
            raise ValueError("fit the posture prior on demonstrations first")
        c, d = np.asarray(context, np.float64), self.context_dim
        means, covariances, weights = self._mixture.means_, self._mixture.covariances_, self._mixture.weights_
        log_h = np.array([np.log(w) + _log_normal(c, m[:d], s[:d, :d]) for w, m, s in zip(weights, means, covariances)])
        h = np.exp(log_h - log_h.max())
        h /= h.sum()
        conditional = [m[d:] + s[d:, :d] @ np.linalg.solve(s[:d, :d], c - m[:d]) for m, s in zip(means, covariances)]
        return np.sum(h[:, None] * np.array(conditional), axis=0)


def _log_normal(x: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> float:
    """log N(x; mean, covariance)."""
    _, log_det = np.linalg.slogdet(covariance)
    difference = x - mean
    return -0.5 * (len(x) * np.log(2 * np.pi) + log_det + difference @ np.linalg.solve(covariance, difference))
