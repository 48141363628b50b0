"""Chunk assembly on its own (the server's fault suite covers it through the requests)."""
import zlib

import pytest

from fedvla.federation.uploads import UploadRefused, Uploads
from fedvla.federation.wire import sha256_hex


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_chunks_in_any_order_assemble_the_signed_blob() -> None:
    uploads = Uploads(chunk_size=4, max_open=8, timeout_s=10, clock=Clock())
    blob = bytes(range(10))
    upload_id, upload = uploads.open("robot_a", 0, len(blob), sha256_hex(blob), largest=100)
    assert upload.num_chunks == 3
    for index in (2, 0, 1):
        piece = blob[4 * index: 4 * index + 4]
        uploads.add_chunk(upload_id, index, piece, zlib.crc32(piece))
    done = uploads.complete(upload_id)
    assert Uploads.blob(done) == blob and len(uploads) == 0


def test_one_open_upload_per_client_and_stalled_ones_expire() -> None:
    clock = Clock()
    uploads = Uploads(chunk_size=4, max_open=2, timeout_s=10, clock=clock)
    first, _ = uploads.open("robot_a", 0, 8, "0" * 64, largest=100)
    second, _ = uploads.open("robot_a", 0, 8, "0" * 64, largest=100)  # a restarted client
    with pytest.raises(UploadRefused, match="unknown_upload"):
        uploads.add_chunk(first, 0, b"abcd", zlib.crc32(b"abcd"))
    uploads.open("robot_b", 0, 8, "0" * 64, largest=100)
    with pytest.raises(UploadRefused, match="too_many_uploads"):
        uploads.open("robot_c", 0, 8, "0" * 64, largest=100)
    clock.now = 11.0
    uploads.expire()
    assert len(uploads) == 0
    with pytest.raises(UploadRefused) as err:
        uploads.complete(second)
    assert err.value.reason.value == "unknown_upload"


def test_an_incomplete_upload_stays_open_and_a_wrong_sha256_is_refused() -> None:
    uploads = Uploads(chunk_size=4, max_open=8, timeout_s=10, clock=Clock())
    upload_id, _ = uploads.open("robot_a", 0, 8, "f" * 64, largest=100)
    uploads.add_chunk(upload_id, 0, b"abcd", zlib.crc32(b"abcd"))
    with pytest.raises(UploadRefused, match="missing_chunks") as err:
        uploads.complete(upload_id)
    assert err.value.client_id == "robot_a" and len(uploads) == 1
    uploads.add_chunk(upload_id, 1, b"efgh", zlib.crc32(b"efgh"))
    with pytest.raises(UploadRefused, match="bad_checksum"):
        Uploads.blob(uploads.complete(upload_id))
