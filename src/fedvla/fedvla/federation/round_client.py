"""What every federation client does on the wire, whatever it federates: signed requests, joining,
reading a blob in pieces (verified against its sha256), uploading one in chunks (restarted if the
server lost it), and heartbeats while it trains. The trunk client
(:class:`fedvla.federation.client.FederationClient`) and the skill client
(:class:`fedvla.skills.federation.SkillFederationClient`) build their rounds on it.

Transport-free: ``server`` is anything with the :class:`ServerApi` methods — a server object itself
(in-process simulations; it serializes requests from threads) or the ``fed_client`` node's ROS
service proxy.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from collections.abc import Iterator
from typing import Protocol

from fedvla.federation.protocol import RejectReason, Reply, ServerStatus
from fedvla.federation.wire import sha256_hex, sign, sign_upload

log = logging.getLogger("fedvla.federation.client")


class ServerApi(Protocol):
    def join(self, client_id: str, trunk_hash: str, signature: str) -> Reply: ...
    def heartbeat(self, client_id: str, signature: str) -> Reply: ...
    def status(self) -> ServerStatus: ...
    def fetch(self, client_id: str, round_index: int, offset: int, length: int, signature: str,
              item: str = "") -> Reply: ...
    def begin_upload(self, client_id: str, round_index: int, size: int, sha256: str, signature: str) -> Reply: ...
    def upload_chunk(self, upload_id: str, index: int, data: bytes, crc32: int) -> Reply: ...
    def commit_upload(self, upload_id: str) -> Reply: ...
    def secure_request(self, op: str, client_id: str, round_index: int, attempt: int, payload: bytes,
                       signature: str) -> Reply: ...


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


class RoundClient:
    """Signed requests to a federation server for client ``client_id``."""

    def __init__(self, client_id: str, secret: str, server: ServerApi, *, heartbeat_interval_s: float,
                 upload_attempts: int) -> None:
        self._client_id, self.secret, self.server = client_id, secret, server
        self._heartbeat_interval_s, self._upload_attempts = heartbeat_interval_s, upload_attempts
        self.joined = False

    @property
    def client_id(self) -> str:
        return self._client_id

    def _sign(self, kind: str, round_index: int = 0, digest: str = "") -> str:
        return sign(self.secret, kind, self.client_id, round_index, digest)

    def join_with(self, model_hash: str) -> None:
        reply = self.server.join(self.client_id, model_hash, self._sign("join", 0, model_hash))
        if not reply.ok:
            raise FederationError("join", reply)
        self.joined = True

    def fetch_blob(self, round_index: int, chunk_size: int, item: str = "", size: int | None = None,
                   sha256: str | None = None) -> bytes:
        """``item`` of round ``round_index`` ("" the global blob), read in pieces of 4 chunks and
        checked against its sha256 (``sha256``/``size`` when announced, else the first answer's)."""
        blob = bytearray()
        signature = self._sign("fetch", round_index, item)
        while size is None or len(blob) < size:
            reply = self.server.fetch(self.client_id, round_index, len(blob), chunk_size * 4, signature, item)
            if not reply.ok:
                raise FederationError("fetch", reply)
            size = reply.total_size if size is None else size
            sha256 = reply.sha256 if sha256 is None else sha256
            if reply.sha256 != sha256 or (not reply.data and len(blob) < size):
                raise FederationError("fetch", Reply(ok=False, reason="changed", detail=f"{item or 'the global blob'} "
                                                     "changed while fetching (a round closed): fetch again"))
            blob += reply.data
        if sha256_hex(bytes(blob)) != sha256:
            raise FederationError("fetch", Reply(ok=False, reason=RejectReason.BAD_CHECKSUM.value,
                                                 detail=f"the fetched {item or 'global blob'} does not match its sha256"))
        return bytes(blob)

    @contextlib.contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Tell the server we are alive while we train (it waits only for live clients)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._heartbeat_interval_s):
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
        for attempt in range(self._upload_attempts):
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
                                              detail=f"lost {self._upload_attempts} times"))

    def beat(self) -> None:
        """One heartbeat (a poll with nothing to do still says we are alive)."""
        self.server.heartbeat(self.client_id, self._sign("heartbeat"))
