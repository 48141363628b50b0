"""Client-level differential privacy for the federation (DP-FedAvg, McMahan et al. 2018, with EDA
weights): each client's round update ``Δ_i = θ_i − θ_global`` is clipped to L2 norm ``C`` over the
whole trunk, the server aggregates as usual and adds Gaussian noise of standard deviation
``z · C · w_max`` to every trunk coordinate, ``w_max`` the largest weight any client had in the
round (over layers, and outside them).

Why that noise: with ``‖Δ_i‖ ≤ C`` the aggregate ``θ_global + Σ_i w_{l,i} Δ_i^l`` changes by at most
``w_max · C`` in L2 when one client's data (hence its update) changes, so each round is a Gaussian
mechanism with noise multiplier ``z``; :class:`PrivacyAccountant` (opacus' RDP accountant) composes
the rounds into ``(ε, δ)``. Every client takes part in every round, so there is no subsampling
amplification (sample rate 1) — with a handful of robots, meaningful ε needs much noise.

What is protected, and from whom: each robot's demonstrations, at the level of the whole robot,
from everyone who receives a global trunk (the other robots, whoever deploys it). The weights
come from the expert counts, which this mechanism does not cover (they are sent in the clear, or
under ``count_privacy``). The server adds the noise, so it is trusted with the un-noised aggregate
(with secure aggregation it sees only that aggregate, never a client's update). In plain rounds
the server clips the updates itself; in secure rounds each client clips its own (the server cannot
see them), which assumes honest clients.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence

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
