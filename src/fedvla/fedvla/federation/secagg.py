"""Secure aggregation that keeps EDA exact: the server learns Σ_i x_i, never one client's x_i.

For EDA a client's input is its trunk with every layer already weighted,
``x_i = concat_l w_{l,i} θ^{l,i}`` (the weights come from the expert counts, computed by the
server and sent to each client before it uploads), so the sum is the EDA aggregate itself.

The protocol is SecAgg (Bonawitz et al., CCS 2017) for a server that follows the protocol but
is curious, and clients that may drop out at any step:

1. **keys** — each client publishes two X25519 public keys: ``c`` (to encrypt shares to it) and
   ``s`` (to agree pairwise mask seeds).
2. **shares** — each client draws a self-mask seed ``b_i`` and splits ``b_i`` and its ``s``
   secret key into ``threshold``-of-n Shamir shares, one per peer, each encrypted (AES-GCM under
   a key agreed with the peer's ``c``) and routed through the server, which cannot read them.
3. **masked input** — ``y_i = Q(x_i) + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)`` in the
   ring of 64-bit integers, ``Q`` the fixed-point code (``frac_bits`` fractional bits). The
   pairwise masks cancel in the sum; the self mask protects a client whose upload arrives
   after the server has declared it dropped.
4. **unmask** — every surviving client reveals, per peer, its share of ``b_j`` if ``j`` uploaded
   and its share of ``s_j``'s secret key if ``j`` dropped (never both for one peer). The server
   rebuilds the self masks of the survivors and the pairwise masks between survivors and the
   dropped, and removes them.

Threshold: any ``t`` keeps a curious server that follows the protocol blind (an honest client
never reveals both secrets of one peer); ``t > n/2`` also keeps it blind when it lies to
different clients about who dropped, which is the recommended setting.

Quantisation: ``Q(x) = round(x · 2^frac_bits)``; the aggregate is within ``n · 2^-(frac_bits+1)``
of the float sum per coordinate (n clients), and every ``|Σ x| < 2^(63 - frac_bits)``.
Masks come from ChaCha20 keystreams (``cryptography``): a single masked upload is uniform in
the ring, whatever the trunk.
"""
from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    import torch

# Shamir's field: the Mersenne prime 2^521 - 1 holds any 32-byte secret.
FIELD_PRIME = 2**521 - 1
SEED_BYTES = 32
DEFAULT_FRAC_BITS = 24


class SecAggError(ValueError):
    """A protocol message is malformed, out of turn or inconsistent: refused, never used."""


# --- primitives -------------------------------------------------------------------------------

def encode_fixed_point(values: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """float → uint64 ring elements (two's complement of round(x · 2^frac_bits))."""
    values = np.asarray(values, dtype=np.float64)
    limit = 2.0 ** (62 - frac_bits)
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) >= limit:
        raise SecAggError(f"values must be finite with |x| < {limit:g} for {frac_bits} fractional bits")
    return np.round(values * 2.0**frac_bits).astype(np.int64).view(np.uint64)


def decode_fixed_point(ring: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    return np.asarray(ring, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**frac_bits


def expand_mask(seed: bytes, length: int, context: bytes) -> np.ndarray:
    """``length`` uint64 from ChaCha20 keyed by HKDF(seed, context): the same for everyone who
    knows the seed, indistinguishable from uniform for everyone else."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedvla-secagg-mask|" + context).derive(seed)
    keystream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(8 * length))
    return np.frombuffer(keystream, dtype=np.uint64).copy()


def shamir_split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` for the holders' (non-zero, distinct) evaluation points."""
    if not 1 <= threshold <= len(holders) or len(set(holders)) != len(holders) or min(holders) < 1:
        raise SecAggError(f"cannot share {threshold}-of-{len(holders)} among points {list(holders)}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % FIELD_PRIME
        shares[x] = y
    return shares


def shamir_combine(shares: Mapping[int, int], threshold: int, length: int = SEED_BYTES) -> bytes:
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret")
    points = list(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % FIELD_PRIME
                den = den * (xi - xj) % FIELD_PRIME
        secret = (secret + yi * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    if secret >= 1 << (8 * length):  # what too few or altered shares give, but for a 2^-265 chance
        raise SecAggError("the shares are inconsistent: they do not rebuild a secret")
    return secret.to_bytes(length, "big")


def _agree(private: X25519PrivateKey, public: bytes, info: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(public)
    except ValueError as err:
        raise SecAggError(f"not an X25519 public key: {err}") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(private.exchange(peer))


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


# --- protocol ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PublicKeys:
    client_id: str
    cipher_key: bytes  # c: shares to this client are encrypted under it
    mask_key: bytes  # s: pairwise mask seeds are agreed with it


@dataclasses.dataclass(frozen=True)
class SecAggRound:
    """What every party knows of a round: its index, the participants in order, the threshold
    and the input length (the trunk's parameter count)."""

    round_index: int
    participants: tuple[str, ...]
    threshold: int
    length: int
    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if len(set(self.participants)) != len(self.participants):
            raise SecAggError("a participant is listed twice")
        if not 2 <= self.threshold <= len(self.participants):
            raise SecAggError(f"threshold {self.threshold} outside 2 ... {len(self.participants)} participants")
        if self.length < 1:
            raise SecAggError("the input length must be positive")

    def point(self, client_id: str) -> int:
        """The client's Shamir evaluation point (1-based position)."""
        return self.participants.index(client_id) + 1

    def context(self, *parts: str) -> bytes:
        return "|".join([str(self.round_index), *parts]).encode()


class SecAggClient:
    """One client's side of one round. Keys are drawn at construction (they travel with the
    client's expert counts, before the participants are known); the round's participants and
    threshold arrive with the roster (:meth:`share_keys`). Secrets live only in this object: a
    client that restarts mid-round is a dropout, which the protocol recovers from."""

    def __init__(self, client_id: str, round_index: int) -> None:
        self.id, self.round_index = client_id, round_index
        self.round: SecAggRound | None = None
        self._cipher = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._self_seed = secrets.token_bytes(SEED_BYTES)
        self._roster: dict[str, PublicKeys] = {}
        self._received: dict[str, bytes] = {}  # peer → encrypted shares it sent us
        self._own_shares: tuple[int, int] = (0, 0)

    def public_keys(self) -> PublicKeys:
        return PublicKeys(self.id, _public_bytes(self._cipher), _public_bytes(self._mask))

    def _share_key(self, peer: str, sender: str, receiver: str) -> bytes:
        info = self.round.context("share", sender, receiver)
        return _agree(self._cipher, self._roster[peer].cipher_key, info)

    def share_keys(self, round_: SecAggRound, roster: Mapping[str, PublicKeys]) -> dict[str, bytes]:
        """Step 2: encrypted shares of (b_i, s_i secret key) for every other participant."""
        if round_.round_index != self.round_index or self.id not in round_.participants:
            raise SecAggError(f"{self.id} is not a participant of round {round_.round_index}")
        if set(roster) != set(round_.participants):
            raise SecAggError("the roster does not list exactly the round's participants")
        if roster[self.id] != self.public_keys():
            raise SecAggError("the roster carries other keys for this client than it advertised")
        self.round, self._roster = round_, dict(roster)
        # Every participant holds a share, we too (as in SecAgg): t survivors can rebuild our seed.
        points = [self.round.point(p) for p in self.round.participants]
        b_shares = shamir_split(self._self_seed, self.round.threshold, points)
        s_shares = shamir_split(_private_bytes(self._mask), self.round.threshold, points)
        own = self.round.point(self.id)
        self._own_shares = (b_shares[own], s_shares[own])
        out = {}
        for peer in self.round.participants:
            if peer == self.id:
                continue
            x = self.round.point(peer)
            plain = b_shares[x].to_bytes(66, "big") + s_shares[x].to_bytes(66, "big")
            nonce = secrets.token_bytes(12)
            out[peer] = nonce + AESGCM(self._share_key(peer, self.id, peer)).encrypt(
                nonce, plain, self.round.context("share", self.id, peer))
        return out

    def receive_shares(self, encrypted: Mapping[str, bytes]) -> None:
        """The shares other clients addressed to us (still encrypted; opened when needed)."""
        self._received.update(encrypted)

    def _open(self, sender: str) -> tuple[int, int]:
        if sender == self.id:
            return self._own_shares
        blob = self._received.get(sender)
        if blob is None or len(blob) < 12 + 16:
            raise SecAggError(f"no share from {sender}")
        try:
            plain = AESGCM(self._share_key(sender, sender, self.id)).decrypt(
                blob[:12], blob[12:], self.round.context("share", sender, self.id))
        except Exception:  # InvalidTag: tampered or misrouted
            raise SecAggError(f"the share from {sender} does not authenticate") from None
        return int.from_bytes(plain[:66], "big"), int.from_bytes(plain[66:], "big")

    def _pair_seed(self, peer: str) -> bytes:
        a, b = sorted((self.id, peer))
        return _agree(self._mask, self._roster[peer].mask_key, self.round.context("pair", a, b))

    def masked_input(self, values: np.ndarray, alive: Sequence[str]) -> np.ndarray:
        """Step 3: ``values`` (the weighted trunk, flat) under the self mask and the pairwise masks
        with every ``alive`` peer (those whose shares reached us)."""
        if self.round is None:
            raise SecAggError("masked input before the roster: call share_keys first")
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size != self.round.length:
            raise SecAggError(f"input of {values.size} values, the round aggregates {self.round.length}")
        y = encode_fixed_point(values, self.round.frac_bits)
        # In place: uint64 arithmetic wraps, which is the ring's addition.
        np.add(y, expand_mask(self._self_seed, self.round.length, self.round.context("self", self.id)), out=y)
        for peer in alive:
            if peer != self.id:
                mask = expand_mask(self._pair_seed(peer), self.round.length, self.round.context("pair"))
                (np.add if self.id < peer else np.subtract)(y, mask, out=y)
        return y

    def unmask_shares(self, uploaded: Sequence[str], dropped: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Step 4: per peer, our share of its self-mask seed (it uploaded) or of its mask key (it
        dropped). A server that asks for both for one peer could unmask it: refused."""
        if self.round is None:
            raise SecAggError("unmasking before the roster: call share_keys first")
        if set(uploaded) & set(dropped):
            raise SecAggError(f"{sorted(set(uploaded) & set(dropped))} listed as both uploaded and dropped")
        out = {}
        for peer in uploaded:
            out[peer] = ("self", self._open(peer)[0])
        for peer in dropped:
            out[peer] = ("mask_key", self._open(peer)[1])
        return out


class SecAggServer:
    """Routes shares, collects masked inputs, and recovers only their sum."""

    def __init__(self, round_: SecAggRound) -> None:
        self.round = round_
        self.keys: dict[str, PublicKeys] = {}
        self.shares: dict[str, dict[str, bytes]] = {}  # receiver → sender → ciphertext
        self.share_senders: set[str] = set()
        self.masked: dict[str, np.ndarray] = {}
        self.rejected: list[tuple[str, str]] = []

    def _refuse(self, client_id: str, why: str) -> None:
        self.rejected.append((client_id, why))
        raise SecAggError(f"{client_id}: {why}")

    def register_keys(self, keys: PublicKeys) -> None:
        if keys.client_id not in self.round.participants:
            self._refuse(keys.client_id, "not a participant")
        if len(keys.cipher_key) != 32 or len(keys.mask_key) != 32:
            self._refuse(keys.client_id, "public keys must be 32-byte X25519 keys")
        self.keys[keys.client_id] = keys

    def roster(self) -> dict[str, PublicKeys]:
        missing = [p for p in self.round.participants if p not in self.keys]
        if missing:
            raise SecAggError(f"no keys from {missing} yet")
        return dict(self.keys)

    def route_shares(self, sender: str, encrypted: Mapping[str, bytes]) -> None:
        expected = set(self.round.participants) - {sender}
        if set(encrypted) != expected:
            self._refuse(sender, "shares must go to every other participant exactly once")
        for receiver, blob in encrypted.items():
            self.shares.setdefault(receiver, {})[sender] = bytes(blob)
        self.share_senders.add(sender)

    def shares_for(self, receiver: str) -> dict[str, bytes]:
        return dict(self.shares.get(receiver, {}))

    def receive_masked(self, client_id: str, masked: np.ndarray) -> None:
        if client_id not in self.share_senders:
            self._refuse(client_id, "uploaded a masked input without having shared its keys")
        if client_id in self.masked:
            self._refuse(client_id, "uploaded twice")
        array = np.asarray(masked)
        if array.dtype != np.uint64 or array.shape != (self.round.length,):
            self._refuse(client_id, f"masked input must be uint64 of shape ({self.round.length},), got "
                         f"{array.dtype} {array.shape}")
        self.masked[client_id] = array.copy()

    def aggregate(self, responses: Mapping[str, Mapping[str, tuple[str, int]]]) -> np.ndarray:
        """The float sum of the uploaded inputs, from the survivors' unmasking shares."""
        uploaded = sorted(self.masked)
        dropped = sorted(self.share_senders - set(uploaded))
        if len(responses) < self.round.threshold:
            raise SecAggError(f"{len(responses)} unmasking responses, {self.round.threshold} needed")
        length, context = self.round.length, self.round.context
        total = np.zeros(length, dtype=np.uint64)
        for client_id in uploaded:
            np.add(total, self.masked[client_id], out=total)
        for client_id in uploaded:
            seed = self._rebuild(client_id, "self", responses)
            np.subtract(total, expand_mask(seed, length, context("self", client_id)), out=total)
        for gone in dropped:
            key = X25519PrivateKey.from_private_bytes(self._rebuild(gone, "mask_key", responses))
            for client_id in uploaded:
                a, b = sorted((gone, client_id))
                mask = expand_mask(_agree(key, self.keys[client_id].mask_key, context("pair", a, b)), length,
                                   context("pair"))
                # client_id added the mask if it sorts first, else subtracted it: undo that
                (np.subtract if client_id < gone else np.add)(total, mask, out=total)
        return decode_fixed_point(total, self.round.frac_bits)

    def _rebuild(self, owner: str, kind: str, responses: Mapping[str, Mapping[str, tuple[str, int]]]) -> bytes:
        shares = {self.round.point(holder): share[1] for holder, answer in responses.items()
                  if (share := answer.get(owner)) is not None and share[0] == kind}
        return shamir_combine(shares, self.round.threshold)


# --- EDA inputs -------------------------------------------------------------------------------

def weighted_trunk_vector(trunk: Mapping[str, "torch.Tensor"], layer_weights: np.ndarray, non_layer_weight: float,
                          layer_of) -> np.ndarray:
    """A client's SecAgg input for EDA: every trunk parameter times its layer's weight
    ``w_{l,i}`` (``layer_weights`` is this client's column, (L,)), parameters outside the MoE
    layers times ``non_layer_weight``, flattened in the trunk's key order. Summed over clients it
    is :func:`fedvla.federation.eda.aggregate_trunks`' result, flattened."""
    parts = []
    for name, tensor in trunk.items():
        layer = layer_of(name)
        weight = non_layer_weight if layer is None else float(layer_weights[layer])
        parts.append(tensor.detach().double().cpu().numpy().reshape(-1) * weight)
    return np.concatenate(parts)


def vector_to_trunk(vector: np.ndarray, template: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Inverse of the flattening: tensors shaped and typed as ``template``'s."""
    import torch

    out, offset = {}, 0
    for name, tensor in template.items():
        size = tensor.numel()
        out[name] = torch.from_numpy(vector[offset:offset + size].copy()).reshape(tensor.shape).to(tensor.dtype)
        offset += size
    if offset != len(vector):
        raise SecAggError(f"the aggregate has {len(vector)} values, the trunk {offset}")
    return out


@dataclasses.dataclass
class SimulatedRound:
    total: np.ndarray  # the float sum the server recovered
    server: SecAggServer
    client_seconds: dict[str, float]  # each client's own work: keys, shares, masking, unmasking
    server_seconds: float  # routing, checks and the unmasking


def simulate_round(inputs: Mapping[str, np.ndarray], threshold: int, *, round_index: int = 0,
                   drop_before_upload: Sequence[str] = (), silent_in_unmask: Sequence[str] = (),
                   frac_bits: int = DEFAULT_FRAC_BITS) -> SimulatedRound:
    """One round with every message passed in process (tests, benchmarks): ``drop_before_upload``
    clients share their keys and then vanish; ``silent_in_unmask`` ones upload but never answer."""
    import time

    length = len(next(iter(inputs.values())))
    round_ = SecAggRound(round_index=round_index, participants=tuple(inputs), threshold=threshold, length=length,
                         frac_bits=frac_bits)
    spent = {name: 0.0 for name in inputs}
    server_s = 0.0

    def timed(name, fn, *args):
        nonlocal server_s
        start = time.perf_counter()
        result = fn(*args)
        if name is None:
            server_s += time.perf_counter() - start
        else:
            spent[name] += time.perf_counter() - start
        return result

    server = SecAggServer(round_)
    clients = {name: timed(name, SecAggClient, name, round_index) for name in inputs}
    for name, client in clients.items():
        timed(None, server.register_keys, timed(name, client.public_keys))
    roster = server.roster()
    for name, client in clients.items():
        timed(None, server.route_shares, name, timed(name, client.share_keys, round_, roster))
    for name, client in clients.items():
        client.receive_shares(server.shares_for(name))
    alive = sorted(server.share_senders)
    for name, client in clients.items():
        if name not in drop_before_upload:
            timed(None, server.receive_masked, name, timed(name, client.masked_input, inputs[name], alive))
    uploaded, dropped = sorted(server.masked), sorted(server.share_senders - set(server.masked))
    responses = {name: timed(name, client.unmask_shares, uploaded, dropped) for name, client in clients.items()
                 if name in uploaded and name not in silent_in_unmask}
    total = timed(None, server.aggregate, responses)
    return SimulatedRound(total=total, server=server, client_seconds=spent, server_seconds=server_s)
