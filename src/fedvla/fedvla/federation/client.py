"""A federated client: owns its demonstrations and its policy; per round it fetches the global
trunk, trains locally, and uploads trunk + expert counts (FedVLA Algorithm 1, client side).

Transport-free: it talks to anything with the :class:`ServerApi` methods — the
:class:`fedvla.federation.server.FederationServer` itself (in-process simulations, through
:class:`InProcessServer`) or the ``fed_client`` node's ROS service proxy.

Only the trunk travels. The stems, the head and the action normaliser stay on the robot and are
checkpointed in ``state_dir`` after every local round, with the last round uploaded, so a
restarted client resumes where it stopped (and does not upload a round twice).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from torch.utils.data import Dataset

from fedvla.config import require, require_positive, parse_enum
from fedvla.federation.server import CLIENT_ID_PATTERN, Reply, ServerStatus
from fedvla.federation.state import atomic_write_json, read_json
from fedvla.federation.wire import (RejectReason, TrunkSpec, TrunkUpdate, WireDtype, WireError, decode_trunk,
                                    encode_update, sha256_hex, sign, sign_upload)
from fedvla.model.checkpoint import load_checkpoint, save_checkpoint
from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig, TrainResult, train_policy

log = logging.getLogger("fedvla.federation.client")


class ServerApi(Protocol):
    def join(self, client_id: str, trunk_hash: str, signature: str) -> Reply: ...
    def heartbeat(self, client_id: str, signature: str) -> Reply: ...
    def status(self) -> ServerStatus: ...
    def fetch(self, client_id: str, round_index: int, offset: int, length: int, signature: str) -> Reply: ...
    def begin_upload(self, client_id: str, round_index: int, size: int, sha256: str, signature: str) -> Reply: ...
    def upload_chunk(self, upload_id: str, index: int, data: bytes, crc32: int) -> Reply: ...
    def commit_upload(self, upload_id: str) -> Reply: ...


class InProcessServer:
    """A :class:`FederationServer` behind a lock, so clients in threads can share it."""

    def __init__(self, server) -> None:
        self.server = server
        self.lock = threading.RLock()

    def __getattr__(self, name: str):
        method = getattr(self.server, name)

        def locked(*args, **kwargs):
            with self.lock:
                return method(*args, **kwargs)
        return locked


class FederationError(RuntimeError):
    """The server refused a request in a way the client cannot fix by retrying."""

    def __init__(self, action: str, reply: Reply) -> None:
        self.reply = reply
        super().__init__(f"{action} refused: {reply.reason}: {reply.detail}")


def send_chunks(server: ServerApi, upload_id: str, chunks: list[tuple[int, memoryview]]) -> list[Reply]:
    """All chunks of an upload: pipelined where the transport can keep several in flight
    (``upload_chunks``), one by one otherwise."""
    with_crc = [(index, piece, zlib.crc32(piece)) for index, piece in chunks]
    if hasattr(server, "upload_chunks"):
        return server.upload_chunks(upload_id, with_crc)
    return [server.upload_chunk(upload_id, index, bytes(piece), crc) for index, piece, crc in with_crc]


def trunk_spec(policy: Policy) -> TrunkSpec:
    """The federation contract of a policy's trunk (names, shapes, counts shape, settings hash)."""
    config = policy.config
    return TrunkSpec.from_trunk(policy.trunk.state_dict(), num_layers=config.num_blocks,
                                num_experts=len(policy.trunk.moe_layers[0].counts),
                                settings=config.trunk_settings())


@dataclasses.dataclass(kw_only=True)
class FederationClientConfig:
    client_id: str = ""
    upload_dtype: WireDtype = WireDtype.FLOAT32  # bfloat16/float16 halve the upload, int8_delta quarters it
    state_dir: str = "federation_client"
    heartbeat_interval_s: float = 5.0  # keep below the server's liveness_timeout_s
    upload_attempts: int = 3  # restarts of an upload the server lost (e.g. it restarted)

    def __post_init__(self) -> None:
        self.upload_dtype = parse_enum(WireDtype, self.upload_dtype, "upload_dtype")
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


class FederationClient:
    def __init__(self, config: FederationClientConfig, secret: str, policy: Policy, dataset: Dataset,
                 train_config: TrainConfig, server: ServerApi, *, show_progress: bool = False) -> None:
        self.config = config
        self.secret = secret
        self.policy = policy
        self.dataset = dataset
        self.train_config = train_config
        self.server = server
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
        self.joined = False

    @property
    def client_id(self) -> str:
        return self.config.client_id

    def _sign(self, kind: str, round_index: int = 0, digest: str = "") -> str:
        return sign(self.secret, kind, self.client_id, round_index, digest)

    def join(self) -> None:
        reply = self.server.join(self.client_id, self.spec.trunk_hash, self._sign("join", 0, self.spec.trunk_hash))
        if not reply.ok:
            raise FederationError("join", reply)
        self.joined = True

    def fetch_global(self, status: ServerStatus) -> tuple[dict, int]:
        """The global trunk of the current round (verified against the announced sha256)."""
        blob = bytearray()
        signature = self._sign("fetch", status.round)
        while len(blob) < status.global_size:
            reply = self.server.fetch(self.client_id, status.round, len(blob), status.chunk_size * 4, signature)
            if not reply.ok:
                raise FederationError("fetch", reply)
            if reply.sha256 != status.global_sha256 or not reply.data:
                raise FederationError("fetch", Reply(ok=False, reason="changed", detail="the global trunk changed "
                                                     "while fetching (a round closed): fetch again"))
            blob += reply.data
        if sha256_hex(bytes(blob)) != status.global_sha256:
            raise FederationError("fetch", Reply(ok=False, reason=RejectReason.BAD_CHECKSUM.value,
                                                 detail="the fetched global trunk does not match its sha256"))
        blob_round, trunk = decode_trunk(bytes(blob), self.spec)
        if blob_round != status.round:
            raise WireError(RejectReason.WRONG_ROUND, f"global trunk of round {blob_round}, expected {status.round}")
        return trunk, len(blob)

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Tell the server we are alive while we train (it waits only for live clients)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_interval_s):
                try:
                    self.server.heartbeat(self.client_id, self._sign("heartbeat"))
                except Exception as err:  # the server may be restarting; the next beat retries
                    log.debug("heartbeat failed: %s", err)
        thread = threading.Thread(target=beat, name=f"{self.client_id}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def upload(self, blob: bytes, round_index: int) -> None:
        """Begin, send every chunk, commit; restart the upload if the server lost it."""
        digest = sha256_hex(blob)
        signature = sign_upload(self.secret, self.client_id, round_index, blob)
        for attempt in range(self.config.upload_attempts):
            begun = self.server.begin_upload(self.client_id, round_index, len(blob), digest, signature)
            if not begun.ok:
                raise FederationError("upload", begun)
            lost = False
            view = memoryview(blob)
            chunks = [(i, view[i * begun.chunk_size: (i + 1) * begun.chunk_size]) for i in range(begun.num_chunks)]
            for (index, piece), reply in zip(chunks, send_chunks(self.server, begun.upload_id, chunks)):
                if not reply.ok and reply.reason == RejectReason.BAD_CHUNK_CHECKSUM.value:
                    reply = self.server.upload_chunk(begun.upload_id, index, bytes(piece), zlib.crc32(piece))
                if not reply.ok:
                    lost = reply.reason == RejectReason.UNKNOWN_UPLOAD.value
                    if not lost:
                        raise FederationError("upload chunk", reply)
                    break
            if not lost:
                committed = self.server.commit_upload(begun.upload_id)
                if committed.ok:
                    return
                if committed.reason != RejectReason.UNKNOWN_UPLOAD.value:
                    raise FederationError("commit", committed)
            log.warning("%s: the server lost upload %s (attempt %d): starting again", self.client_id,
                        begun.upload_id, attempt + 1)
        raise FederationError("upload", Reply(ok=False, reason=RejectReason.UNKNOWN_UPLOAD.value,
                                              detail=f"lost {self.config.upload_attempts} times"))

    def run_round(self, status: ServerStatus) -> RoundReport:
        start = time.perf_counter()
        trunk, fetched = self.fetch_global(status)
        self.policy.trunk.load_state_dict(trunk)
        with self._heartbeat():
            result = train_policy(self.policy, self.dataset, self.train_config, show_progress=self.show_progress,
                                  description=f"{self.client_id} round {status.round}")
        update = TrunkUpdate(client_id=self.client_id, round=status.round,
                             trunk={k: v for k, v in self.policy.trunk.state_dict().items()},
                             expert_counts=result.expert_counts, num_samples=result.num_samples)
        blob = encode_update(update, self.spec, self.config.upload_dtype, base=trunk)
        # Personal parts first: if we die after uploading, the resumed client has them.
        save_checkpoint(self.policy, self.checkpoint_dir, metadata={"round": status.round})
        self.upload(blob, status.round)
        self.last_uploaded_round = status.round
        atomic_write_json(self.state_dir / "client_state.json", {"trunk_hash": self.spec.trunk_hash,
                                                                 "last_uploaded_round": status.round})
        return RoundReport(round=status.round, train=result, upload_bytes=len(blob), fetch_bytes=fetched,
                           seconds=time.perf_counter() - start)

    def step(self) -> RoundReport | None:
        """One poll: run the current round if this client has not uploaded to it yet."""
        if not self.joined:
            self.join()
        status = self.server.status()
        if status.finished or status.round <= self.last_uploaded_round or self.client_id in status.accepted:
            self.server.heartbeat(self.client_id, self._sign("heartbeat"))
            return None
        try:
            return self.run_round(status)
        except FederationError as err:
            # The round closed while we trained (we were too slow or were taken for dead): our
            # update is refused; the next poll joins the new round.
            if err.reply.reason in (RejectReason.ROUND_CLOSED.value, RejectReason.FEDERATION_FINISHED.value):
                log.warning("%s: round %d closed before our upload: %s", self.client_id, status.round, err.reply.detail)
                return None
            raise

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
                               metadata={"federation_round": round_index, "client_id": self.client_id})


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
