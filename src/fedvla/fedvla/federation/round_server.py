"""What every federation server does, whatever it federates: authenticated requests, the round
state machine's plain decisions (:mod:`.rounds`), chunked uploads (:mod:`.uploads`) and liveness.
The trunk federation (:class:`fedvla.federation.server.FederationServer`) and the skill federation
(:class:`fedvla.skills.federation.SkillFederationServer`) are its two kinds; both answer the same
requests, so the ``fed_server``/``fed_client`` nodes and the in-process transport carry either.

A kind says what a round's blobs are (:meth:`RoundServer._fetch_blob`: what a client may read;
:meth:`RoundServer._commit_blob`: an upload, checked and made durable before it is acknowledged),
how a round closes (:meth:`RoundServer._close_round`) and how its state is persisted
(:meth:`RoundServer._save_state`).
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import wraps

from fedvla.config import require, require_positive
from fedvla.federation.protocol import RejectReason, Reply, ServerStatus, validate_credentials
from fedvla.federation.rounds import Decision, RoundLimits, RoundRecord, RoundTimer, Step, plain_decision
from fedvla.federation.uploads import Upload, UploadRefused, Uploads
from fedvla.federation.wire import verify

log = logging.getLogger("fedvla.federation.server")


@dataclasses.dataclass(kw_only=True)
class RoundServerConfig:
    """The round and transport settings every federation server has."""

    rounds: int = 10
    quorum: int = 2  # fewest accepted updates that can close a round
    round_timeout_s: float = 600.0  # after this, a round closes with whoever uploaded (≥ quorum)
    liveness_timeout_s: float = 30.0  # a client not heard from for this long is not waited for
    chunk_size: int = 4 * 1024 * 1024
    max_fetch_bytes: int = 64 * 1024 * 1024  # largest piece one fetch may return
    max_open_uploads: int = 64
    upload_timeout_s: float = 300.0  # an upload with no chunk for this long is discarded
    max_num_samples: int = 10**9
    keep_update_rounds: int = 2  # update files kept on disk for the last N closed rounds
    state_dir: str = "federation_state"

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}", "an integer >= 1")
        require(self.quorum >= 1, "quorum", f"must be at least 1, got {self.quorum}", "an integer >= 1")
        for name in ("round_timeout_s", "liveness_timeout_s", "upload_timeout_s"):
            require_positive(getattr(self, name), name)
        require(self.chunk_size >= 1024, "chunk_size", f"{self.chunk_size} is too small", ">= 1024 bytes")
        require(self.max_fetch_bytes >= self.chunk_size, "max_fetch_bytes", "must be >= chunk_size")
        require(bool(self.state_dir), "state_dir", "must name a directory", "a path")


def serialized(method):
    """Run a request under the server's lock: transports call from several threads (a ROS
    executor's, simulated clients'), and a request reads and writes the round's state as a whole."""
    @wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


@dataclasses.dataclass(frozen=True)
class Blob:
    """Something a client may fetch this round: its bytes and their sha256."""

    data: bytes
    sha256: str


class RoundServer(abc.ABC):
    """Every public request is serialized by a lock inside the server, so transports may call it
    from any thread. Subclasses set ``model_hash`` (what ``join`` checks) and implement the hooks."""

    model_hash: str = ""
    wrong_model_fix: str = "use the server's model config"

    def __init__(self, config: RoundServerConfig, credentials: Mapping[str, str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.RLock()
        self.config = config
        self.credentials = validate_credentials(credentials)
        self.clock = clock
        self.rejections: Counter[str] = Counter()
        self.history: list[RoundRecord] = []
        self.joined: set[str] = set()
        self.accepted: dict[str, dict] = {}  # client → {"sha256", "num_samples", ...} for the current round
        self.uploads = Uploads(config.chunk_size, config.max_open_uploads, config.upload_timeout_s, clock)
        self._last_seen: dict[str, float] = {}
        self.round = 0
        self.finished = False
        self.timer = RoundTimer.starting(clock())

    @property
    def limits(self) -> RoundLimits:
        return RoundLimits(self.config.quorum, self.config.round_timeout_s, math.inf)  # plain rounds have no phases

    # -- hooks ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _save_state(self) -> None:
        """Persist the round's state (before any acknowledgement that depends on it)."""

    @abc.abstractmethod
    def _fetch_blob(self, client_id: str, item: str) -> Blob | Reply:
        """What ``fetch`` of ``item`` reads this round ("" the round's global blob), or a refusal."""

    @abc.abstractmethod
    def _commit_blob(self, client_id: str, upload: Upload, blob: bytes) -> Reply:
        """Check a complete upload; make it durable before answering ok."""

    @abc.abstractmethod
    def _close_round(self, closed_by: str, elapsed: float) -> RoundRecord | None:
        """Aggregate the round, persist the result, open the next round; its record."""

    @abc.abstractmethod
    def _largest_upload(self) -> int:
        """The largest upload this round accepts, in bytes."""

    def _round_status(self) -> tuple[list[str], str, int]:
        """(who is done this round, the phase, the attempt): plain rounds have neither."""
        return sorted(self.accepted), "", 0

    def _decision(self, live: list[str], now: float) -> Decision:
        return plain_decision(self.accepted, live, self.limits, self.timer, now)

    def _carry_out(self, decision: Decision, now: float) -> None:
        """A step other than CLOSE (plain rounds only wait)."""

    def _check_not_uploaded(self, client_id: str, round_index: int) -> Reply | None:
        if client_id in self.accepted:
            return self._reject(RejectReason.DUPLICATE, f"an update of {client_id} for round {round_index} was "
                                "already accepted", client_id)
        return None

    # -- requests ---------------------------------------------------------------------------------
    def _reject(self, reason: RejectReason, detail: str, client_id: str = "") -> Reply:
        self.rejections[reason.value] += 1
        log.warning("rejected %s from %s: %s", reason.value, client_id or "?", detail)
        return Reply(ok=False, reason=reason.value, detail=detail, round=self.round)

    def _authenticate(self, client_id: str, signature: str, kind: str, round_index: int,
                      digest: str = "") -> Reply | None:
        secret = self.credentials.get(client_id)
        if secret is None:
            return self._reject(RejectReason.UNKNOWN_CLIENT, f"client id {client_id[:64]!r} is not in the "
                                "credentials file", client_id[:64])
        if not verify(secret, signature, kind, client_id, round_index, digest):
            return self._reject(RejectReason.BAD_SIGNATURE, f"the {kind} signature does not verify with "
                                f"{client_id}'s secret", client_id)
        self._last_seen[client_id] = self.clock()
        return None

    @serialized
    def join(self, client_id: str, trunk_hash: str, signature: str) -> Reply:
        """``trunk_hash``: the hash of what the client federates (its trunk's, or its base policy's
        signature in the skill federation); it must equal the server's."""
        if (denied := self._authenticate(client_id, signature, "join", 0, trunk_hash)) is not None:
            return denied
        if trunk_hash != self.model_hash:
            return self._reject(RejectReason.WRONG_MODEL, f"model hash {trunk_hash!r}, the federation's is "
                                f"{self.model_hash!r}: {self.wrong_model_fix}", client_id)
        if client_id not in self.joined:
            self.joined.add(client_id)
            self._save_state()
            log.info("client %s joined (round %d)", client_id, self.round)
        return Reply(ok=True, round=self.round, chunk_size=self.config.chunk_size)

    @serialized
    def heartbeat(self, client_id: str, signature: str) -> Reply:
        """A client is alive (clients call it while they train, so the server waits for them)."""
        if (denied := self._authenticate(client_id, signature, "heartbeat", 0)) is not None:
            return denied
        return Reply(ok=True, round=self.round)

    @serialized
    def status(self) -> ServerStatus:
        now = self.clock()
        live = sorted(c for c in self.joined if now - self._last_seen.get(c, -math.inf) <= self.config.liveness_timeout_s)
        done, phase, attempt = self._round_status()
        blob = self._fetch_blob("", "")
        return ServerStatus(round=self.round, rounds=self.config.rounds, finished=self.finished, accepted=done,
                            live_clients=live, joined=sorted(self.joined), global_size=len(blob.data),
                            global_sha256=blob.sha256, chunk_size=self.config.chunk_size, phase=phase, attempt=attempt)

    @serialized
    def fetch(self, client_id: str, round_index: int, offset: int, length: int, signature: str,
              item: str = "") -> Reply:
        """Read [offset, offset + length) of ``item`` of round ``round_index`` ("" the global blob)."""
        if (denied := self._authenticate(client_id, signature, "fetch", round_index, item)) is not None:
            return denied
        if round_index != self.round:
            reason = RejectReason.ROUND_CLOSED if round_index < self.round else RejectReason.WRONG_ROUND
            return self._reject(reason, f"round {round_index} requested, the current round is {self.round}", client_id)
        blob = self._fetch_blob(client_id, item)
        if isinstance(blob, Reply):
            return blob
        if offset < 0 or length <= 0 or length > self.config.max_fetch_bytes or offset > len(blob.data):
            return self._reject(RejectReason.BAD_SIZE, f"offset {offset}, length {length} (blob is "
                                f"{len(blob.data)} bytes, at most {self.config.max_fetch_bytes} per fetch)", client_id)
        return Reply(ok=True, round=self.round, data=blob.data[offset: offset + length], total_size=len(blob.data),
                     sha256=blob.sha256)

    def _check_round(self, client_id: str, round_index: int) -> Reply | None:
        if self.finished:
            return self._reject(RejectReason.FEDERATION_FINISHED, f"all {self.config.rounds} rounds are done", client_id)
        if round_index < self.round:
            return self._reject(RejectReason.ROUND_CLOSED, f"round {round_index} is closed; the current round is "
                                f"{self.round}: fetch its global trunk", client_id)
        if round_index > self.round:
            return self._reject(RejectReason.WRONG_ROUND, f"round {round_index} has not started (current "
                                f"{self.round})", client_id)
        return None

    @serialized
    def begin_upload(self, client_id: str, round_index: int, size: int, sha256: str, signature: str) -> Reply:
        if (denied := self._authenticate(client_id, signature, "upload", round_index, sha256)) is not None:
            return denied
        if client_id not in self.joined:
            return self._reject(RejectReason.NOT_JOINED, "join the federation first", client_id)
        if (denied := self._check_round(client_id, round_index)) is not None:
            return denied
        if (denied := self._check_not_uploaded(client_id, round_index)) is not None:
            return denied
        try:
            upload_id, upload = self.uploads.open(client_id, round_index, size, sha256, self._largest_upload())
        except UploadRefused as err:
            return self._reject(err.reason, err.detail, err.client_id)
        return Reply(ok=True, round=self.round, upload_id=upload_id, chunk_size=upload.chunk_size,
                     num_chunks=upload.num_chunks)

    @serialized
    def upload_chunk(self, upload_id: str, index: int, data: bytes | memoryview, crc32: int) -> Reply:
        try:
            upload = self.uploads.add_chunk(upload_id, index, data, crc32)
        except UploadRefused as err:
            return self._reject(err.reason, err.detail, err.client_id)
        self._last_seen[upload.client_id] = upload.last_activity
        return Reply(ok=True, round=self.round, upload_id=upload_id)

    @serialized
    def commit_upload(self, upload_id: str) -> Reply:
        try:
            upload = self.uploads.complete(upload_id)
        except UploadRefused as err:
            return self._reject(err.reason, err.detail, err.client_id)
        client_id = upload.client_id
        if (denied := self._check_round(client_id, upload.round)) is not None:
            return denied
        if (denied := self._check_not_uploaded(client_id, upload.round)) is not None:
            return denied
        try:
            blob = self.uploads.blob(upload)
        except UploadRefused as err:
            return self._reject(err.reason, err.detail, client_id)
        return self._commit_blob(client_id, upload, blob)

    # -- rounds -----------------------------------------------------------------------------------
    @serialized
    def tick(self) -> RoundRecord | None:
        """Carry out what the round state machine decides now (call periodically); returns the
        round it closed, if it closed one."""
        self.uploads.expire()
        if self.finished:
            return None
        now, live = self.clock(), self.status().live_clients
        decision = self._decision(live, now)
        if decision.step is Step.CLOSE:
            return self._close_round(decision.closed_by, now - self.timer.round_started)
        if decision.step is not Step.WAIT:
            self._carry_out(decision, now)
        return None
