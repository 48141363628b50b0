"""Homomorphic aggregation of skills with TenSEAL's CKKS (the paper uses lattice HE, N2HE; CKKS is
the lattice scheme TenSEAL offers for real vectors): the skill federation's ``skill_encryption:
ckks`` and ``fedvla bench skills``.

Threat model: the **robots hold the secret key**. The fleet's operator makes a key pair once
(:func:`write_keys`, ``fedvla federation skill-keys``: ``secret.ckks`` and ``public.ckks``) and gives both
files to every robot over a channel the server cannot read; the **server gets ``public.ckks``
only**: it can add ciphertexts, never decrypt (a context holding the secret key is refused). Per
round and skill, each robot that trained the skill encrypts its sample-weighted weights ``n_c·θ_c``
and sends ``n_c`` in the clear; the server adds the ciphertexts without decrypting and publishes
the sum with ``Σ n_c``; robots decrypt and divide, which is the library's weights plus the
sample-weighted mean of the robots' deltas, the plaintext aggregate (within CKKS's precision,
about 1e-7 relative at scale 2^40). The server learns which robots trained which skill, their
sample counts and tasks, and nothing of the weights; it also cannot check them (NaN, norm):
an encrypted upload is checked for its routing, signature, size and ciphertext count only, so a
malicious robot can poison the skills it trains (a ciphertext under another key of the same
parameters is indistinguishable too, and corrupts the sum the same way). A robot learns the
aggregate, as in plaintext.

Vectors are encrypted in ciphertexts of at most :data:`SLOTS` values each (the ring's slot
count; one ciphertext per slice, so no operation TenSEAL disables for oversize vectors is ever
needed), packed into one byte string: ``count`` then ``length, bytes`` per ciphertext (uint32).
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

POLY_MODULUS_DEGREE = 8192  # 4096 slots per ciphertext, 128-bit security with these moduli
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
GLOBAL_SCALE = 2**40
SLOTS = POLY_MODULUS_DEGREE // 2
SECRET_KEY_FILE = "secret.ckks"  # robots only
PUBLIC_KEY_FILE = "public.ckks"  # the server's copy (robots keep one too, for the fingerprint)
# An encrypted skill state (what the library keeps and the transport carries in ckks mode): the
# packed ciphertexts as uint8, and beside a published aggregate, its Σ n_c and parameter count.
CIPHERTEXT = "ckks"
SAMPLES = "num_samples"
PARAMETERS = "parameters"


class EncryptionError(ValueError):
    """A key or a ciphertext that cannot be used as asked (the message names the fix)."""


def make_client_context() -> bytes:
    """A fresh CKKS context with its secret key (the robots' copy), serialised."""
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


def fingerprint(public: bytes) -> str:
    """What the server's manifest names its key by, and a robot checks its own ``public.ckks``
    against: a robot with another fleet's key would decrypt garbage without an error."""
    return hashlib.sha256(public).hexdigest()


def write_keys(directory: str | Path) -> tuple[Path, Path]:
    """A fleet's key pair in ``directory``: ``secret.ckks`` (robots) and ``public.ckks`` (server).
    Refuses to overwrite a pair: skills encrypted under it would become unreadable."""
    directory = Path(directory)
    secret_path, public_path = directory / SECRET_KEY_FILE, directory / PUBLIC_KEY_FILE
    if secret_path.exists() or public_path.exists():
        raise EncryptionError(f"{directory} already holds a key pair (a new one would make the skills encrypted "
                              "under it unreadable)")
    directory.mkdir(parents=True, exist_ok=True)
    secret = make_client_context()
    public_path.write_bytes(public_context(secret))
    secret_path.touch(mode=0o600)  # readable by its owner only, before the key is in it
    secret_path.write_bytes(secret)
    return secret_path, public_path


def read_server_key(directory: str | Path) -> bytes:
    """The server's public context from a key directory; refused if it holds the secret key."""
    import tenseal as ts

    path = Path(directory) / PUBLIC_KEY_FILE
    if not path.is_file():
        raise EncryptionError(f"no {PUBLIC_KEY_FILE} in {directory}: make a key pair with `fedvla federation "
                              "skill-keys DIR` and give the server DIR/public.ckks")
    public = path.read_bytes()
    if ts.context_from(public).has_secret_key():
        raise EncryptionError(f"{path} holds the secret key: the server must get the public context only "
                              "(public.ckks as `fedvla federation skill-keys` writes it)")
    return public


def read_robot_key(directory: str | Path) -> tuple[bytes, str]:
    """A robot's secret context and its key's fingerprint, from a key directory."""
    directory = Path(directory)
    missing = [name for name in (SECRET_KEY_FILE, PUBLIC_KEY_FILE) if not (directory / name).is_file()]
    if missing:
        raise EncryptionError(f"no {' or '.join(missing)} in {directory}: a robot of an encrypted skill federation "
                              "needs the fleet's key pair (both files `fedvla federation skill-keys` wrote)")
    return (directory / SECRET_KEY_FILE).read_bytes(), fingerprint((directory / PUBLIC_KEY_FILE).read_bytes())


def _flatten(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([state[name].detach().double().cpu().numpy().reshape(-1) for name in sorted(state)])


def _unflatten(flat: np.ndarray, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name in sorted(template):
        size = template[name].numel()
        out[name] = torch.from_numpy(flat[offset:offset + size].copy()).reshape(template[name].shape).to(template[name].dtype)
        offset += size
    return out


def parameter_count(template: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in template.values())


def _pack(ciphertexts: Sequence[bytes]) -> bytes:
    return struct.pack("<I", len(ciphertexts)) + b"".join(struct.pack("<I", len(c)) + c for c in ciphertexts)


def _unpack(packed: bytes) -> list[bytes]:
    try:
        (count,), offset, out = struct.unpack_from("<I", packed), 4, []
        for _ in range(count):
            (length,) = struct.unpack_from("<I", packed, offset)
            if offset + 4 + length > len(packed):
                raise struct.error("truncated")
            out.append(packed[offset + 4: offset + 4 + length])
            offset += 4 + length
    except struct.error:
        raise EncryptionError("not packed CKKS ciphertexts (truncated or malformed)") from None
    if offset != len(packed):
        raise EncryptionError(f"{len(packed) - offset} stray bytes after the packed ciphertexts")
    return out


def encrypt_vector(client_context: bytes, values: np.ndarray) -> bytes:
    import tenseal as ts

    context = ts.context_from(client_context)
    return _pack([ts.ckks_vector(context, values[start:start + SLOTS].tolist()).serialize()
                  for start in range(0, len(values), SLOTS)])


def add_vectors(server_context: bytes, packed: Sequence[bytes], length: int) -> bytes:
    """The ciphertexts of ``packed`` added slice by slice, never decrypted; each must hold
    ``length`` values (else :class:`EncryptionError`, as for one that does not deserialise)."""
    import tenseal as ts

    context = ts.context_from(server_context)
    if context.has_secret_key():
        raise EncryptionError("the server's context holds the secret key: give it public_context(...) only")
    totals = None
    for one in packed:
        vectors = _read_vectors(context, one, length)
        totals = vectors if totals is None else [t + v for t, v in zip(totals, vectors)]
    if totals is None:
        raise EncryptionError("nothing to add")
    return _pack([t.serialize() for t in totals])


def _read_vectors(context, packed: bytes, length: int) -> list:
    import tenseal as ts

    slices = _unpack(packed)
    expected = -(-length // SLOTS)
    if len(slices) != expected:
        raise EncryptionError(f"{len(slices)} ciphertexts, {expected} expected for {length} values")
    try:
        vectors = [ts.ckks_vector_from(context, s) for s in slices]
    except Exception as err:  # TenSEAL raises its own errors for junk
        raise EncryptionError(f"a ciphertext does not deserialise under this key ({type(err).__name__})") from None
    sizes = [v.size() for v in vectors]
    if sizes != [min(SLOTS, length - i * SLOTS) for i in range(expected)]:
        raise EncryptionError(f"ciphertexts of {sum(sizes)} values, {length} expected")
    return vectors


def decrypt_vector(client_context: bytes, packed: bytes, length: int) -> np.ndarray:
    import tenseal as ts

    context = ts.context_from(client_context)
    if not context.has_secret_key():
        raise EncryptionError("this context has no secret key: decrypting needs the robots' secret.ckks")
    return np.concatenate([np.asarray(v.decrypt()) for v in _read_vectors(context, packed, length)])


# -- skill states (the federation's library and transport) ------------------------------------------
def is_encrypted(state: Mapping[str, torch.Tensor]) -> bool:
    return CIPHERTEXT in state


def _as_tensor(packed: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8)


def encrypt_state(client_context: bytes, state: Mapping[str, torch.Tensor], num_samples: int) -> dict[str, torch.Tensor]:
    """A robot's upload of one skill (or the router): its weights times its sample count, encrypted."""
    return {CIPHERTEXT: _as_tensor(encrypt_vector(client_context, _flatten(state) * num_samples))}


def check_encrypted_upload(server_context: bytes, state: Mapping[str, torch.Tensor], parameters: int) -> None:
    """What the server can check of an encrypted upload: one packed ciphertext for ``parameters``
    values that deserialises under its key (raises :class:`EncryptionError`)."""
    import tenseal as ts

    if set(state) != {CIPHERTEXT} or state[CIPHERTEXT].dtype != torch.uint8:
        raise EncryptionError(f"tensors {sorted(state)[:4]}: an encrypted upload holds one uint8 {CIPHERTEXT!r}")
    _read_vectors(ts.context_from(server_context), state[CIPHERTEXT].numpy().tobytes(), parameters)


def sum_states(server_context: bytes, uploads: Sequence[tuple[Mapping[str, torch.Tensor], int]],
               parameters: int) -> dict[str, torch.Tensor]:
    """The server's aggregate of one skill: the robots' ciphertexts added, with Σ n_c (the library
    publishes it as the skill's next version, still encrypted)."""
    summed = add_vectors(server_context, [state[CIPHERTEXT].numpy().tobytes() for state, _ in uploads], parameters)
    return {CIPHERTEXT: _as_tensor(summed), SAMPLES: torch.tensor([sum(n for _, n in uploads)], dtype=torch.int64),
            PARAMETERS: torch.tensor([parameters], dtype=torch.int64)}


def decrypt_state(client_context: bytes, state: Mapping[str, torch.Tensor],
                  template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A robot's view of a published aggregate: Σ n_c θ_c / Σ n_c, shaped as ``template``; a
    plaintext state (a library's first version) is returned as it is."""
    if not is_encrypted(state):
        return dict(state)
    parameters = parameter_count(template)
    if SAMPLES not in state or int(state[PARAMETERS].item()) != parameters:
        raise EncryptionError(f"the published skill holds {int(state[PARAMETERS].item()) if PARAMETERS in state else '?'}"
                              f" values, this robot's skill {parameters}")
    flat = decrypt_vector(client_context, state[CIPHERTEXT].numpy().tobytes(), parameters)
    return _unflatten(flat / float(state[SAMPLES].item()), template)


# -- one skill's deltas (fedvla bench skills) -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EncryptedDelta:
    client_id: str
    skill_id: str
    ciphertext: bytes  # packed CKKS vectors of n_c · Δ_c
    num_samples: int


def encrypt_delta(client_context: bytes, client_id: str, skill_id: str, delta: Mapping[str, torch.Tensor],
                  num_samples: int) -> EncryptedDelta:
    return EncryptedDelta(client_id, skill_id, encrypt_vector(client_context, _flatten(delta) * num_samples), num_samples)


def sum_encrypted(server_context: bytes, uploads: Sequence[EncryptedDelta], length: int) -> tuple[bytes, int]:
    """The server's work: the ciphertexts of one skill added (never decrypted), and Σ n_c."""
    return add_vectors(server_context, [u.ciphertext for u in uploads], length), sum(u.num_samples for u in uploads)


def decrypt_mean(client_context: bytes, summed: bytes, num_samples: int,
                 template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A client's view of the aggregate: Σ n_c Δ_c / Σ n_c, shaped as ``template``."""
    return _unflatten(decrypt_vector(client_context, summed, parameter_count(template)) / num_samples, template)
