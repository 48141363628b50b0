"""A federated client: owns its demonstrations and its policy; per round it fetches the global
trunk, trains locally, and uploads trunk + expert counts (FedVLA Algorithm 1, client side).

Transport-free: it talks to anything with the :class:`ServerApi` methods — the
:class:`fedvla.federation.server.FederationServer` itself (in-process simulations; it serializes
requests from threads) or the ``fed_client`` node's ROS service proxy.

When the server aggregates securely (its status names a ``phase``), a round is the exchange of
:mod:`fedvla.federation.secure_round`: the client trains once, reports its expert counts (under
``count_privacy``) with fresh keys, and uploads its weighted trunk only under masks; its SecAgg
secrets never leave memory, so a client restarted mid-round sits that round out.

Only the trunk travels. The stems, the head and the action normaliser stay on the robot and are
checkpointed in ``state_dir`` after every local round, with the last round uploaded, so a
restarted client resumes where it stopped (and does not upload a round twice).
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedvla.config import require, require_positive, parse_enum
from fedvla.data.episodes import dataset_action_space
from fedvla.federation.secagg import SecAggClient, SecAggError, weighted_trunk_vector
from fedvla.federation.privacy import clip_update
from fedvla.federation.protocol import CLIENT_ID_PATTERN, RejectReason, ServerStatus
from fedvla.federation.round_client import FederationError, RoundClient, ServerApi
from fedvla.federation.secure_round import (ClientRoster, SecureOp, SecurePhase, dump_payload, encode_masked,
                                            load_payload, ordered_trunk, parse_roster, unmask_payload)
from fedvla.federation.state import atomic_write_json, read_json
from fedvla.federation.wire import (TrunkSpec, TrunkUpdate, WireDtype, WireError, decode_trunk,
                                    encode_update, sha256_hex)
from fedvla.model.checkpoint import load_checkpoint, save_checkpoint
from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig, TrainResult, train_policy
from fedvla.model.trunk import Trunk

log = logging.getLogger("fedvla.federation.client")


def trunk_spec(policy: Policy) -> TrunkSpec:
    """The federation contract of a policy's trunk (names, shapes, counts shape, settings hash)."""
    config = policy.config
    return TrunkSpec.from_trunk(policy.trunk.state_dict(), num_layers=config.num_blocks,
                                num_experts=len(policy.trunk.moe_layers[0].counts),
                                settings=config.trunk_settings())


class CountPrivacy(str, enum.Enum):
    """What a client's expert counts tell a secure-aggregation server (plain rounds send them as
    they are, inside the update).

    * ``exact`` — the counts: per layer, how many tokens each expert processed.
    * ``normalized`` — per layer, each expert's share of the tokens, and ``num_samples`` 1: hides how
      much data the robot has. EDA's weights are unchanged (cosine similarity ignores scale);
      FedAvg and the ``sample_count`` non-layer rule lose their sample weighting (uniform).
    * ``noisy`` — ``normalized`` plus Gaussian noise of ``count_noise_std`` on every share,
      clipped at 0: blurs which experts the robot uses, at the cost of noisier EDA weights
      (``fedvla bench secagg`` prints the weight error for a few noise levels).
    """

    EXACT = "exact"
    NORMALIZED = "normalized"
    NOISY = "noisy"


def private_counts(counts: np.ndarray, privacy: CountPrivacy, noise_std: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The counts (L, K) a client reports under ``privacy``."""
    counts = np.asarray(counts, dtype=np.float64)
    if privacy is CountPrivacy.EXACT:
        return counts
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.where(totals > 0, totals, 1.0)
    if privacy is CountPrivacy.NOISY:
        shares = np.clip(shares + rng.normal(0.0, noise_std, size=shares.shape), 0.0, None)
    return shares


@dataclasses.dataclass
class _SecureSession:
    """This client's part of one attempt of a secure round (memory only, by design)."""

    round: int
    attempt: int
    secagg: SecAggClient
    shared: bool = False
    uploaded: bool = False
    roster: ClientRoster | None = None


@dataclasses.dataclass
class _TrainedRound:
    round: int
    trunk: dict[str, torch.Tensor]
    global_trunk: dict[str, torch.Tensor]  # what it trained from (DP clips the change from it)
    train: TrainResult
    fetch_bytes: int
    started: float
    upload_bytes: int = 0


@dataclasses.dataclass(kw_only=True)
class FederationClientConfig:
    client_id: str = ""
    upload_dtype: WireDtype = WireDtype.FLOAT32  # bfloat16/float16 halve the upload, int8_delta quarters it
    state_dir: str = "federation_client"
    heartbeat_interval_s: float = 5.0  # keep below the server's liveness_timeout_s
    upload_attempts: int = 3  # restarts of an upload the server lost (e.g. it restarted)
    count_privacy: CountPrivacy = CountPrivacy.EXACT  # secure rounds: what the counts reveal (CountPrivacy)
    count_noise_std: float = 0.05  # count_privacy noisy: std of the noise on each expert's share

    def __post_init__(self) -> None:
        self.upload_dtype = parse_enum(WireDtype, self.upload_dtype, "upload_dtype")
        self.count_privacy = parse_enum(CountPrivacy, self.count_privacy, "count_privacy")
        require(self.count_noise_std >= 0, "count_noise_std", f"{self.count_noise_std} is negative", ">= 0")
        require(bool(CLIENT_ID_PATTERN.match(self.client_id or "")), "client_id", f"{self.client_id!r} is invalid",
                "letters, digits, '_' and '-', at most 64")
        require_positive(self.heartbeat_interval_s, "heartbeat_interval_s")
        require(self.upload_attempts >= 1, "upload_attempts", "must be at least 1")


@dataclasses.dataclass
class RoundReport:
    round: int
    train: TrainResult
    upload_bytes: int
    fetch_bytes: int
    seconds: float


class FederationClient(RoundClient):
    def __init__(self, config: FederationClientConfig, secret: str, policy: Policy, dataset: Dataset,
                 train_config: TrainConfig, server: ServerApi, *, show_progress: bool = False) -> None:
        super().__init__(config.client_id, secret, server, heartbeat_interval_s=config.heartbeat_interval_s,
                         upload_attempts=config.upload_attempts)
        self.config = config
        self.policy = policy
        self.dataset = dataset
        self.train_config = train_config
        self.show_progress = show_progress
        self.spec = trunk_spec(policy)
        self.state_dir = Path(config.state_dir)
        self.checkpoint_dir = self.state_dir / "checkpoint"
        state = read_json(self.state_dir / "client_state.json") or {}
        if state and state.get("trunk_hash") != self.spec.trunk_hash:
            raise ValueError(f"{self.state_dir} holds another model's client state: use a fresh state_dir")
        self.last_uploaded_round: int = state.get("last_uploaded_round", -1)
        if (self.checkpoint_dir / "config.json").exists():
            resumed = load_checkpoint(self.checkpoint_dir, expected=policy.config)
            self.policy.load_state_dict(resumed.state_dict())
            log.info("%s resumed from %s (last uploaded round %d)", config.client_id, self.checkpoint_dir,
                     self.last_uploaded_round)
        # What the actions mean, from the training data: the driver checks it before running the policy.
        space = dataset_action_space(dataset)
        self._data_metadata = {"action_space": space} if space is not None else {}
        self._trained: _TrainedRound | None = None
        self._session: _SecureSession | None = None
        self._count_rng = np.random.default_rng()

    def join(self) -> None:
        self.join_with(self.spec.trunk_hash)

    def fetch_global(self, status: ServerStatus) -> tuple[dict, int]:
        """The global trunk of the current round (verified against the announced sha256)."""
        blob = self.fetch_blob(status.round, status.chunk_size, size=status.global_size, sha256=status.global_sha256)
        blob_round, trunk = decode_trunk(blob, self.spec)
        if blob_round != status.round:
            raise WireError(RejectReason.WRONG_ROUND, f"global trunk of round {blob_round}, expected {status.round}")
        return trunk, len(blob)

    def _train(self, status: ServerStatus) -> tuple[_TrainedRound, dict[str, torch.Tensor]]:
        """Fetch the round's global trunk and train on it; checkpoint the personal parts (stems,
        head, normaliser) so that a client that dies after uploading resumes with them."""
        start = time.perf_counter()
        global_trunk, fetched = self.fetch_global(status)
        self.policy.trunk.load_state_dict(global_trunk)
        with self.heartbeating():
            result = train_policy(self.policy, self.dataset, self.train_config, show_progress=self.show_progress,
                                  description=f"{self.client_id} round {status.round}")
        save_checkpoint(self.policy, self.checkpoint_dir, metadata={"round": status.round, **self._data_metadata})
        trained = _TrainedRound(round=status.round, trunk={k: v.detach().clone() for k, v in
                                                           self.policy.trunk.state_dict().items()},
                                global_trunk=global_trunk, train=result, fetch_bytes=fetched, started=start)
        return trained, global_trunk

    def _finish_round(self, trained: _TrainedRound) -> RoundReport:
        self.last_uploaded_round = trained.round
        atomic_write_json(self.state_dir / "client_state.json", {"trunk_hash": self.spec.trunk_hash,
                                                                 "last_uploaded_round": trained.round})
        return RoundReport(round=trained.round, train=trained.train, upload_bytes=trained.upload_bytes,
                           fetch_bytes=trained.fetch_bytes, seconds=time.perf_counter() - trained.started)

    def run_round(self, status: ServerStatus) -> RoundReport:
        trained, global_trunk = self._train(status)
        update = TrunkUpdate(client_id=self.client_id, round=status.round, trunk=trained.trunk,
                             expert_counts=trained.train.expert_counts, num_samples=trained.train.num_samples)
        blob = encode_update(update, self.spec, self.config.upload_dtype, base=global_trunk)
        self.upload(blob, status.round)
        trained.upload_bytes = len(blob)
        return self._finish_round(trained)

    # -- secure rounds ----------------------------------------------------------------------------
    def _secure(self, op: SecureOp, status: ServerStatus, body: dict | None = None) -> dict:
        payload = dump_payload(body) if body is not None else b""
        digest = f"{status.attempt}:{sha256_hex(payload)}"
        reply = self.server.secure_request(op.value, self.client_id, status.round, status.attempt, payload,
                                           self._sign(f"secure-{op.value}", status.round, digest))
        if not reply.ok:
            raise FederationError(f"secure {op.value}", reply)
        return load_payload(reply.data) if reply.data else {}

    def _secure_step(self, status: ServerStatus) -> RoundReport | None:
        """One poll of a secure round: do whatever this phase needs from us, once."""
        phase = SecurePhase(status.phase)
        session = self._session
        if session is not None and (session.round, session.attempt) != (status.round, status.attempt):
            session = self._session = None
        if phase is SecurePhase.REPORT:
            if session is not None:
                return None  # reported; waiting for the others
            if self._trained is None or self._trained.round != status.round:
                self._trained, _ = self._train(status)
            counts = private_counts(self._trained.train.expert_counts.numpy(), self.config.count_privacy,
                                    self.config.count_noise_std, self._count_rng)
            num_samples = 1 if self.config.count_privacy is not CountPrivacy.EXACT else self._trained.train.num_samples
            secagg = SecAggClient(self.client_id, status.round)
            keys = secagg.public_keys()
            self._secure(SecureOp.REPORT, status, {"counts": counts.tolist(), "num_samples": num_samples,
                                                    "cipher_key": keys.cipher_key.hex(), "mask_key": keys.mask_key.hex()})
            self._session = _SecureSession(round=status.round, attempt=status.attempt, secagg=secagg)
            return None
        if session is None or self._trained is None:
            return None  # restarted or too late for this attempt: wait for the next one
        if phase is SecurePhase.SHARES and not session.shared:
            session.roster = parse_roster(self._secure(SecureOp.ROSTER, status), self.spec, self.client_id)
            shares = session.secagg.share_keys(session.roster.round, session.roster.keys)
            self._secure(SecureOp.SHARES, status, {"shares": {peer: blob.hex() for peer, blob in shares.items()}})
            session.shared = True
        elif phase is SecurePhase.MASKED and session.shared and not session.uploaded:
            inbox = self._secure(SecureOp.INBOX, status)
            session.secagg.receive_shares({sender: bytes.fromhex(blob) for sender, blob in inbox["shares"].items()})
            roster, trunk = session.roster, self._trained.trunk
            if roster.clip_norm > 0:
                trunk, _ = clip_update(trunk, self._trained.global_trunk, roster.clip_norm)
            vector = weighted_trunk_vector(ordered_trunk(trunk, self.spec), roster.layer_weights,
                                           roster.non_layer_weight, Trunk.layer_of)
            masked = session.secagg.masked_input(vector, inbox["alive"])
            blob = encode_masked(masked, self.spec, self.client_id, status.round, status.attempt)
            self.upload(blob, status.round)
            self._trained.upload_bytes += len(blob)
            session.uploaded = True
        elif phase is SecurePhase.UNMASK and session.uploaded:
            request = self._secure(SecureOp.UNMASK_REQUEST, status)
            shares = session.secagg.unmask_shares(request["uploaded"], request["dropped"])
            self._secure(SecureOp.UNMASK, status, unmask_payload(shares))
            self._session = None
            trained, self._trained = self._trained, None
            return self._finish_round(trained)
        return None

    def step(self) -> RoundReport | None:
        """One poll: run the current round if this client has not uploaded to it yet."""
        if not self.joined:
            self.join()
        status = self.server.status()
        secure = bool(status.phase)
        # A plain round that lists no update of ours although we uploaded to it was set aside by the
        # server (its aggregate was unusable): train again.
        uploaded_here = status.round < self.last_uploaded_round or (
            status.round == self.last_uploaded_round and (secure or self.client_id in status.accepted))
        if status.finished or uploaded_here or (not secure and self.client_id in status.accepted):
            self.beat()
            return None
        try:
            if secure:
                report = self._secure_step(status)
                if report is None:
                    self.beat()
                return report
            return self.run_round(status)
        except FederationError as err:
            # The round closed while we trained (we were too slow or were taken for dead), or a
            # secure round moved on without us: refused; the next poll joins the next round/phase.
            if err.reply.reason in (RejectReason.ROUND_CLOSED.value, RejectReason.FEDERATION_FINISHED.value,
                                    RejectReason.WRONG_ROUND.value if secure else "-"):
                log.warning("%s: round %d moved on without us: %s", self.client_id, status.round, err.reply.detail)
                if err.reply.reason == RejectReason.ROUND_CLOSED.value:
                    self._session = None
                return None
            raise
        except SecAggError as err:
            # A peer's share does not open, or the roster is inconsistent: drop out of this attempt.
            log.warning("%s: leaving round %d attempt %d: %s", self.client_id, status.round, status.attempt, err)
            self._session = None
            return None

    def finished(self) -> bool:
        return self.server.status().finished

    def load_global_trunk(self) -> int:
        """Load the server's current global trunk (the final one once the federation finished);
        returns its round."""
        status = self.server.status()
        trunk, _ = self.fetch_global(status)
        self.policy.trunk.load_state_dict(trunk)
        return status.round

    def save_final_checkpoint(self) -> Path:
        """The final global trunk with this robot's own stems, head and normaliser: a checkpoint the
        policy node can run (``<state_dir>/final``)."""
        round_index = self.load_global_trunk()
        return save_checkpoint(self.policy, self.state_dir / "final",
                               metadata={"federation_round": round_index, "client_id": self.client_id,
                                         **self._data_metadata})


def run_until_finished(server, clients: list[FederationClient], *, max_polls: int = 10_000,
                       on_round: Callable[[object], None] | None = None) -> list:
    """Drive an in-process federation sequentially: clients poll, the server ticks, until done.

    ``server`` is the :class:`FederationServer`; returns its closed-round records.
    """
    records = []
    for _ in range(max_polls):
        if server.finished:
            break
        for client in clients:
            client.step()
        record = server.tick()
        if record is not None:
            records.append(record)
            if on_round is not None:
                on_round(record)
    else:
        raise RuntimeError(f"the federation did not finish in {max_polls} polls")
    return records
