"""Expert-Driven Aggregation (FedVLA Algorithm 2) and FedAvg, as pure functions.

EDA, per trunk layer l, over clients i, j with expert-count vectors v_i^l (row l of V_i):

    s_ij = cos(v_i^l, v_j^l),   w_{l,i} = Σ_j s_ij / Σ_i Σ_j s_ij,   θ^l = Σ_i w_{l,i} θ^{l,i}

Choices where the paper is silent (documented, tested):

* a client whose count vector in a layer is all zero has similarity 0 to every client (itself
  included), so it gets no weight in that layer;
* a layer whose total similarity is 0 (every client's counts are zero) falls back to uniform
  weights;
* trunk parameters outside any MoE layer (the trunk's final norm) are averaged with the mean of
  the per-layer weights, ``NonLayerRule.MEAN_OF_LAYERS`` (or FedAvg sample-count weights).
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch


class NonLayerRule(str, enum.Enum):
    MEAN_OF_LAYERS = "mean_of_layers"
    SAMPLE_COUNT = "sample_count"


def expert_driven_weights(counts: np.ndarray | torch.Tensor) -> np.ndarray:
    """``counts`` (C clients, L layers, K experts), non-negative → weights (L, C), rows sum to 1."""
    v = np.asarray(counts, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"counts must have shape (clients, layers, experts), got {v.shape}")
    if (v < 0).any() or not np.isfinite(v).all():
        raise ValueError("counts must be finite and non-negative")
    clients, layers, _ = v.shape
    norms = np.linalg.norm(v, axis=2)  # (C, L)
    safe = np.where(norms > 0, norms, 1.0)
    unit = v / safe[..., None]  # zero vectors stay zero → similarity 0 with everyone
    similarity = np.einsum("ilk,jlk->lij", unit, unit)  # (L, C, C)
    row_sums = similarity.sum(axis=2)  # (L, C): Σ_j s_ij
    totals = row_sums.sum(axis=1, keepdims=True)  # (L, 1)
    uniform = np.full((layers, clients), 1.0 / clients)
    return np.where(totals > 0, row_sums / np.where(totals > 0, totals, 1.0), uniform)


def fedavg_weights(num_samples: Sequence[int]) -> np.ndarray:
    """FedAvg: weights proportional to each client's number of training samples."""
    n = np.asarray(num_samples, dtype=np.float64)
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"sample counts must be non-negative with a positive sum, got {list(num_samples)}")
    return n / n.sum()


def non_layer_weights(layer_weights: np.ndarray, num_samples: Sequence[int] | None,
                      rule: NonLayerRule) -> np.ndarray:
    """The weights (C,) of trunk parameters outside the MoE layers, by ``rule``."""
    if rule is NonLayerRule.SAMPLE_COUNT:
        if num_samples is None:
            raise ValueError("non_layer_rule sample_count needs num_samples")
        return fedavg_weights(num_samples)
    return np.asarray(layer_weights, dtype=np.float64).mean(axis=0)


def aggregate_trunks(trunks: Sequence[Mapping[str, torch.Tensor]], layer_weights: np.ndarray,
                     layer_of: Callable[[str], int | None], *, num_samples: Sequence[int] | None = None,
                     non_layer_rule: NonLayerRule = NonLayerRule.MEAN_OF_LAYERS) -> dict[str, torch.Tensor]:
    """θ^l = Σ_i w_{l,i} θ^{l,i} for every trunk parameter, with ``layer_of(name)`` its layer.

    ``layer_weights`` is (L, C); for FedAvg pass the same row for every layer.
    """
    if not trunks:
        raise ValueError("no client trunk to aggregate")
    keys = list(trunks[0])
    for i, trunk in enumerate(trunks[1:], start=1):
        if set(trunk) != set(keys):
            raise ValueError(f"client {i}'s trunk has other parameters than client 0's")
    weights = np.asarray(layer_weights, dtype=np.float64)
    if weights.shape[1] != len(trunks):
        raise ValueError(f"layer_weights has {weights.shape[1]} clients, got {len(trunks)} trunks")
    outside = non_layer_weights(weights, num_samples, non_layer_rule)
    result = {}
    for name in keys:
        layer = layer_of(name)
        w = outside if layer is None else weights[layer]
        # Accumulate client by client in float64: memory stays at one parameter's size however
        # many clients there are (stacking 16 clients × 50 M parameters would need 6 GB).
        mixed = torch.zeros(trunks[0][name].shape, dtype=torch.float64)
        for weight, trunk in zip(w.tolist(), trunks):
            mixed.add_(trunk[name], alpha=weight)
        result[name] = mixed.to(trunks[0][name].dtype)
    return result
