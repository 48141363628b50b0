"""The federation server: authenticated requests, carried out on the round state machine
(:mod:`.rounds`), chunked uploads (:mod:`.uploads`), aggregation (:mod:`.aggregator`) and
crash-safe persistence (:mod:`.store`). Transport-free: the ``fed_server`` ROS node (and the
in-process transport used by simulations and tests) call these methods.

Protocol, per round r (every request names the client and is HMAC-signed with its secret):

1. ``join(client, trunk_hash)`` once; the trunk hash must equal the server's.
2. ``status()`` tells the current round and the global trunk's size and sha256; clients poll it,
   which is also their heartbeat.
3. ``fetch(client, r, offset, length)`` reads the global trunk blob of round r in pieces.
4. ``begin_upload(client, r, size, sha256)`` → upload id; ``upload_chunk(id, index, bytes, crc32)``
   in any order (so a client may keep several chunks in flight); ``commit_upload(id)`` checks that
   every chunk arrived, the sha256 (which the HMAC signed), then decodes and validates the blob
   (:func:`fedvla.federation.wire.decode_update`). Accepted updates are written to disk before the
   reply, so an acknowledged update is never lost.

A round closes as :mod:`fedvla.federation.rounds` decides (quorum, every live client or the round
timeout); closing aggregates with EDA (or FedAvg), persists the new global trunk and the round
record, and opens round r+1. Uploads for a closed round are refused with ``round_closed``.

With ``secure_aggregation`` the server never sees a client's trunk: steps 4 carry a *masked*
weighted trunk, after three short exchanges on the ``secure`` request (expert counts and keys,
roster and encrypted shares, unmasking); :mod:`fedvla.federation.secure_round` describes the
phases, what the server still learns, and how dropouts are recovered.

With ``dp_noise_multiplier`` > 0 the rounds are client-level differentially private (updates
clipped to ``dp_clip_norm``, Gaussian noise on the aggregate, ε by an RDP accountant after every
round): :mod:`fedvla.federation.privacy`.

Persistence (``state_dir``): ``state.json`` (round, accepted updates with their sha256, joined
clients, per-round history, rejection counts), ``global/round_<r>.safetensors`` and
``updates/round_<r>/<client>.safetensors``. On start the server resumes from ``state.json`` and
re-verifies every file it lists; partially received uploads live only in memory (the client
restarts them).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

import numpy as np
import torch

from fedvla.config import ConfigError, parse_enum, require, require_positive
from fedvla.federation.aggregator import Aggregation, Aggregator, RoundAggregate
from fedvla.federation.eda import NonLayerRule
from fedvla.federation.privacy import (DpWeights, PrivacyAccountant, add_gaussian_noise, clip_update,
                                      replace_one_sensitivity, round_noise_generator, uniform_weights)
from fedvla.federation.protocol import RejectReason, Reply
from fedvla.federation.round_server import Blob, RoundServer, RoundServerConfig, serialized
from fedvla.federation.rounds import Decision, RoundLimits, RoundRecord, Step, secure_decision
from fedvla.federation.secagg import DEFAULT_FRAC_BITS
from fedvla.federation.secure_round import (SecureOp, SecurePhase, SecureRound, SecureRoundError,
                                            aggregate_trunk, decode_masked, dump_payload, load_payload, parse_report)
from fedvla.federation.store import ServerStore
from fedvla.federation.uploads import Upload
from fedvla.federation.wire import (TrunkSpec, TrunkUpdate, WireDtype, WireError, decode_trunk, decode_update,
                                    encode_trunk, sha256_hex)

log = logging.getLogger("fedvla.federation.server")


@dataclasses.dataclass(kw_only=True)
class FederationServerConfig(RoundServerConfig):
    aggregation: Aggregation = Aggregation.EDA
    non_layer_rule: NonLayerRule = NonLayerRule.MEAN_OF_LAYERS
    broadcast_dtype: WireDtype = WireDtype.FLOAT32  # dtype of the global trunk sent to clients
    secure_aggregation: bool = False  # SecAgg: the server learns only the aggregate (secure_round.py)
    secagg_threshold: float = 0.6  # Shamir threshold as a fraction of a round's participants (>= 2 of them)
    secagg_frac_bits: int = DEFAULT_FRAC_BITS  # fixed-point fraction bits of the masked trunks
    phase_timeout_s: float = 120.0  # secure rounds: longest wait in each phase after the training one
    dp_clip_norm: float = 0.0  # > 0: clip each client's round update to this L2 norm (privacy.py)
    dp_noise_multiplier: float = 0.0  # > 0: client-level DP, Gaussian noise z·C·w_max on the aggregate
    dp_delta: float = 1e-5  # the δ of the reported (ε, δ)
    dp_weights: DpWeights = DpWeights.UNIFORM  # DP rounds: 1/n weights (S = 2C/n) or EDA's (S = 2C·√min(n, L+1))
    dp_noise_seed: int = -1  # >= 0: the DP noise is reproducible from it (studies); -1: from the OS

    def __post_init__(self) -> None:
        super().__post_init__()
        self.aggregation = parse_enum(Aggregation, self.aggregation, "aggregation")
        self.non_layer_rule = parse_enum(NonLayerRule, self.non_layer_rule, "non_layer_rule")
        self.broadcast_dtype = parse_enum(WireDtype, self.broadcast_dtype, "broadcast_dtype")
        self.dp_weights = parse_enum(DpWeights, self.dp_weights, "dp_weights")
        require(not self.broadcast_dtype.is_delta, "broadcast_dtype", "the global trunk is sent as weights",
                "float32, bfloat16, float16")
        require(0.5 <= self.secagg_threshold <= 1.0, "secagg_threshold", f"{self.secagg_threshold} is outside "
                "0.5 ... 1", "a fraction > 0.5 keeps the server blind even if it lies about dropouts")
        require(self.dp_clip_norm >= 0 and self.dp_noise_multiplier >= 0, "dp_clip_norm",
                "dp_clip_norm and dp_noise_multiplier must be >= 0", "0 (off) or a positive value")
        require(self.dp_noise_multiplier == 0 or self.dp_clip_norm > 0, "dp_clip_norm",
                "differential privacy (dp_noise_multiplier > 0) needs a clip norm", "a positive L2 norm, e.g. the "
                "median update norm of a round without DP")
        require(0 < self.dp_delta < 1, "dp_delta", f"{self.dp_delta}", "0 < δ < 1, below 1/number of clients")
        require(8 <= self.secagg_frac_bits <= 40, "secagg_frac_bits", f"{self.secagg_frac_bits}", "8 ... 40")
        if self.secure_aggregation:
            require(self.quorum >= 2, "quorum", "secure aggregation needs at least 2 participants (one client's "
                    "sum is its own trunk)", "an integer >= 2")
        require_positive(self.phase_timeout_s, "phase_timeout_s")


class NonFiniteAggregate(RuntimeError):
    """An aggregate with NaN or infinite weights: never installed, never persisted."""


class FederationServer(RoundServer):
    """The trunk federation (FedVLA's): every public request is serialized by a lock inside the
    server, so transports may call it from any thread."""

    def __init__(self, config: FederationServerConfig, spec: TrunkSpec, initial_trunk: Mapping[str, torch.Tensor],
                 credentials: Mapping[str, str], layer_of: Callable[[str], int | None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, credentials, clock=clock)
        self.spec = spec
        self.model_hash = spec.trunk_hash
        self.aggregator = Aggregator(config.aggregation, config.non_layer_rule)
        self.layer_of = layer_of
        self.store = ServerStore(config.state_dir, spec)
        self._updates: dict[str, TrunkUpdate] = {}
        self.secure: SecureRound | None = None
        self.aborted_attempts: list[dict] = []
        self.accountant: PrivacyAccountant | None = None
        self.noise_generator: torch.Generator | None = None  # None: per round from dp_noise_seed (tests set one)
        if config.dp_noise_multiplier > 0:
            self.accountant = PrivacyAccountant()
        if not self._resume():
            self._install_global(0, {k: v.detach().float().cpu() for k, v in initial_trunk.items()})
            self._open_secure_round(0)
            self._save_state()
        self.timer.restart(clock())  # the round's clock starts once the state is loaded

    @property
    def aggregation_label(self) -> str:
        return self.config.aggregation.value

    def describe(self) -> str:
        spec = self.spec
        return (f"federation of {spec.num_parameters / 1e6:.2f} M trunk parameters ({spec.num_layers} MoE layers × "
                f"{spec.num_experts} experts, trunk hash {spec.trunk_hash}), {self.config.aggregation.value}"
                f"{' under secure aggregation' if self.config.secure_aggregation else ''}, "
                f"round {self.round}/{self.config.rounds}, quorum {self.config.quorum}, state in {self.config.state_dir}")

    @property
    def limits(self) -> RoundLimits:
        return RoundLimits(self.config.quorum, self.config.round_timeout_s, self.config.phase_timeout_s)

    # -- persistence (store.py) ------------------------------------------------------------------
    def _open_secure_round(self, attempt: int) -> None:
        if self.config.secure_aggregation and not self.finished:
            self.secure = SecureRound(round_index=self.round, attempt=attempt, length=self.spec.num_parameters,
                                      frac_bits=self.config.secagg_frac_bits,
                                      threshold_fraction=self.config.secagg_threshold,
                                      clip_norm=self.config.dp_clip_norm)
        else:
            self.secure = None

    def _install_global(self, round_index: int, trunk: dict[str, torch.Tensor]) -> None:
        bad = [name for name, t in trunk.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise NonFiniteAggregate(f"the global trunk of round {round_index} has NaN or infinite values in "
                                     f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        self.store.write_global(round_index, trunk)
        self._set_global(round_index, trunk)

    def _set_global(self, round_index: int, trunk: dict[str, torch.Tensor]) -> None:
        self.round = round_index
        self.global_trunk = trunk
        self._broadcast = encode_trunk(trunk, self.spec, round_index, self.config.broadcast_dtype)
        self._broadcast_sha256 = sha256_hex(self._broadcast)
        # What clients receive (bf16/fp16 broadcasts round): int8_delta updates are changes from it.
        # A float32 broadcast is the trunk itself: no need to decode what was just encoded.
        self._broadcast_trunk = (trunk if self.config.broadcast_dtype is WireDtype.FLOAT32
                                 else decode_trunk(self._broadcast, self.spec)[1])

    def _save_state(self) -> None:
        self.store.save_state({
            "round": self.round, "finished": self.finished, "joined": sorted(self.joined), "accepted": self.accepted,
            "history": [dataclasses.asdict(r) for r in self.history], "rejections": dict(self.rejections),
            "secure": self.secure.to_state() if self.secure is not None else None,
            "aborted_attempts": self.aborted_attempts,
            "dp_accountant": self.accountant.history if self.accountant is not None else None})

    def _resume(self) -> bool:
        state = self.store.load_state()
        if state is None:
            return False
        where = self.store.state_path
        round_index = int(state["round"])
        self._set_global(round_index, self.store.read_global(round_index))
        self.finished = bool(state["finished"])
        self.joined = set(state["joined"])
        self.history = [RoundRecord(**r) for r in state["history"]]
        self.rejections = Counter(state["rejections"])
        self.aborted_attempts = list(state.get("aborted_attempts", []))
        if self.accountant is not None:
            self.accountant = PrivacyAccountant(state.get("dp_accountant") or [])
        if bool(state.get("secure")) != (self.config.secure_aggregation and not self.finished):
            raise ConfigError("secure_aggregation", f"{where} was written with secure_aggregation "
                              f"{'on' if state.get('secure') else 'off'}", "the setting the federation started with")
        if state.get("secure"):
            secure_state = state["secure"]
            self.secure = SecureRound.from_state(secure_state, lambda client: decode_masked(self.store.read_masked(
                round_index, int(secure_state["attempt"]), client), self.spec)[1])
        for client_id, info in state["accepted"].items():
            blob = self.store.read_update(round_index, client_id, info["sha256"])
            self._updates[client_id] = decode_update(blob, self.spec, base=self._broadcast_trunk,
                                                     max_num_samples=self.config.max_num_samples)
            self.accepted[client_id] = info
        log.info("resumed federation at round %d with %d accepted update(s) (%s)", self.round,
                 len(self.accepted), ", ".join(sorted(self.accepted)) or "none")
        return True

    # -- what a trunk round fetches and uploads (RoundServer's hooks) ----------------------------------
    def _fetch_blob(self, client_id: str, item: str) -> Blob | Reply:
        if item:
            return self._reject(RejectReason.WRONG_FORMAT, f"item {item[:64]!r}: a trunk federation serves only "
                                "its global trunk (item '')", client_id)
        return Blob(self._broadcast, self._broadcast_sha256)

    def _round_status(self) -> tuple[list[str], str, int]:
        secure = self.secure
        if secure is None:
            return super()._round_status()
        return secure.done(), secure.phase.value, secure.attempt

    def _commit_blob(self, client_id: str, upload: Upload, blob: bytes) -> Reply:
        if self.secure is not None:
            return self._commit_masked(client_id, blob)
        try:
            update = decode_update(blob, self.spec, base=self._broadcast_trunk,
                                   max_num_samples=self.config.max_num_samples)
        except WireError as err:
            return self._reject(err.reason, err.detail, client_id)
        if update.client_id != client_id:
            return self._reject(RejectReason.WRONG_SENDER, f"the blob says client {update.client_id!r}", client_id)
        if update.round != upload.round:
            return self._reject(RejectReason.WRONG_ROUND, f"the blob says round {update.round}, the upload was "
                                f"signed for round {upload.round}", client_id)
        # Durable before acknowledged: the file, then the state that lists it.
        self.store.write_update(self.round, client_id, blob)
        self.accepted[client_id] = {"sha256": upload.sha256, "num_samples": update.num_samples}
        self._updates[client_id] = update
        self._save_state()
        log.info("accepted round %d update from %s (%d bytes, %d samples)", self.round, client_id, len(blob),
                 update.num_samples)
        return Reply(ok=True, round=self.round)

    def _check_not_uploaded(self, client_id: str, round_index: int) -> Reply | None:
        if self.secure is None:
            return super()._check_not_uploaded(client_id, round_index)
        if self.secure.phase is not SecurePhase.MASKED:
            return self._reject(RejectReason.WRONG_ROUND, f"round {round_index} aggregates securely and is in "
                                f"phase {self.secure.phase.value!r}: masked uploads are taken in phase 'masked'",
                                client_id)
        if client_id in self.secure.server.masked:
            return self._reject(RejectReason.DUPLICATE, f"a masked upload of {client_id} for round "
                                f"{round_index} was already accepted", client_id)
        return None

    def _largest_upload(self) -> int:
        if self.secure is not None:  # uint64 per parameter + the safetensors header
            return 8 * self.spec.num_parameters + 64 * 1024
        return self.spec.max_blob_bytes()

    def _commit_masked(self, client_id: str, blob: bytes) -> Reply:
        secure = self.secure
        try:
            metadata, vector = decode_masked(blob, self.spec)
        except WireError as err:
            return self._reject(err.reason, err.detail, client_id)
        if metadata.get("client_id") != client_id:
            return self._reject(RejectReason.WRONG_SENDER, f"the blob says client {metadata.get('client_id')!r}",
                                client_id)
        if metadata.get("round") != str(secure.round_index) or metadata.get("attempt") != str(secure.attempt):
            return self._reject(RejectReason.WRONG_ROUND, f"the blob is for round {metadata.get('round')} attempt "
                                f"{metadata.get('attempt')}, now {secure.round_index} attempt {secure.attempt}",
                                client_id)
        try:
            secure.masked(client_id, vector)
        except SecureRoundError as err:
            return self._reject(err.reason, err.detail, client_id)
        self.store.write_masked(secure.round_index, secure.attempt, client_id, blob)
        self._save_state()
        log.info("accepted round %d masked upload from %s (%d bytes)", self.round, client_id, len(blob))
        return Reply(ok=True, round=self.round)

    @serialized
    def secure_request(self, op: str, client_id: str, round_index: int, attempt: int, payload: bytes,
                       signature: str) -> Reply:
        """The small messages of a secure round (:class:`SecureOp`); the answer's ``data`` is JSON."""
        digest = f"{attempt}:{sha256_hex(payload)}"
        if (denied := self._authenticate(client_id, signature, f"secure-{op}"[:40], round_index, digest)) is not None:
            return denied
        if client_id not in self.joined:
            return self._reject(RejectReason.NOT_JOINED, "join the federation first", client_id)
        if self.secure is None and not self.finished:
            return self._reject(RejectReason.WRONG_FORMAT, "this federation does not aggregate securely: upload "
                                "trunk updates", client_id)
        if (denied := self._check_round(client_id, round_index)) is not None:
            return denied
        secure = self.secure
        if attempt != secure.attempt:
            return self._reject(RejectReason.WRONG_ROUND, f"attempt {attempt}, round {round_index} is at attempt "
                                f"{secure.attempt}: report again", client_id)
        try:
            kind = SecureOp(op)
        except ValueError:
            return self._reject(RejectReason.MALFORMED, f"op {op[:32]!r} is not one of "
                                f"{', '.join(o.value for o in SecureOp)}", client_id)
        try:
            body = load_payload(payload) if kind in (SecureOp.REPORT, SecureOp.SHARES, SecureOp.UNMASK) else {}
            answer: dict | None = None
            if kind is SecureOp.REPORT:
                secure.report(client_id, parse_report(body, self.spec, self.config.max_num_samples))
            elif kind is SecureOp.ROSTER:
                answer = secure.roster(client_id)
            elif kind is SecureOp.SHARES:
                secure.shares(client_id, body)
            elif kind is SecureOp.INBOX:
                answer = secure.inbox(client_id)
            elif kind is SecureOp.UNMASK_REQUEST:
                answer = secure.unmask_request(client_id)
            else:
                secure.unmask(client_id, body)
        except (WireError, SecureRoundError) as err:
            return self._reject(err.reason, err.detail, client_id)
        if answer is None:  # it changed the round's state: durable before acknowledged
            self._save_state()
            log.info("round %d attempt %d: %s from %s", self.round, secure.attempt, kind.value, client_id)
        return Reply(ok=True, round=self.round, data=dump_payload(answer) if answer is not None else b"")

    # -- rounds (the decisions: rounds.py) ---------------------------------------------------------
    def _decision(self, live: list[str], now: float) -> Decision:
        if self.secure is None:
            return super()._decision(live, now)
        return secure_decision(self.secure, live, self.limits, self.timer, now)

    def _carry_out(self, decision: Decision, now: float) -> None:
        if decision.step is Step.FIX_PARTICIPANTS:
            self._fix_participants(now)
        elif decision.step is Step.ADVANCE:
            phase = self.secure.phase.value
            if not self.secure.advance():
                self._abort_secure(f"too few participants left after phase {phase!r} "
                                   f"(threshold {self.secure.threshold})")
            else:
                self.timer.phase_started = now
                self._save_state()
        elif decision.step is Step.ABORT:
            self._abort_secure(decision.why)

    def _fix_participants(self, now: float) -> None:
        secure = self.secure
        reporters = sorted(secure.reports)
        counts = np.asarray([secure.reports[c]["counts"] for c in reporters])
        num_samples = [secure.reports[c]["num_samples"] for c in reporters]
        weights = self._round_weights(counts, num_samples)
        secure.fix_participants(weights, self._round_aggregator.non_layer_weights(weights, num_samples))
        self.timer.phase_started = now
        self._save_state()
        log.info("round %d attempt %d: %d participant(s) (%s), threshold %d", self.round, secure.attempt,
                 len(reporters), ", ".join(reporters), secure.threshold)

    def _abort_secure(self, why: str) -> None:
        secure = self.secure
        log.warning("round %d attempt %d aborted in phase %s: %s; the round restarts", self.round, secure.attempt,
                    secure.phase.value, why)
        self.aborted_attempts.append({"round": self.round, "attempt": secure.attempt, "phase": secure.phase.value,
                                      "why": why})
        self._open_secure_round(secure.attempt + 1)
        self.uploads.discard()
        self._save_state()
        self.timer.restart(self.clock())

    def _plain_aggregate(self) -> tuple[int]:
        """The round's aggregate from its plaintext updates (clipped first under DP), and how many
        updates the clipping shortened."""
        clients = sorted(self._updates)
        updates = [self._updates[c] for c in clients]
        num_samples = [u.num_samples for u in updates]
        trunks, clipped = [u.trunk for u in updates], 0
        if self.config.dp_clip_norm > 0:  # against the trunk the clients trained from
            clipped_trunks = [clip_update(t, self._broadcast_trunk, self.config.dp_clip_norm) for t in trunks]
            clipped = sum(norm > self.config.dp_clip_norm for _, norm in clipped_trunks)
            trunks = [t for t, _ in clipped_trunks]
        counts = torch.stack([u.expert_counts for u in updates]).numpy()
        weights = self._round_weights(counts, num_samples)
        trunk = self._round_aggregator.combine(trunks, weights, self.layer_of, num_samples)
        return RoundAggregate(trunk, clients, num_samples, weights,
                               self.aggregator.largest_weight(weights, num_samples)), int(clipped)

    @property
    def _dp_uniform(self) -> bool:
        return self.accountant is not None and self.config.dp_weights is DpWeights.UNIFORM

    @property
    def _round_aggregator(self) -> Aggregator:
        """The aggregator of this round's weights: DP rounds with uniform weights keep the
        parameters outside the MoE layers uniform too (a sample-count rule would depend on the data)."""
        return Aggregator(self.config.aggregation, NonLayerRule.MEAN_OF_LAYERS) if self._dp_uniform else self.aggregator

    def _round_weights(self, counts: np.ndarray, num_samples: list[int]) -> np.ndarray:
        """(L, n) weights: EDA's (or FedAvg's), or 1/n in DP rounds whose weights must not depend
        on the data (privacy.py)."""
        if self._dp_uniform:
            return uniform_weights(len(num_samples), self.spec.num_layers)
        return self.aggregator.layer_weights(counts, num_samples, self.spec.num_layers)

    def _with_dp_noise(self, trunk: dict[str, torch.Tensor], participants: int) -> tuple[dict[str, torch.Tensor], dict]:
        """The aggregate plus the DP noise of this round (std z·S, S the replace-one sensitivity),
        and the round record's DP fields: ε so far, the noise std and S (privacy.py)."""
        if self.accountant is None:
            return trunk, {}
        z = self.config.dp_noise_multiplier
        sensitivity = replace_one_sensitivity(self.config.dp_clip_norm, participants, self.spec.num_layers,
                                              self.config.dp_weights)
        generator = self.noise_generator or round_noise_generator(self.config.dp_noise_seed, self.round)
        noisy = add_gaussian_noise(trunk, z * sensitivity, generator)
        self.accountant.step(z)
        return noisy, {"dp_epsilon": round(self.accountant.epsilon(self.config.dp_delta), 4),
                       "dp_noise_std": z * sensitivity, "dp_sensitivity": sensitivity}

    def _close_round(self, closed_by: str, elapsed: float) -> RoundRecord | None:
        if self.secure is not None:
            result, clipped = aggregate_trunk(self.secure, self.global_trunk, self.spec, self.layer_of), 0
            attempts = self.secure.attempt + 1
        else:
            (result, clipped), attempts = self._plain_aggregate(), 1
        clients, weights = result.clients, result.weights
        trunk, dp = self._with_dp_noise(result.trunk, len(clients))
        closed = self.round
        try:
            self._install_global(closed + 1, trunk)
        except NonFiniteAggregate as err:
            return self._discard_round(str(err), clients)
        record = RoundRecord(round=closed, clients=clients,
                             dropped=sorted(c for c in self.joined if c not in clients), num_samples=result.num_samples,
                             layer_weights=np.round(weights, 6).tolist(), aggregation=self.config.aggregation.value,
                             closed_by=closed_by, duration_s=round(elapsed, 3), secure=self.secure is not None,
                             attempts=attempts, clipped=clipped, **dp)
        self.history.append(record)
        self.accepted, self._updates = {}, {}
        self.uploads.discard(lambda upload: upload.round <= closed)
        self.finished = self.round >= self.config.rounds
        self._open_secure_round(0)
        self._save_state()
        self.store.prune(closed, self.config.keep_update_rounds)
        self.timer.restart(self.clock())
        log.info("round %d closed (%s): %s%s; %s", closed, closed_by,
                 ", ".join(f"{c} {w:.3f}" for c, w in zip(clients, weights.mean(axis=0))),
                 f"; dropped {', '.join(record.dropped)}" if record.dropped else "",
                 "federation finished" if self.finished else f"round {self.round} open")
        return record

    def _discard_round(self, why: str, clients: list[str]) -> None:
        """The round's aggregate is unusable (validated updates make this all but impossible): keep
        the previous global trunk, and set the round's updates aside so that their clients train again
        (their files stay on disk)."""
        log.error("round %d not closed: %s; the updates of %s are set aside and the round stays open",
                  self.round, why, ", ".join(clients))
        self.rejections[RejectReason.NOT_FINITE.value] += len(clients)
        if self.secure is not None:
            self._abort_secure(why)
            return None
        self.accepted, self._updates = {}, {}
        self._save_state()
        self.timer.round_started = self.clock()
        return None
