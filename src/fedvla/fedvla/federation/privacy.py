"""Client-level differential privacy for the federation (DP-FedAvg, McMahan et al. 2018): each
client's round update ``Δ_i = θ_i − θ_global`` is clipped to L2 norm ``C`` over the whole trunk,
the server aggregates, and adds Gaussian noise of standard deviation ``z · S`` to every trunk
coordinate, ``S`` the round's L2 sensitivity; :class:`PrivacyAccountant` (opacus' RDP accountant)
composes the rounds into ``(ε, δ)``. Every client takes part in every round, so there is no
subsampling amplification (sample rate 1) — with a handful of robots, meaningful ε needs much noise.

**Neighbouring relation: replace one robot.** Two federations are neighbours when one robot's
demonstrations are replaced by any others (the participants stay the same); ε bounds what a
round's global trunk reveals about which of the two it was. The sensitivity ``S`` is the largest
L2 change of the aggregate between neighbours, and depends on the weights (:class:`DpWeights`):

* ``uniform`` (default): in DP rounds every client gets weight ``1/n`` in every layer and outside
  them, whatever its data: EDA's and FedAvg's weights are functions of the private data (expert
  counts, sample counts), so they are set aside. Only the replaced robot's term changes, by at
  most ``‖Δ_j − Δ'_j‖/n ≤ 2C/n``: ``S = 2C/n``.
* ``eda``: EDA's weights are kept. Replacing one robot changes its update *and* every weight, so
  the bound is on the aggregate itself: per group of parameters (each MoE layer, and those
  outside them) the aggregate is a convex combination of the clients' parts, so its norm is at
  most ``sqrt(Σ_groups max_i ‖Δ_i^group‖²) ≤ C·sqrt(min(n, L + 1))``, and two aggregates differ by
  at most twice that: ``S = 2C·sqrt(min(n, L + 1))``. Correct, and pessimistic: it buys EDA's
  weights with much more noise.

(The first version used ``w_max · C``, which holds only when one client's update is zeroed with
the weights held fixed; replace-one doubles it and data-dependent weights break it.)

**Noise.** Drawn per round from ``dp_noise_seed`` and the round index when the seed is set (a
study's runs are reproducible; whoever knows the seed can subtract the noise, so a deployment
leaves it unset), else from the OS.

What is protected, and from whom: each robot's demonstrations, at the level of the whole robot,
from everyone who receives a global trunk (the other robots, whoever deploys it). The expert
counts are not covered (they are sent in the clear, or under ``count_privacy``); under ``uniform``
weights they no longer steer the aggregate. The server adds the noise, so it is trusted with the
un-noised aggregate (with secure aggregation it sees only that aggregate, never a client's
update). In plain rounds the server clips the updates itself; in secure rounds each client clips
its own (the server cannot see them), which assumes honest clients.
"""
from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def update_norm(trunk: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``trunk − base`` over every parameter."""
    total = 0.0
    for name, value in trunk.items():
        total += float((value.double() - base[name].double()).pow(2).sum())
    return math.sqrt(total)


def clip_update(trunk: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """``base + Δ · min(1, C / ‖Δ‖)`` and the update's norm before clipping."""
    norm = update_norm(trunk, base)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if scale == 1.0:
        return dict(trunk), norm
    return {name: (base[name].double() + (value.double() - base[name].double()) * scale).to(value.dtype)
            for name, value in trunk.items()}, norm


class DpWeights(str, enum.Enum):
    """The client weights of a DP round (see the module docstring for the sensitivity of each)."""

    UNIFORM = "uniform"
    EDA = "eda"


def replace_one_sensitivity(clip_norm: float, participants: int, num_layers: int, weights: DpWeights) -> float:
    """The L2 sensitivity ``S`` of a round's aggregate when one robot's data is replaced."""
    if participants < 1:
        raise ValueError("a DP round needs at least one participant")
    if weights is DpWeights.UNIFORM:
        return 2.0 * clip_norm / participants
    return 2.0 * clip_norm * math.sqrt(min(participants, num_layers + 1))


def uniform_weights(participants: int, num_layers: int) -> np.ndarray:
    """(L, n) weights 1/n: a DP round's data-independent weights."""
    return np.full((num_layers, participants), 1.0 / participants)


def round_noise_generator(seed: int, round_index: int) -> torch.Generator:
    """The DP noise of round ``round_index``: from ``seed`` when it is >= 0 (reproducible), else
    from the OS."""
    if seed < 0:
        return torch.Generator().manual_seed(secrets.randbits(63))
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index)


def add_gaussian_noise(trunk: Mapping[str, torch.Tensor], std: float,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every coordinate plus N(0, std²); the generator is seeded from the OS by default (noise that
    can be predicted protects nothing)."""
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    return {name: value + std * torch.randn(value.shape, generator=generator, dtype=value.dtype)
            for name, value in trunk.items()}


class PrivacyAccountant:
    """(ε, δ) of the rounds so far, by opacus' Rényi-DP accountant (sample rate 1 per round)."""

    def __init__(self, history: Sequence[Sequence[float]] = ()) -> None:
        from opacus.accountants import RDPAccountant

        self._accountant = RDPAccountant()
        self._accountant.history = [(float(z), float(q), int(n)) for z, q, n in history]

    def step(self, noise_multiplier: float) -> None:
        self._accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)

    def epsilon(self, delta: float) -> float:
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=delta))

    @property
    def history(self) -> list[list[float]]:
        return [[z, q, n] for z, q, n in self._accountant.history]
