"""``fedvla bench policy``: latency of a policy step and of the trunk, per feed-forward kind,
measured side by side in one process, plus experts per token after a short training run.

Besides the headline figures it measures where a step's time goes (stems, the trunk's attention
and norms, its feed-forward layers, the head), the step's floating-point work, this machine's
matrix-multiply throughput and the trunk at a training-size batch, so that a reader can tell
whether a latency target is out of reach of the implementation or of the machine.

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
    experts_per_token: float  # after the bench's training, over a batch of the data
    experts_per_token_untrained: float
    stems_ms: list[float] = dataclasses.field(default_factory=list)
    feed_forward_ms: list[float] = dataclasses.field(default_factory=list)  # the trunk's MoE layers, per call
    step_gflop: float = float("nan")  # floating-point work of one step (multiply-adds count 2)
    trunk_batch_ms: list[float] = dataclasses.field(default_factory=list)  # the trunk at the bench's large batch
    backends: list[BackendFigures] = dataclasses.field(default_factory=list)

    @property
    def stems_median_ms(self) -> float:
        return statistics.median(self.stems_ms)

    @property
    def feed_forward_median_ms(self) -> float:
        return statistics.median(self.feed_forward_ms)

    @property
    def trunk_rest_ms(self) -> float:
        """The trunk's attention, norms and the rest: what no feed-forward choice changes."""
        return self.trunk_median_ms - self.feed_forward_median_ms

    @property
    def trunk_batch_median_ms(self) -> float:
        return statistics.median(self.trunk_batch_ms)

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


def _timed_feed_forward(trunk, fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Per call of ``fn``, the milliseconds spent inside the trunk's feed-forward layers (forward
    hooks around each; their own cost is a few microseconds per layer)."""
    spent = [0.0]
    started: dict[int, float] = {}

    def before(module, _args) -> None:
        started[id(module)] = time.perf_counter()

    def after(module, _args, _out) -> None:
        spent[0] += time.perf_counter() - started[id(module)]

    hooks = [h for layer in trunk.moe_layers
             for h in (layer.register_forward_pre_hook(before), layer.register_forward_hook(after))]
    try:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            spent[0] = 0.0
            fn()
            times.append(spent[0] * 1000.0)
        return times
    finally:
        for hook in hooks:
            hook.remove()


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q·Kᵀ and the weighted sum of V: torch's flop counter has no formula for the CPU kernel."""
    batch, heads, queries, head_dim = query_shape
    return 4 * batch * heads * queries * key_shape[-2] * head_dim


def count_gflop(module: torch.nn.Module, fn: Callable[[], object]) -> float:
    """Floating-point work of ``fn`` (multiply-adds count 2), with torch's flop counter. The fused
    attention fast path is switched off while counting: the counter does not see inside it."""
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    requires_grad = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)  # the counter's module tracker wants grad_fns on inputs that require grad
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop}
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p, flag in zip(module.parameters(), requires_grad):
            p.requires_grad_(flag)
    return counter.get_total_flops() / 1e9


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """This machine's float32 matrix-multiply throughput at the current torch thread count: what
    a step's arithmetic could run at if it were all one large, well-shaped product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    ms = statistics.median(_time_ms(lambda: a @ b, repeats, 2))
    return 2 * size**3 / (ms / 1000.0) / 1e9


@dataclasses.dataclass
class BackendFigures:
    """A policy step run another way (:mod:`fedvla.model.acceleration`), on the same trained policy."""

    name: str  # a StepBackend, or an unfused form of the eager step
    step_ms: list[float]
    build_s: float = 0.0  # conversion plus the first (compiling) step
    max_abs_difference: float = 0.0  # normalised action chunk against eager
    error: str = ""  # why it could not run here (then no figures)

    @property
    def step_median_ms(self) -> float:
        return statistics.median(self.step_ms)


class _ViewByView(torch.nn.Module):
    """The image encoder called once per camera view: what the stems' one batched call replaces."""

    def __init__(self, encoder: torch.nn.Module, views: int) -> None:
        super().__init__()
        self.encoder, self.views = encoder, views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        per_view = images.unflatten(0, (-1, self.views)).unbind(1)
        return torch.stack([self.encoder(v) for v in per_view], dim=1).flatten(0, 1)


def bench_backends(policy, obs, backends, *, repeats: int, warmup: int) -> list[BackendFigures]:
    """The step of ``policy`` on each backend (each a converted copy, checked against eager within
    1e-5), and eager with its two fusions undone: camera views one encoder call each, experts one
    call each."""
    import copy

    from fedvla.model.acceleration import AccelerationError, accelerated_copy

    figures = []
    for backend in backends:
        try:
            converted, acceleration = accelerated_copy(policy, backend, obs)
        except AccelerationError as err:
            figures.append(BackendFigures(name=backend.value, step_ms=[], error=str(err)))
            continue
        with torch.inference_mode():
            step_ms = _time_ms(lambda: converted.predict_action_chunk(obs), repeats, warmup)
        figures.append(BackendFigures(name=backend.value, step_ms=step_ms, build_s=acceleration.build_s,
                                      max_abs_difference=acceleration.max_abs_difference))
    views = len(policy.config.camera_names)
    unfused = {"eager, 1 call per camera": copy.deepcopy(policy), "eager, 1 call per expert": copy.deepcopy(policy)}
    stem = unfused["eager, 1 call per camera"].stems.image
    stem.encoder = _ViewByView(stem.encoder, views)
    for layer in unfused["eager, 1 call per expert"].trunk.moe_layers:
        layer.grouped_inference = False
    with torch.inference_mode():
        reference = policy(obs)
        for name, variant in unfused.items():
            difference = float((variant(obs) - reference).abs().max())
            step_ms = _time_ms(lambda: variant.predict_action_chunk(obs), repeats, warmup)
            figures.append(BackendFigures(name=name, step_ms=step_ms, max_abs_difference=difference))
    return figures


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
               train_epochs: int, train_samples: int, seed: int = 0, batch: int = 32,
               backends: tuple = ()) -> KindFigures:
    """Time one kind, after the same short training for every kind: DGMoE's sparsity is learned,
    and how evenly a trained router spreads the tokens over the experts (which decides how
    the MoE kinds dispatch at batch 1) is learned too."""
    config = PolicyConfig.from_dict({**base.to_dict(), "feed_forward": kind.value})
    data = SquareReachDataset(config, train_samples, seed=seed)
    policy = seeded_policy(config, seed)
    policy.normalizer.fit(data.actions, data.proprio)
    untrained = experts_per_token(policy, data)
    if train_epochs:
        train_policy(policy, data, TrainConfig(epochs=train_epochs, batch_size=32, lr=1e-3, seed=seed),
                     description=f"train {kind.value}")
    policy.eval()
    obs = {k: v.unsqueeze(0) for k, v in data[0].items() if k != "actions"}

    def stems(o):
        return policy.stems(o["images"], policy.normalizer.normalize_proprio(o["proprio"]), o["language"])

    large = {k: torch.stack([data[i % len(data)][k] for i in range(batch)]) for k in obs} if batch else None
    with torch.inference_mode():
        tokens = stems(obs)
        step_ms = _time_ms(lambda: policy.predict_action_chunk(obs), repeats, warmup)
        trunk_ms = _time_ms(lambda: policy.trunk(tokens), repeats, warmup)
        stems_ms = _time_ms(lambda: stems(obs), repeats, warmup)
        feed_forward_ms = _timed_feed_forward(policy.trunk, lambda: policy.trunk(tokens), repeats, warmup)
        trunk_batch_ms: list[float] = []
        if large is not None:
            large_tokens = stems(large)
            trunk_batch_ms = _time_ms(lambda: policy.trunk(large_tokens), max(3, repeats // 5), 1)
    step_gflop = count_gflop(policy, lambda: policy.predict_action_chunk(obs))
    per_token = experts_per_token(policy, data)
    backend_figures = bench_backends(policy, obs, backends, repeats=repeats, warmup=warmup) if backends else []
    return KindFigures(kind=kind, step_ms=step_ms, trunk_ms=trunk_ms, experts_per_token=per_token,
                       experts_per_token_untrained=untrained, stems_ms=stems_ms, feed_forward_ms=feed_forward_ms,
                       step_gflop=step_gflop, trunk_batch_ms=trunk_batch_ms, backends=backend_figures)


def run_policy_bench(config: PolicyConfig, kinds: list[FeedForwardKind], *, repeats: int = 50, warmup: int = 5,
                     train_epochs: int = 10, train_samples: int = 256, batch: int = 32,
                     backends: tuple = (), backend_kinds: tuple = ()) -> list[KindFigures]:
    """Figures per feed-forward kind; the step ``backends`` are measured on the kinds in ``backend_kinds``."""
    return [bench_kind(config, kind, repeats=repeats, warmup=warmup, train_epochs=train_epochs,
                       train_samples=train_samples, batch=batch, backends=backends if kind in backend_kinds else ())
            for kind in kinds]


def trunk_ratio_floor(dgmoe: KindFigures, topk: KindFigures) -> float:
    """The lowest trunk time DGMoE ÷ top-k could reach at these sizes if the feed-forward time
    of both scaled exactly with (token, expert) pairs: the attention and norms do not shrink."""
    pair_ratio = dgmoe.experts_per_token / topk.experts_per_token
    rest = topk.trunk_rest_ms
    return (rest + pair_ratio * topk.feed_forward_median_ms) / topk.trunk_median_ms
