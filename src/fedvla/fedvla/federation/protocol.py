"""The federation's request protocol, shared by the server, its clients and every transport
(in-process, ROS 2 services, Flower): the answer every request gets (:class:`Reply`), the server's
status (:class:`ServerStatus`), why a request is refused (:class:`RejectReason`), and who may ask
(client ids and their secrets).

Client ids also name files under the server's ``state_dir`` (``updates/round_r/<id>.safetensors``):
only letters, digits, ``_`` and ``-``, so no id can reach outside it.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from fedvla.config import ConfigError, require

CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")  # also a file name: no paths, no dots
MIN_SECRET_LENGTH = 16


class RejectReason(str, enum.Enum):
    """Why an upload (or a request) was refused; stable strings, logged and returned to clients."""

    UNKNOWN_CLIENT = "unknown_client"
    BAD_SIGNATURE = "bad_signature"
    NOT_JOINED = "not_joined"
    WRONG_ROUND = "wrong_round"
    ROUND_CLOSED = "round_closed"
    FEDERATION_FINISHED = "federation_finished"
    DUPLICATE = "duplicate_upload"
    TOO_LARGE = "too_large"
    BAD_SIZE = "bad_size"
    UNKNOWN_UPLOAD = "unknown_upload"
    BAD_CHUNK_INDEX = "bad_chunk_index"
    DUPLICATE_CHUNK = "duplicate_chunk"
    BAD_CHUNK_SIZE = "bad_chunk_size"
    BAD_CHUNK_CHECKSUM = "bad_chunk_checksum"
    MISSING_CHUNKS = "missing_chunks"
    BAD_CHECKSUM = "bad_checksum"
    MALFORMED = "malformed"
    WRONG_FORMAT = "wrong_format"
    WRONG_VERSION = "wrong_version"
    WRONG_MODEL = "wrong_model"
    WRONG_SENDER = "wrong_sender"
    WRONG_PARAMETERS = "wrong_parameters"
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_COUNTS = "bad_counts"
    BAD_NUM_SAMPLES = "bad_num_samples"
    TOO_MANY_UPLOADS = "too_many_uploads"
    NOT_ROUTED = "not_routed"  # skill federation: a skill the client's tasks did not route to this round


@dataclasses.dataclass
class Reply:
    """Every request's answer: ``ok`` or a reason (a :class:`RejectReason` value) and a detail."""

    ok: bool
    reason: str = ""
    detail: str = ""
    round: int = 0
    upload_id: str = ""
    chunk_size: int = 0
    num_chunks: int = 0
    data: bytes = b""
    total_size: int = 0
    sha256: str = ""


@dataclasses.dataclass
class ServerStatus:
    round: int
    rounds: int
    finished: bool
    accepted: list[str]
    live_clients: list[str]
    joined: list[str]
    global_size: int
    global_sha256: str
    chunk_size: int
    phase: str = ""  # secure rounds: a SecurePhase value; "" for plain rounds
    attempt: int = 0  # secure rounds: restarts of this round after too many dropouts


def load_credentials(path: str | Path) -> dict[str, str]:
    """``clients: {client_id: secret}`` from a YAML file (keep it out of version control)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError("credentials_file", f"{path} does not exist",
                          "a YAML file with 'clients: {id: secret}'") from None
    clients = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(clients, dict) or not clients:
        raise ConfigError("credentials_file", f"{path} has no 'clients' map", "clients: {robot_a: <secret>}")
    return validate_credentials({str(k): v for k, v in clients.items()}, "credentials_file", f" in {path}")


def validate_credentials(credentials: Mapping[str, str], field: str = "credentials",
                         where: str = "") -> dict[str, str]:
    """Client ids name files under ``state_dir`` (``updates/round_r/<id>.safetensors``): only
    letters, digits, ``_`` and ``-``, so no id can reach outside it; secrets long enough to sign."""
    out = {}
    for client_id, secret in credentials.items():
        require(isinstance(client_id, str) and bool(CLIENT_ID_PATTERN.match(client_id)), field,
                f"client id {client_id!r}{where}", "letters, digits, '_' and '-', at most 64")
        require(isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH, field,
                f"the secret of {client_id!r}{where} is shorter than {MIN_SECRET_LENGTH} characters",
                "e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
        out[client_id] = secret
    return out
