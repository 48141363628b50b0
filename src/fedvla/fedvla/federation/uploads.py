"""Chunked uploads, assembled in memory: a client opens an upload with its size and signed sha256,
sends the chunks in any order (several may be in flight), and the server takes the assembled blob
when every chunk has arrived and the sha256 matches.

Transport-free and policy-free: what may be uploaded (round, client, largest size) is the server's
decision; this module only keeps the bytes straight. At most one open upload per client (a
restarted client's new upload replaces its old one), at most ``max_open`` in all, and an upload
with no chunk for ``timeout_s`` is discarded. Partial uploads live only in memory: after a server
restart the client starts its upload again.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import zlib
from collections.abc import Callable

import numpy as np

from fedvla.federation.protocol import RejectReason
from fedvla.federation.wire import WireError, sha256_hex

log = logging.getLogger("fedvla.federation.uploads")


class UploadRefused(WireError):
    """A request about an upload is refused; ``client_id`` is the upload's owner where known."""

    def __init__(self, reason: RejectReason, detail: str, client_id: str = "") -> None:
        super().__init__(reason, detail)
        self.client_id = client_id


@dataclasses.dataclass
class Upload:
    client_id: str
    round: int
    size: int
    sha256: str
    chunk_size: int
    buffer: bytearray
    received: np.ndarray  # (num_chunks,) bool
    last_activity: float

    @property
    def num_chunks(self) -> int:
        return len(self.received)


class Uploads:
    def __init__(self, chunk_size: int, max_open: int, timeout_s: float, clock: Callable[[], float]) -> None:
        self.chunk_size, self.max_open, self.timeout_s, self.clock = chunk_size, max_open, timeout_s, clock
        self._open: dict[str, Upload] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, client_id: str, round_index: int, size: int, sha256: str, largest: int) -> tuple[str, Upload]:
        """A new upload of ``size`` bytes (1..``largest``) whose sha256 the client signed."""
        if not 0 < size <= largest:
            reason = RejectReason.TOO_LARGE if size > 0 else RejectReason.BAD_SIZE
            raise UploadRefused(reason, f"declared size {size}, allowed 1..{largest}", client_id)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise UploadRefused(RejectReason.BAD_CHECKSUM, "sha256 must be 64 lowercase hex digits", client_id)
        self.expire()
        self.discard(lambda upload: upload.client_id == client_id)
        if len(self._open) >= self.max_open:
            raise UploadRefused(RejectReason.TOO_MANY_UPLOADS, f"{len(self._open)} uploads are open", client_id)
        num_chunks = -(-size // self.chunk_size)
        upload_id = secrets.token_hex(12)
        self._open[upload_id] = Upload(client_id=client_id, round=round_index, size=size, sha256=sha256,
                                       chunk_size=self.chunk_size, buffer=bytearray(size),
                                       received=np.zeros(num_chunks, dtype=bool), last_activity=self.clock())
        return upload_id, self._open[upload_id]

    def _get(self, upload_id: str, hint: str = "") -> Upload:
        upload = self._open.get(upload_id)
        if upload is None:
            raise UploadRefused(RejectReason.UNKNOWN_UPLOAD, f"upload {upload_id[:32]!r} is unknown or expired{hint}")
        return upload

    def add_chunk(self, upload_id: str, index: int, data: bytes | memoryview, crc32: int) -> Upload:
        upload = self._get(upload_id, ": begin a new upload")
        if not 0 <= index < upload.num_chunks:
            raise UploadRefused(RejectReason.BAD_CHUNK_INDEX, f"chunk {index} of 0..{upload.num_chunks - 1}",
                                upload.client_id)
        if upload.received[index]:
            raise UploadRefused(RejectReason.DUPLICATE_CHUNK, f"chunk {index} was already received", upload.client_id)
        start = index * upload.chunk_size
        expected = min(upload.chunk_size, upload.size - start)
        if len(data) != expected:
            raise UploadRefused(RejectReason.BAD_CHUNK_SIZE, f"chunk {index} has {len(data)} bytes, expected "
                                f"{expected}", upload.client_id)
        if zlib.crc32(data) != crc32:
            raise UploadRefused(RejectReason.BAD_CHUNK_CHECKSUM, f"chunk {index} crc32 mismatch: resend it",
                                upload.client_id)
        upload.buffer[start: start + expected] = data
        upload.received[index] = True
        upload.last_activity = self.clock()
        return upload

    def complete(self, upload_id: str) -> Upload:
        """The upload, closed, once every chunk has arrived (an incomplete one stays open)."""
        upload = self._get(upload_id)
        if not upload.received.all():
            missing = np.flatnonzero(~upload.received)
            raise UploadRefused(RejectReason.MISSING_CHUNKS, f"{len(missing)} chunk(s) missing, first "
                                f"{missing[:5].tolist()}", upload.client_id)
        del self._open[upload_id]
        return upload

    @staticmethod
    def blob(upload: Upload) -> bytes:
        """The assembled bytes, checked against the sha256 the client signed."""
        blob = bytes(upload.buffer)
        if sha256_hex(blob) != upload.sha256:
            raise UploadRefused(RejectReason.BAD_CHECKSUM, "the assembled upload's sha256 differs from the signed "
                                "one", upload.client_id)
        return blob

    def expire(self) -> None:
        now = self.clock()
        for upload_id, upload in list(self._open.items()):
            if now - upload.last_activity > self.timeout_s:
                log.warning("discarding %s's stalled upload (no chunk for %.0f s)", upload.client_id,
                            now - upload.last_activity)
                del self._open[upload_id]

    def discard(self, which: Callable[[Upload], bool] = lambda upload: True) -> None:
        for upload_id in [u for u, upload in self._open.items() if which(upload)]:
            del self._open[upload_id]
