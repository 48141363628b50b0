"""Secure aggregation inside a federation round: the server learns the EDA aggregate, never one
client's trunk (:mod:`fedvla.federation.secagg` is the cryptography; this is the round around it).

A secure round ``r`` runs in phases; every message is HMAC-signed like every other request, and
each phase waits for the clients it expects that are still alive, up to ``phase_timeout_s``:

1. ``report`` — a client trains, then reports its expert counts ``V_i``, its sample count and
   two fresh X25519 public keys. It keeps the trained trunk to itself.
2. ``shares`` — the reporters are the round's participants. The server computes the EDA (or
   FedAvg) weights from the counts and answers each participant's ``roster`` request with every
   participant's keys, the threshold and *its own* weight column ``w_{·,i}`` (and its weight for
   parameters outside the MoE layers). Participants send Shamir shares of their secrets,
   encrypted to each peer.
3. ``masked`` — a participant fetches its ``inbox`` (the shares addressed to it and the list of
   those who shared) and uploads ``x_i = concat_l w_{l,i} θ^{l,i}`` under masks, through the
   ordinary chunked upload (a ``fedvla-masked`` blob, :func:`encode_masked`).
4. ``unmask`` — survivors answer ``unmask_request`` with, per peer, the share of its self-mask
   seed (it uploaded) or of its mask key (it dropped). With ``threshold`` answers the server
   removes the masks and holds ``Σ_i x_i``: the aggregate.

Dropouts: a participant that vanishes after the weights were fixed leaves ``Σ_{i∈U} w_{l,i} θ^{l,i}``
over the uploaders ``U``; the server divides each layer by ``Σ_{i∈U} w_{l,i}`` (it knows the
weights). That is EDA with the full round's similarity weights, renormalised over the survivors —
the documented choice; with no dropout the result is EDA exactly, up to the fixed-point bound
``n · 2^-(frac_bits+1)`` per coordinate. When fewer than ``threshold`` remain in a phase the attempt
is aborted and the round restarts at ``report`` (``attempt`` + 1); clients re-report the trunk they
already trained with new keys, so nothing is trained twice.

What the server still sees: each participant's expert counts and sample count (EDA needs them in
the clear to compute weights), and the weights. Counts reveal which experts a robot's data
exercises per layer — which skills/objects it trains on — and their total, roughly its amount of
data. Clients can hide the total for free (``count_privacy: normalized`` sends per-layer
frequencies; EDA's cosine similarity ignores scale, so the weights do not change) or also blur the
distribution (``noisy``: Gaussian noise on the frequencies; the weights move, measured by
``fedvla bench secagg``). See :class:`fedvla.federation.client.CountPrivacy`.

Persistence: the round's phase, reports, roster, encrypted shares (the server cannot read them)
and unmasking answers are part of ``state.json``; masked uploads are files. A restarted server
resumes the phase it was in; a restarted client has lost its secrets and counts as a dropout.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from fedvla.federation.secagg import PublicKeys, SecAggError, SecAggRound, SecAggServer, vector_to_trunk
from fedvla.federation.aggregator import RoundAggregate
from fedvla.federation.protocol import RejectReason
from fedvla.federation.wire import WIRE_VERSION, TrunkSpec, WireError

MASKED_FORMAT = "fedvla-masked"
MASKED_KEY = "masked"
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # a roster or inbox of 64 clients is well below


class SecurePhase(str, enum.Enum):
    REPORT = "report"
    SHARES = "shares"
    MASKED = "masked"
    UNMASK = "unmask"


class SecureOp(str, enum.Enum):
    """Requests of the secure round (the ``op`` of the ``/federation/secure`` service)."""

    REPORT = "report"  # client → counts, num_samples, keys
    ROSTER = "roster"  # ← participants, keys, threshold, this client's weights
    SHARES = "shares"  # client → encrypted shares, one per peer
    INBOX = "inbox"  # ← shares addressed to this client, who shared
    UNMASK_REQUEST = "unmask_request"  # ← who uploaded, who dropped
    UNMASK = "unmask"  # client → unmasking shares


def threshold_for(participants: int, fraction: float) -> int:
    """Shamir threshold: ``ceil(fraction · n)``, at least 2 (and at most n)."""
    return min(participants, max(2, math.ceil(fraction * participants)))


# --- masked blobs -----------------------------------------------------------------------------

def encode_masked(masked: np.ndarray, spec: TrunkSpec, client_id: str, round_index: int, attempt: int) -> bytes:
    return safetensors_save({MASKED_KEY: np.ascontiguousarray(masked, dtype=np.uint64)}, metadata={
        "format": MASKED_FORMAT, "version": WIRE_VERSION, "trunk_hash": spec.trunk_hash, "client_id": client_id,
        "round": str(round_index), "attempt": str(attempt)})


def decode_masked(blob: bytes, spec: TrunkSpec) -> tuple[dict[str, str], np.ndarray]:
    """A masked upload → (metadata, uint64 vector of the trunk's length). Raises :class:`WireError`."""
    try:
        header_length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8: 8 + header_length]).get("__metadata__") or {}
        tensors = safetensors_load(blob)
    except (SafetensorError, ValueError, AttributeError, UnicodeDecodeError) as err:
        raise WireError(RejectReason.MALFORMED, f"not a safetensors blob: {err}") from None
    if metadata.get("format") != MASKED_FORMAT:
        raise WireError(RejectReason.WRONG_FORMAT, f"format {metadata.get('format')!r}, expected {MASKED_FORMAT!r} "
                        "(this round aggregates securely: upload the masked trunk)")
    if metadata.get("version") != WIRE_VERSION:
        raise WireError(RejectReason.WRONG_VERSION, f"version {metadata.get('version')!r}, expected {WIRE_VERSION}")
    if metadata.get("trunk_hash") != spec.trunk_hash:
        raise WireError(RejectReason.WRONG_MODEL, f"trunk hash {metadata.get('trunk_hash')!r}")
    masked = tensors.get(MASKED_KEY)
    if set(tensors) != {MASKED_KEY} or masked is None:
        raise WireError(RejectReason.WRONG_PARAMETERS, f"a masked blob holds one tensor {MASKED_KEY!r}")
    if masked.dtype != np.uint64 or masked.shape != (spec.num_parameters,):
        raise WireError(RejectReason.WRONG_SHAPE, f"masked vector {masked.dtype} {masked.shape}, expected uint64 "
                        f"({spec.num_parameters},)")
    return metadata, masked


# --- payloads (small JSON documents) ------------------------------------------------------------

def dump_payload(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load_payload(data: bytes) -> dict:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError(RejectReason.TOO_LARGE, f"payload of {len(data)} bytes, at most {MAX_PAYLOAD_BYTES}")
    try:
        value = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError(RejectReason.MALFORMED, f"the payload is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise WireError(RejectReason.MALFORMED, "the payload must be a JSON object")
    return value


def _hex_bytes(value: object, what: str, length: int | None = None) -> bytes:
    try:
        out = bytes.fromhex(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WireError(RejectReason.MALFORMED, f"{what} must be hex") from None
    if length is not None and len(out) != length:
        raise WireError(RejectReason.MALFORMED, f"{what} must be {length} bytes, got {len(out)}")
    return out


def parse_report(payload: Mapping, spec: TrunkSpec, max_num_samples: int) -> dict:
    """Check a report: counts (L, K) finite and non-negative, num_samples, two 32-byte keys."""
    try:
        counts = np.asarray(payload.get("counts"), dtype=np.float64)
    except (TypeError, ValueError):
        raise WireError(RejectReason.BAD_COUNTS, "counts must be an L x K array of numbers") from None
    if counts.shape != (spec.num_layers, spec.num_experts):
        raise WireError(RejectReason.BAD_COUNTS, f"counts of shape {counts.shape}, expected "
                        f"({spec.num_layers}, {spec.num_experts})")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise WireError(RejectReason.BAD_COUNTS, "counts must be finite and non-negative")
    num_samples = payload.get("num_samples")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or not 0 < num_samples <= max_num_samples:
        raise WireError(RejectReason.BAD_NUM_SAMPLES, f"num_samples {num_samples!r} outside 1..{max_num_samples}")
    keys = [_hex_bytes(payload.get(k), k, 32).hex() for k in ("cipher_key", "mask_key")]
    return {"counts": counts.tolist(), "num_samples": num_samples, "cipher_key": keys[0], "mask_key": keys[1]}


class SecureRoundError(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason.value}: {detail}")


@dataclasses.dataclass
class SecureRound:
    """The server's state of one attempt of a secure round (persisted as :meth:`to_state`)."""

    round_index: int
    attempt: int
    length: int
    frac_bits: int
    threshold_fraction: float
    clip_norm: float = 0.0  # DP: participants clip their update to this norm before weighting (0: off)
    phase: SecurePhase = SecurePhase.REPORT
    reports: dict[str, dict] = dataclasses.field(default_factory=dict)
    participants: tuple[str, ...] = ()
    weights: list[list[float]] = dataclasses.field(default_factory=list)  # (L, C) in participants order
    non_layer_weights: list[float] = dataclasses.field(default_factory=list)  # (C,)
    unmask_answers: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    server: SecAggServer | None = None

    # -- phase 1 --------------------------------------------------------------------------------
    def report(self, client_id: str, report: dict) -> None:
        self._expect(SecurePhase.REPORT, client_id)
        if client_id in self.reports:
            raise SecureRoundError(RejectReason.DUPLICATE, f"{client_id} already reported in round "
                                   f"{self.round_index} attempt {self.attempt}")
        self.reports[client_id] = report

    def fix_participants(self, weights: np.ndarray, non_layer_weights: np.ndarray) -> None:
        """End of ``report``: the reporters take part, with these weights (L, C) and (C,)."""
        self.participants = tuple(sorted(self.reports))
        self.weights = np.asarray(weights, dtype=np.float64).tolist()
        self.non_layer_weights = np.asarray(non_layer_weights, dtype=np.float64).tolist()
        self.server = SecAggServer(self.secagg_round())
        for name in self.participants:
            info = self.reports[name]
            self.server.register_keys(PublicKeys(name, bytes.fromhex(info["cipher_key"]), bytes.fromhex(info["mask_key"])))
        self.phase = SecurePhase.SHARES

    def secagg_round(self) -> SecAggRound:
        return SecAggRound(round_index=self.round_index, participants=self.participants, threshold=self.threshold,
                           length=self.length, frac_bits=self.frac_bits)

    @property
    def threshold(self) -> int:
        return threshold_for(len(self.participants), self.threshold_fraction)

    # -- phase 2 --------------------------------------------------------------------------------
    def roster(self, client_id: str) -> dict:
        self._expect(SecurePhase.SHARES, client_id, participant=True)
        column = self.participants.index(client_id)
        return {"round": self.round_index, "attempt": self.attempt, "participants": list(self.participants),
                "threshold": self.threshold, "length": self.length, "frac_bits": self.frac_bits,
                "keys": {name: [self.reports[name]["cipher_key"], self.reports[name]["mask_key"]]
                         for name in self.participants},
                "layer_weights": [row[column] for row in self.weights], "clip_norm": self.clip_norm,
                "non_layer_weight": self.non_layer_weights[column]}

    def shares(self, client_id: str, payload: Mapping) -> None:
        self._expect(SecurePhase.SHARES, client_id, participant=True)
        encrypted = payload.get("shares")
        if not isinstance(encrypted, dict):
            raise SecureRoundError(RejectReason.MALFORMED, "shares must map each peer to a hex ciphertext")
        if client_id in self.server.share_senders:
            raise SecureRoundError(RejectReason.DUPLICATE, f"{client_id} already sent its shares")
        try:
            self.server.route_shares(client_id, {peer: _hex_bytes(blob, f"the share for {peer}")
                                                 for peer, blob in encrypted.items()})
        except SecAggError as err:
            raise SecureRoundError(RejectReason.MALFORMED, str(err)) from None

    # -- phase 3 --------------------------------------------------------------------------------
    def inbox(self, client_id: str) -> dict:
        self._expect(SecurePhase.MASKED, client_id, participant=True)
        if client_id not in self.server.share_senders:
            raise SecureRoundError(RejectReason.ROUND_CLOSED, f"{client_id} did not share its keys in time: it "
                                   "sits this round out")
        return {"alive": sorted(self.server.share_senders),
                "shares": {sender: blob.hex() for sender, blob in self.server.shares_for(client_id).items()}}

    def masked(self, client_id: str, vector: np.ndarray) -> None:
        self._expect(SecurePhase.MASKED, client_id, participant=True)
        try:
            self.server.receive_masked(client_id, vector)
        except SecAggError as err:
            reason = RejectReason.DUPLICATE if "twice" in str(err) else RejectReason.MALFORMED
            raise SecureRoundError(reason, str(err)) from None

    # -- phase 4 --------------------------------------------------------------------------------
    def unmask_request(self, client_id: str) -> dict:
        self._expect(SecurePhase.UNMASK, client_id, participant=True)
        if client_id not in self.server.masked:
            raise SecureRoundError(RejectReason.ROUND_CLOSED, f"{client_id}'s masked upload did not arrive in "
                                   "time: it sits this round out")
        return {"uploaded": self.uploaded(), "dropped": self.dropped()}

    def unmask(self, client_id: str, payload: Mapping) -> None:
        self.unmask_request(client_id)
        if client_id in self.unmask_answers:
            raise SecureRoundError(RejectReason.DUPLICATE, f"{client_id} already answered")
        answer = payload.get("shares")
        expected = {**{p: "self" for p in self.uploaded()}, **{p: "mask_key" for p in self.dropped()}}
        if not isinstance(answer, dict) or set(answer) != set(expected):
            raise SecureRoundError(RejectReason.MALFORMED, "unmasking shares must name every uploaded and every "
                                   "dropped participant once")
        parsed = {}
        for peer, share in answer.items():
            if (not isinstance(share, list) or len(share) != 2 or share[0] != expected[peer]
                    or not isinstance(share[1], str) or not share[1].isdigit() or len(share[1]) > 200):
                raise SecureRoundError(RejectReason.MALFORMED, f"the share for {peer} must be "
                                       f"[{expected[peer]!r}, decimal string]")
            parsed[peer] = [share[0], share[1]]
        self.unmask_answers[client_id] = parsed

    def uploaded(self) -> list[str]:
        return sorted(self.server.masked)

    def dropped(self) -> list[str]:
        return sorted(self.server.share_senders - set(self.server.masked))

    def aggregate(self) -> np.ndarray:
        """``Σ_{i∈U} x_i`` (float64, flat) from the unmasking answers."""
        responses = {holder: {peer: (kind, int(value)) for peer, (kind, value) in answer.items()}
                     for holder, answer in self.unmask_answers.items()}
        try:
            return self.server.aggregate(responses)
        except SecAggError as err:
            raise SecureRoundError(RejectReason.MALFORMED, f"unmasking failed: {err}") from None

    def uploader_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per layer and outside the layers, the total weight of the clients whose input is in the sum."""
        columns = [self.participants.index(c) for c in self.uploaded()]
        return (np.asarray(self.weights)[:, columns].sum(axis=1), np.asarray(self.non_layer_weights)[columns].sum())

    # -- progress -------------------------------------------------------------------------------
    def expected(self) -> list[str]:
        """Who the current phase is waiting for (before it times out)."""
        if self.phase is SecurePhase.SHARES:
            return [p for p in self.participants if p not in self.server.share_senders]
        if self.phase is SecurePhase.MASKED:
            return [p for p in sorted(self.server.share_senders) if p not in self.server.masked]
        if self.phase is SecurePhase.UNMASK:
            return [p for p in self.uploaded() if p not in self.unmask_answers]
        return []

    def done(self) -> list[str]:
        """Who has completed the current phase (shown in the status as "accepted")."""
        if self.phase is SecurePhase.REPORT:
            return sorted(self.reports)
        if self.phase is SecurePhase.SHARES:
            return sorted(self.server.share_senders)
        if self.phase is SecurePhase.MASKED:
            return self.uploaded()
        return sorted(self.unmask_answers)

    def advance(self) -> bool:
        """Move past ``shares``/``masked``; False when too few remain to go on (abort the attempt)."""
        if self.phase is SecurePhase.SHARES:
            if len(self.server.share_senders) < self.threshold:
                return False
            self.phase = SecurePhase.MASKED
        elif self.phase is SecurePhase.MASKED:
            if len(self.server.masked) < self.threshold:
                return False
            self.phase = SecurePhase.UNMASK
        return True

    def _expect(self, phase: SecurePhase, client_id: str, participant: bool = False) -> None:
        if self.phase is not phase:
            raise SecureRoundError(RejectReason.WRONG_ROUND, f"round {self.round_index} attempt {self.attempt} is "
                                   f"in phase {self.phase.value!r}, not {phase.value!r}")
        if participant and client_id not in self.participants:
            raise SecureRoundError(RejectReason.ROUND_CLOSED, f"{client_id} did not report in time for round "
                                   f"{self.round_index} attempt {self.attempt}: it sits this round out")

    # -- persistence ----------------------------------------------------------------------------
    def to_state(self) -> dict:
        state = {"round": self.round_index, "attempt": self.attempt, "phase": self.phase.value,
                 "length": self.length, "frac_bits": self.frac_bits, "threshold_fraction": self.threshold_fraction,
                 "clip_norm": self.clip_norm,
                 "reports": self.reports, "participants": list(self.participants), "weights": self.weights,
                 "non_layer_weights": self.non_layer_weights, "unmask_answers": self.unmask_answers}
        if self.server is not None:
            state["shares"] = {receiver: {sender: blob.hex() for sender, blob in by_sender.items()}
                               for receiver, by_sender in self.server.shares.items()}
            state["share_senders"] = sorted(self.server.share_senders)
            state["masked"] = sorted(self.server.masked)
        return state

    @classmethod
    def from_state(cls, state: Mapping, load_masked: Callable[[str], np.ndarray]) -> SecureRound:
        """Rebuild from :meth:`to_state`; ``load_masked(client)`` reads a persisted masked upload."""
        out = cls(round_index=int(state["round"]), attempt=int(state["attempt"]), length=int(state["length"]),
                  frac_bits=int(state["frac_bits"]), threshold_fraction=float(state["threshold_fraction"]),
                  clip_norm=float(state.get("clip_norm", 0.0)), reports=dict(state["reports"]))
        if state["phase"] != SecurePhase.REPORT.value:
            out.fix_participants(np.asarray(state["weights"]), np.asarray(state["non_layer_weights"]))
            if tuple(state["participants"]) != out.participants:
                raise ValueError("the persisted participants differ from the reporters")
            for receiver, by_sender in state.get("shares", {}).items():
                for sender, blob in by_sender.items():
                    out.server.shares.setdefault(receiver, {})[sender] = bytes.fromhex(blob)
            out.server.share_senders = set(state.get("share_senders", []))
            for client_id in state.get("masked", []):
                out.server.masked[client_id] = load_masked(client_id)
            out.unmask_answers = dict(state.get("unmask_answers", {}))
        out.phase = SecurePhase(state["phase"])
        return out


@dataclasses.dataclass
class ClientRoster:
    """A roster as one participant reads it."""

    round: SecAggRound
    keys: dict[str, PublicKeys]
    layer_weights: np.ndarray  # (L,): this client's w_{l,i}
    non_layer_weight: float
    clip_norm: float  # DP clipping of the update before weighting (0: none)


def parse_roster(roster: Mapping, spec: TrunkSpec, client_id: str) -> ClientRoster:
    """Parse a roster on the client. Raises :class:`WireError` on anything inconsistent."""
    try:
        participants = tuple(str(p) for p in roster["participants"])
        round_ = SecAggRound(round_index=int(roster["round"]), participants=participants,
                             threshold=int(roster["threshold"]), length=int(roster["length"]),
                             frac_bits=int(roster["frac_bits"]))
        keys = {name: PublicKeys(name, _hex_bytes(pair[0], "a cipher key", 32), _hex_bytes(pair[1], "a mask key", 32))
                for name, pair in roster["keys"].items()}
        layer_weights = np.asarray(roster["layer_weights"], dtype=np.float64)
        non_layer = float(roster["non_layer_weight"])
        clip_norm = float(roster.get("clip_norm", 0.0))
    except (KeyError, TypeError, ValueError, SecAggError) as err:
        raise WireError(RejectReason.MALFORMED, f"the roster is malformed: {err}") from None
    if client_id not in participants or round_.length != spec.num_parameters:
        raise WireError(RejectReason.MALFORMED, "the roster does not list this client or has another trunk length")
    if layer_weights.shape != (spec.num_layers,) or not np.isfinite(layer_weights).all() or not np.isfinite(non_layer):
        raise WireError(RejectReason.MALFORMED, f"layer weights of shape {layer_weights.shape}, expected "
                        f"({spec.num_layers},)")
    if not (np.isfinite(clip_norm) and clip_norm >= 0):
        raise WireError(RejectReason.MALFORMED, f"clip norm {clip_norm}")
    return ClientRoster(round=round_, keys=keys, layer_weights=layer_weights, non_layer_weight=non_layer,
                        clip_norm=clip_norm)


def unmask_payload(shares: Mapping[str, tuple[str, int]]) -> dict:
    return {"shares": {peer: [kind, str(value)] for peer, (kind, value) in shares.items()}}


def ordered_trunk(trunk: Mapping, spec: TrunkSpec) -> dict:
    """The trunk in the spec's parameter order (the order of the flat SecAgg vector)."""
    return {name: trunk[name] for name in spec.shapes}


def renormalize(total: np.ndarray, spec: TrunkSpec, layer_of: Callable[[str], int | None],
                layer_totals: np.ndarray, non_layer_total: float, fallback: np.ndarray) -> np.ndarray:
    """Divide each layer's block of the summed vector by the weight that went into it. A block
    no uploader weighted (all of them had zero counts in that layer) keeps ``fallback``'s values
    (the previous global trunk) instead of collapsing to zero."""
    out = total.copy()
    offset = 0
    for name, shape in spec.shapes.items():
        size = math.prod(shape)
        layer = layer_of(name)
        weight = non_layer_total if layer is None else float(layer_totals[layer])
        block = slice(offset, offset + size)
        if weight > 1e-12:
            out[block] /= weight
        else:
            out[block] = fallback[block]
        offset += size
    return out


def aggregate_trunk(secure: SecureRound, previous: Mapping, spec: TrunkSpec,
                    layer_of: Callable[[str], int | None]) -> RoundAggregate:
    """The unmasked sum of a finished round as a trunk, each block divided by the weight that
    went into it (``previous``, the round's global trunk, fills blocks no uploader weighted)."""
    total = secure.aggregate()
    layer_totals, non_layer_total = secure.uploader_weights()
    template = ordered_trunk(previous, spec)
    flat_previous = np.concatenate([t.double().numpy().reshape(-1) for t in template.values()])
    flat = renormalize(total, spec, layer_of, layer_totals, non_layer_total, flat_previous)
    clients = secure.uploaded()
    columns = [secure.participants.index(c) for c in clients]
    weights = np.asarray(secure.weights)[:, columns]
    weights = weights / np.where(layer_totals > 0, layer_totals, 1.0)[:, None]
    outside = np.asarray(secure.non_layer_weights)[columns] / max(non_layer_total, 1e-12)
    return RoundAggregate(vector_to_trunk(flat, template), clients, [secure.reports[c]["num_samples"] for c in clients],
                           weights, float(max(weights.max(), outside.max())))
