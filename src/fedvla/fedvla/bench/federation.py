"""Federation benchmarks that print figures (``fedvla bench federation``): EDA aggregation time
as the number of clients grows, and the bytes one client sends per round.

Timings depend on the machine; nothing here asserts them.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch

from fedvla.federation.client import trunk_spec
from fedvla.federation.eda import aggregate_trunks, expert_driven_weights
from fedvla.app.federation import trunk_policy
from fedvla.federation.wire import TrunkUpdate, WireDtype, encode_update
from fedvla.model.trunk import Trunk


@dataclasses.dataclass
class AggregationFigures:
    clients: int
    parameters: int
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def synthetic_trunks(clients: int, parameters: int, layers: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``clients`` trunks of ``parameters`` fp32 values split over ``layers`` blocks (+ a final norm)."""
    per_layer = parameters // layers
    g = torch.Generator().manual_seed(seed)
    base = {f"blocks.{l}.ff.experts": torch.randn(per_layer, generator=g) for l in range(layers)}
    base["norm.weight"] = torch.randn(parameters - per_layer * layers, generator=g)
    # Clients differ by a small perturbation; generating 16 independent 200 MB tensors would
    # dominate the benchmark's own run time without changing what is measured.
    return [{k: v + 0.01 * i for k, v in base.items()} for i in range(clients)]


def bench_aggregation(parameters: int, client_counts: list[int], *, layers: int = 16, experts: int = 8,
                      repeats: int = 3) -> list[AggregationFigures]:
    figures = []
    largest = synthetic_trunks(max(client_counts), parameters, layers)
    rng = np.random.default_rng(0)
    for clients in client_counts:
        trunks = largest[:clients]
        counts = rng.integers(0, 1000, size=(clients, layers, experts))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            aggregate_trunks(trunks, expert_driven_weights(counts), Trunk.layer_of)
            times.append(time.perf_counter() - start)
        figures.append(AggregationFigures(clients=clients, parameters=parameters, seconds=times))
    return figures


@dataclasses.dataclass
class UploadSize:
    model_config: str
    model_parameters: int
    trunk_parameters: int
    full_model_fp32_bytes: int
    upload_bytes: dict[str, int]  # wire dtype → bytes of one update (trunk + counts + header)

    def saving(self, dtype: str) -> float:
        return 1.0 - self.upload_bytes[dtype] / self.full_model_fp32_bytes


def upload_size(model_config: str, proprio_dim: int = 7, action_dim: int = 7) -> UploadSize:
    """Bytes one client uploads per round (trunk only, each wire dtype) vs the whole fp32 model."""
    policy = trunk_policy(model_config, 0, proprio_dim=proprio_dim, action_dim=action_dim)  # UR3-like sizes
    spec = trunk_spec(policy)
    counts = torch.zeros(spec.num_layers, spec.num_experts, dtype=torch.int64)
    update = TrunkUpdate(client_id="robot_a", round=0, trunk=policy.trunk.state_dict(), expert_counts=counts,
                         num_samples=1)
    model_parameters = sum(p.numel() for p in policy.parameters())
    return UploadSize(model_config=model_config, model_parameters=model_parameters,
                      trunk_parameters=spec.num_parameters, full_model_fp32_bytes=4 * model_parameters,
                      upload_bytes={d.value: len(encode_update(update, spec, d, base=update.trunk)) for d in WireDtype})


@dataclasses.dataclass
class SecureRoundFigures:
    clients: int
    dropped: int
    trunk_parameters: int
    plaintext_s: float  # EDA weights + weighted sum of the float trunks
    client_s: float  # median over clients: keys, shares, weighting + masking, unmasking
    server_s: float  # routing, checks, unmasking (incl. the dropped clients' pairwise masks)
    upload_bytes: int  # one masked trunk (uint64 per parameter)
    plaintext_upload_bytes: int  # one float32 trunk
    max_error: float  # |secure - plaintext EDA| over the trunk
    num_layers: int = 0
    num_experts: int = 0


def bench_secure_aggregation(model_config: str, client_counts: list[int], *, dropped: int = 1,
                             proprio_dim: int = 7, action_dim: int = 7) -> list[SecureRoundFigures]:
    """Per-round cost of secure EDA against plaintext EDA with a real trunk (``model_config``):
    ``dropped`` clients share keys and then vanish before uploading."""
    from fedvla.federation.secagg import simulate_round, weighted_trunk_vector

    policy = trunk_policy(model_config, 0, proprio_dim=proprio_dim, action_dim=action_dim)
    spec = trunk_spec(policy)
    base = {k: v.float() for k, v in policy.trunk.state_dict().items() if v.is_floating_point()}
    parameters = sum(v.numel() for v in base.values())
    rng = np.random.default_rng(0)
    figures = []
    for clients in client_counts:
        names = [f"robot_{i:02d}" for i in range(clients)]
        trunks = [{k: v + 0.01 * i for k, v in base.items()} for i in range(clients)]
        counts = rng.integers(0, 1000, size=(clients, spec.num_layers, spec.num_experts))
        survivors = clients - dropped
        start = time.perf_counter()
        weights = expert_driven_weights(counts[:survivors])
        plain = aggregate_trunks(trunks[:survivors], weights, Trunk.layer_of)
        plaintext_s = time.perf_counter() - start
        # Weights are computed from the counts before the masked round; the dropped clients get a
        # zero weight vector here (they would have been weighted had they uploaded).
        columns = np.zeros((spec.num_layers, clients))
        columns[:, :survivors] = weights
        inputs = {}
        weighting_s = {}
        for i, name in enumerate(names):
            t = time.perf_counter()
            inputs[name] = weighted_trunk_vector(trunks[i], columns[:, i], columns.mean(axis=0)[i], Trunk.layer_of)
            weighting_s[name] = time.perf_counter() - t
        threshold = clients // 2 + 1
        result = simulate_round(inputs, threshold, drop_before_upload=names[survivors:])
        flat_plain = np.concatenate([plain[k].double().numpy().reshape(-1) for k in base])
        figures.append(SecureRoundFigures(
            clients=clients, dropped=dropped, trunk_parameters=parameters, plaintext_s=plaintext_s,
            client_s=statistics.median(result.client_seconds[n] + weighting_s[n] for n in names[:survivors]),
            server_s=result.server_seconds, upload_bytes=8 * parameters, plaintext_upload_bytes=4 * parameters,
            max_error=float(np.abs(result.total - flat_plain).max()), num_layers=spec.num_layers,
            num_experts=spec.num_experts))
    return figures


@dataclasses.dataclass
class CountPrivacyFigures:
    privacy: str
    noise_std: float
    mean_weight_error: float  # |w(reported) − w(exact)| averaged over layers, clients and trials
    max_weight_error: float


def bench_count_privacy(num_layers: int, num_experts: int, clients: int, noise_levels: list[float], *,
                        trials: int = 200, seed: int = 0) -> list[CountPrivacyFigures]:
    """How far each ``count_privacy`` setting moves the EDA weights. Counts are non-iid like the
    study's: each client concentrates its tokens on its own few experts (Dirichlet, α = 0.3)."""
    from fedvla.federation.client import CountPrivacy, private_counts

    rng = np.random.default_rng(seed)
    settings = [(CountPrivacy.NORMALIZED, 0.0)] + [(CountPrivacy.NOISY, s) for s in noise_levels]
    errors: dict[tuple, list[np.ndarray]] = {key: [] for key in settings}
    for _ in range(trials):
        shares = rng.dirichlet(np.full(num_experts, 0.3), size=(clients, num_layers))
        counts = np.round(shares * rng.integers(1_000, 100_000, size=(clients, 1, 1)))
        exact = expert_driven_weights(counts)
        for privacy, std in settings:
            reported = np.stack([private_counts(c, privacy, std, rng) for c in counts])
            errors[(privacy, std)].append(np.abs(expert_driven_weights(reported) - exact))
    return [CountPrivacyFigures(privacy=p.value, noise_std=std, mean_weight_error=float(np.mean(errors[(p, std)])),
                                max_weight_error=float(np.max(errors[(p, std)]))) for p, std in settings]
