"""One skill-aggregation round, encrypted two ways, on the same deltas (``fedvla bench skills``, and
the skill study's record of what encrypting its rounds would cost).

* **CKKS** (:mod:`fedvla.skills.encryption`): each client encrypts its sample-weighted delta, the
  server adds ciphertexts with the public context, clients decrypt.
* **SecAgg** (:mod:`fedvla.federation.secagg`, the trunk rounds' masks): each client masks its
  sample-weighted delta in the 64-bit fixed-point ring, the server unmasks only the sum.

Per method: each client's time (mean), the server's time, the bytes a client uploads for the
skill, and the largest error of the aggregate against plaintext aggregation. Printed, never asserted.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class AggregationFigures:
    method: str
    client_s: float  # mean per client: encryption or keys, shares, masking, unmasking
    server_s: float
    upload_bytes: int  # per client, for the skill
    max_error: float  # against plaintext aggregation


def skill_round_figures(clients: int, parameters: int, seed: int = 0) -> list[AggregationFigures]:
    from fedvla.federation.secagg import simulate_round
    from fedvla.federation.secure_round import threshold_for
    from fedvla.skills.aggregation import SkillDelta, aggregate_skill_deltas
    from fedvla.skills.encryption import decrypt_mean, encrypt_delta, make_client_context, public_context, sum_encrypted

    rng = np.random.default_rng(seed)
    template = {"weights": torch.zeros(parameters, dtype=torch.float32)}
    samples = [int(n) for n in rng.integers(10, 200, clients)]
    deltas = [SkillDelta(f"robot_{i}", "skill_0", {"weights": torch.from_numpy(rng.normal(0, 0.01, parameters).astype(np.float32))},
                         n) for i, n in enumerate(samples)]
    plain = aggregate_skill_deltas(deltas)["skill_0"]["weights"].double().numpy()
    total = sum(samples)

    client_context = make_client_context()
    server_context = public_context(client_context)
    started = time.perf_counter()
    encrypted = [encrypt_delta(client_context, d.client_id, d.skill_id, d.delta, d.num_samples) for d in deltas]
    encrypt_s = (time.perf_counter() - started) / clients
    started = time.perf_counter()
    summed, _ = sum_encrypted(server_context, encrypted, parameters)
    server_s = time.perf_counter() - started
    started = time.perf_counter()
    result = decrypt_mean(client_context, summed, total, template)["weights"].double().numpy()
    decrypt_s = time.perf_counter() - started
    ckks = AggregationFigures("CKKS (TenSEAL)", encrypt_s + decrypt_s, server_s, len(encrypted[0].ciphertext),
                              float(np.abs(result - plain).max()))

    inputs = {d.client_id: d.delta["weights"].double().numpy() * (d.num_samples / total) for d in deltas}
    secure = simulate_round(inputs, threshold_for(clients, 0.6))  # the trunk rounds' default threshold
    secagg = AggregationFigures("SecAgg masks", float(np.mean(list(secure.client_seconds.values()))),
                                secure.server_seconds, parameters * 8, float(np.abs(secure.total - plain).max()))
    return [ckks, secagg]
