"""Homomorphic aggregation of skill deltas with TenSEAL's CKKS (the paper uses lattice HE, N2HE;
CKKS is the lattice scheme TenSEAL offers for real vectors).

Threat model: the **clients hold the secret key** (one of them, or the fleet's operator, makes the
context with :func:`make_client_context` and hands it to the others over a channel the server
cannot read); the **server holds only the public context** (:func:`public_context`: it can add
ciphertexts, never decrypt). Per round and skill, each client that trained the skill encrypts
``n_c · Δ_c`` (its delta pre-weighted by its sample count, flattened in the skill's name order)
and sends its ``n_c`` in the clear; the server adds the ciphertexts without decrypting and
returns the sum with ``Σ n_c``; clients decrypt and divide. The server learns which clients
trained which skill and their sample counts, and nothing of the deltas; a client learns the
aggregate, as with plaintext aggregation. Values come back within CKKS's precision (about 1e-7
relative at scale 2^40).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch

POLY_MODULUS_DEGREE = 8192  # 4096 slots per ciphertext, 128-bit security with these moduli
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
GLOBAL_SCALE = 2**40


def make_client_context() -> bytes:
    """A fresh CKKS context with its secret key (the clients' copy), serialised."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_MODULUS_DEGREE,
                         coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    context.global_scale = GLOBAL_SCALE
    return context.serialize(save_secret_key=True)


def public_context(client_context: bytes) -> bytes:
    """The same context without the secret key: what the server gets."""
    import tenseal as ts

    context = ts.context_from(client_context)
    context.make_context_public()
    return context.serialize()


def _flatten(delta: Mapping[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([delta[name].detach().double().cpu().numpy().reshape(-1) for name in sorted(delta)])


@dataclasses.dataclass(frozen=True)
class EncryptedDelta:
    client_id: str
    skill_id: str
    ciphertext: bytes  # CKKS vector of n_c · Δ_c
    num_samples: int


def encrypt_delta(client_context: bytes, client_id: str, skill_id: str, delta: Mapping[str, torch.Tensor],
                  num_samples: int) -> EncryptedDelta:
    import tenseal as ts

    context = ts.context_from(client_context)
    vector = ts.ckks_vector(context, (_flatten(delta) * num_samples).tolist())
    return EncryptedDelta(client_id, skill_id, vector.serialize(), num_samples)


def sum_encrypted(server_context: bytes, uploads: Sequence[EncryptedDelta]) -> tuple[bytes, int]:
    """The server's work: the ciphertexts of one skill added (never decrypted), and Σ n_c."""
    import tenseal as ts

    context = ts.context_from(server_context)
    if context.has_secret_key():
        raise ValueError("the server's context holds the secret key: give it public_context(...) only")
    total = ts.ckks_vector_from(context, uploads[0].ciphertext)
    for upload in uploads[1:]:
        total += ts.ckks_vector_from(context, upload.ciphertext)
    return total.serialize(), sum(u.num_samples for u in uploads)


def decrypt_mean(client_context: bytes, summed: bytes, num_samples: int,
                 template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A client's view of the aggregate: Σ n_c Δ_c / Σ n_c, shaped as ``template``."""
    import tenseal as ts

    context = ts.context_from(client_context)
    flat = np.asarray(ts.ckks_vector_from(context, summed).decrypt()) / num_samples
    out, offset = {}, 0
    for name in sorted(template):
        size = template[name].numel()
        out[name] = torch.from_numpy(flat[offset:offset + size].copy()).reshape(template[name].shape).to(template[name].dtype)
        offset += size
    return out
