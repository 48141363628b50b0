"""The one choice of aggregation weights, for every transport: the ROS/in-process
:class:`fedvla.federation.server.FederationServer` and the Flower strategy
(:mod:`fedvla.federation.flower`) both ask an :class:`Aggregator`.

EDA (FedVLA Algorithm 2) weights each layer's trunk by how much each client's data exercised that
layer's experts; FedAvg (also the "w/o EDA" ablation) by sample counts, the same for every layer.
The formulas are in :mod:`fedvla.federation.eda`.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedvla.config import parse_enum
from fedvla.federation.eda import (NonLayerRule, aggregate_trunks, expert_driven_weights, fedavg_weights,
                                   non_layer_weights)


class Aggregation(str, enum.Enum):
    EDA = "eda"  # Expert-Driven Aggregation (FedVLA Algorithm 2)
    FEDAVG = "fedavg"  # sample-count weighted (also the "w/o EDA" ablation)


@dataclasses.dataclass
class RoundAggregate:
    """A closed round's new global trunk and the weights that made it."""

    trunk: dict[str, torch.Tensor]
    clients: list[str]  # in the column order of weights
    num_samples: list[int]
    weights: np.ndarray  # (L, C) layer weights
    largest_weight: float  # the DP sensitivity scale (Aggregator.largest_weight)


@dataclasses.dataclass(frozen=True)
class Aggregator:
    aggregation: Aggregation = Aggregation.EDA
    non_layer_rule: NonLayerRule = NonLayerRule.MEAN_OF_LAYERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregation", parse_enum(Aggregation, self.aggregation, "aggregation"))
        object.__setattr__(self, "non_layer_rule", parse_enum(NonLayerRule, self.non_layer_rule, "non_layer_rule"))

    def layer_weights(self, counts: np.ndarray | None, num_samples: Sequence[int], num_layers: int) -> np.ndarray:
        """(L, C) weights of the clients' layers, from their expert counts (C, L, K) under EDA or their
        sample counts under FedAvg (``num_layers`` rows; counts may be None then)."""
        if self.aggregation is Aggregation.EDA:
            return expert_driven_weights(np.asarray(counts))
        return np.tile(fedavg_weights(list(num_samples)), (num_layers, 1))

    def non_layer_weights(self, weights: np.ndarray, num_samples: Sequence[int]) -> np.ndarray:
        """(C,) weights of the parameters outside the MoE layers (``non_layer_rule``)."""
        return non_layer_weights(weights, list(num_samples), self.non_layer_rule)

    def combine(self, trunks: Sequence[Mapping[str, torch.Tensor]], weights: np.ndarray,
                layer_of: Callable[[str], int | None], num_samples: Sequence[int]) -> dict[str, torch.Tensor]:
        """The aggregate trunk under ``weights`` (L, C)."""
        return aggregate_trunks(trunks, weights, layer_of, num_samples=list(num_samples),
                                non_layer_rule=self.non_layer_rule)

    def aggregate(self, trunks: Sequence[Mapping[str, torch.Tensor]], counts: np.ndarray | None,
                  num_samples: Sequence[int], num_layers: int,
                  layer_of: Callable[[str], int | None]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The aggregate trunk and its (L, C) layer weights: :meth:`layer_weights`, then :meth:`combine`."""
        weights = self.layer_weights(counts, num_samples, num_layers)
        return self.combine(trunks, weights, layer_of, num_samples), weights

    def largest_weight(self, weights: np.ndarray, num_samples: Sequence[int]) -> float:
        """The largest weight any client's parameters get, in or outside the layers: the sensitivity
        of the aggregate to one clipped update, which scales the DP noise (privacy.py)."""
        return float(max(weights.max(), self.non_layer_weights(weights, num_samples).max()))
