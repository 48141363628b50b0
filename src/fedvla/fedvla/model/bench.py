"""``fedvla bench policy``: latency of a policy step and of the trunk, per feed-forward kind,
measured side by side in one process, plus experts per token after a short training run.

Figures are printed, never asserted: timings depend on the machine.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from fedvla.data.synthetic import SquareReachDataset
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.moe import FeedForwardKind
from fedvla.model.train import TrainConfig, train_policy


@dataclasses.dataclass
class KindFigures:
    kind: FeedForwardKind
    step_ms: list[float]
    trunk_ms: list[float]
    experts_per_token: float  # after training (DGMoE), over a batch of the data
    experts_per_token_untrained: float

    @property
    def step_median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def step_p90_ms(self) -> float:
        return sorted(self.step_ms)[int(0.9 * (len(self.step_ms) - 1))]

    @property
    def trunk_median_ms(self) -> float:
        return statistics.median(self.trunk_ms)


def _time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


@torch.inference_mode()
def experts_per_token(policy, data, samples: int = 64) -> float:
    """Mean experts per token (averaged over layers) on the first ``samples`` of ``data``."""
    was_training = policy.training
    policy.eval()
    batch = {k: torch.stack([data[i][k] for i in range(min(samples, len(data)))]) for k in data[0] if k != "actions"}
    policy.reset_expert_counts()
    policy(batch)
    tokens = batch["proprio"].shape[0] * policy.config.num_tokens
    value = (policy.expert_counts().sum(1).double() / tokens).mean().item()
    policy.reset_expert_counts()
    policy.train(was_training)
    return value


def bench_kind(base: PolicyConfig, kind: FeedForwardKind, *, repeats: int, warmup: int,
               train_epochs: int, train_samples: int, seed: int = 0) -> KindFigures:
    """Time one kind. DGMoE is trained first (its sparsity, hence its speed, is learned); the
    other kinds route a fixed number of experts per token, so training would not change it."""
    config = PolicyConfig.from_dict({**base.to_dict(), "feed_forward": kind.value})
    data = SquareReachDataset(config, train_samples, seed=seed)
    policy = seeded_policy(config, seed)
    policy.normalizer.fit(data.actions, data.proprio)
    untrained = experts_per_token(policy, data)
    if train_epochs and kind is FeedForwardKind.DGMOE:
        train_policy(policy, data, TrainConfig(epochs=train_epochs, batch_size=32, lr=1e-3, seed=seed),
                     description=f"train {kind.value}")
    policy.eval()
    obs = {k: v.unsqueeze(0) for k, v in data[0].items() if k != "actions"}
    with torch.inference_mode():
        tokens = policy.stems(obs["images"], policy.normalizer.normalize_proprio(obs["proprio"]), obs["language"])
        step_ms = _time_ms(lambda: policy.predict_action_chunk(obs), repeats, warmup)
        trunk_ms = _time_ms(lambda: policy.trunk(tokens), repeats, warmup)
    return KindFigures(kind=kind, step_ms=step_ms, trunk_ms=trunk_ms, experts_per_token=experts_per_token(policy, data),
                       experts_per_token_untrained=untrained)


def run_policy_bench(config: PolicyConfig, kinds: list[FeedForwardKind], *, repeats: int = 50, warmup: int = 5,
                     train_epochs: int = 10, train_samples: int = 256) -> list[KindFigures]:
    return [bench_kind(config, kind, repeats=repeats, warmup=warmup, train_epochs=train_epochs,
                       train_samples=train_samples) for kind in kinds]
