"""Hand-crafted federation uploads, good and bad, shared by the in-process and the ROS tests.

``server`` is anything with the server's request methods plus ``spec``, ``global_trunk`` and
``round`` (the core :class:`FederationServer`, or a view of a remote one over ROS services).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from fedvla.data.synthetic import SquareReachDataset
from fedvla.federation.client import FederationClient, FederationClientConfig, trunk_spec
from fedvla.federation.server import FederationServer, FederationServerConfig
from fedvla.federation.wire import (SCALE_PREFIX, TrunkUpdate, WireDtype, encode_update, sha256_hex, sign,
                                    sign_upload)
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.train import TrainConfig
from fedvla.model.trunk import Trunk

SECRETS = {f"robot_{i}": f"secret-of-robot-{i}-0123456789" for i in range(3)}


TINY = Path(__file__).resolve().parents[2] / "config" / "model" / "tiny.yaml"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tiny_config() -> PolicyConfig:
    return PolicyConfig.from_yaml(TINY, image_size=32, language_dim=8)


def make_server(state_dir: Path, clock=None, **options) -> FederationServer:
    policy = seeded_policy(tiny_config(), 0)
    settings = {"rounds": 2, "quorum": 2, "chunk_size": 4096, "state_dir": str(state_dir), **options}
    return FederationServer(FederationServerConfig(**settings), trunk_spec(policy), policy.trunk.state_dict(),
                            SECRETS, Trunk.layer_of, clock=clock or FakeClock())


def make_client(server, index: int, state_dir: Path, **options) -> FederationClient:
    config = tiny_config()
    policy = seeded_policy(config, 100 + index)
    data = SquareReachDataset(config, 16, seed=index)
    policy.normalizer.fit(data.actions, data.proprio)
    client_config = FederationClientConfig(client_id=f"robot_{index}", state_dir=str(state_dir / f"robot_{index}"),
                                           heartbeat_interval_s=60, **options)
    return FederationClient(client_config, SECRETS[f"robot_{index}"], policy, data,
                            TrainConfig(epochs=1, batch_size=8, seed=index), server)


def join_all(server: FederationServer) -> None:
    for client_id, secret in SECRETS.items():
        assert server.join(client_id, server.spec.trunk_hash, sign(secret, "join", client_id, 0, server.spec.trunk_hash)).ok


def random_update(server, client_id: str, seed: int = 0, **changes) -> TrunkUpdate:
    g = torch.Generator().manual_seed(seed)
    trunk = {k: torch.randn(v.shape, generator=g) for k, v in server.global_trunk.items()}
    counts = torch.randint(0, 50, (server.spec.num_layers, server.spec.num_experts), generator=g)
    fields = dict(client_id=client_id, round=server.round, trunk=trunk, expert_counts=counts, num_samples=16)
    fields.update(changes)
    return TrunkUpdate(**fields)


def upload(server, client_id: str, blob: bytes, *, round_index: int | None = None,
           secret: str | None = None, chunk_edit=None):
    """Begin/chunks/commit; returns the first refusal, or the commit reply."""
    round_index = server.round if round_index is None else round_index
    secret = secret or SECRETS.get(client_id, "x" * 32)
    begun = server.begin_upload(client_id, round_index, len(blob), sha256_hex(blob),
                                sign_upload(secret, client_id, round_index, blob))
    if not begun.ok:
        return begun
    for index in range(begun.num_chunks):
        piece = blob[index * begun.chunk_size: (index + 1) * begun.chunk_size]
        crc = zlib.crc32(piece)
        if chunk_edit is not None:
            piece, crc = chunk_edit(index, piece, crc)
            if piece is None:
                continue
        reply = server.upload_chunk(begun.upload_id, index, piece, crc)
        if not reply.ok:
            return reply
    return server.commit_upload(begun.upload_id)


def _blob_with(server, *, metadata=None, tensors=None, drop=(), client_id="robot_0"):
    """An update blob with chosen header fields or tensors replaced (hand-crafted attacks)."""
    update = random_update(server, client_id)
    base = {f"trunk.{k}": v.contiguous() for k, v in update.trunk.items()}
    base["expert_counts"] = update.expert_counts
    for key in drop:
        base.pop(key)
    base.update(tensors or {})
    meta = {"format": "fedvla-update", "version": "1", "trunk_hash": server.spec.trunk_hash, "round": "0",
            "dtype": "float32", "client_id": client_id, "num_samples": "16"}
    meta.update(metadata or {})
    return safetensors_save(base, metadata=meta)


def fault_cases(server, replay_blob: bytes):
    """(name, expected reason, callable returning the reply) for every kind of bad upload.

    Expects: robot_0 and robot_1 joined, robot_2 not; round >= 1; ``replay_blob`` an update of
    robot_1 already accepted in the current round.
    """
    good = lambda client_id="robot_0", **kw: encode_update(random_update(server, client_id, **kw), server.spec)  # noqa: E731
    first = "blocks.0.ff.router.weight"
    shape = server.spec.shapes[first]
    big = 2 * server.spec.max_blob_bytes()
    corrupt_crc = lambda i, p, c: (p, c ^ 1)  # noqa: E731
    skip_last = lambda i, p, c: (None, c) if i > 0 else (p, c)  # noqa: E731
    return [
        ("unknown client", "unknown_client", lambda: upload(server, "mallory", good())),
        ("wrong secret", "bad_signature", lambda: upload(server, "robot_0", good(), secret="not-the-secret-0123456")),
        ("not joined", "not_joined", lambda: upload(server, "robot_2", good(client_id="robot_2"))),
        ("future round", "wrong_round", lambda: upload(server, "robot_0", good(round=5), round_index=5)),
        ("stale round", "round_closed", lambda: upload(server, "robot_0", good(round=0), round_index=0)),
        ("replayed accepted upload", "duplicate_upload", lambda: upload(server, "robot_1", replay_blob)),
        ("declared too large", "too_large", lambda: server.begin_upload(
            "robot_0", server.round, big, "0" * 64, sign(SECRETS["robot_0"], "upload", "robot_0", server.round, "0" * 64))),
        ("empty", "bad_size", lambda: upload(server, "robot_0", b"")),
        ("unknown upload id", "unknown_upload", lambda: server.upload_chunk("deadbeef", 0, b"x", zlib.crc32(b"x"))),
        ("chunk index out of range", "bad_chunk_index", lambda: _chunk_call(server, index=10_000)),
        ("duplicate chunk", "duplicate_chunk", lambda: _chunk_call(server, index=0, twice=True)),
        ("short chunk", "bad_chunk_size", lambda: upload(server, "robot_0", good(),
                                                         chunk_edit=lambda i, p, c: (p[:-1], zlib.crc32(p[:-1])))),
        ("corrupted chunk", "bad_chunk_checksum", lambda: upload(server, "robot_0", good(), chunk_edit=corrupt_crc)),
        ("missing chunks", "missing_chunks", lambda: upload(server, "robot_0", good(), chunk_edit=skip_last)),
        ("tampered after signing", "bad_checksum", lambda: _tampered(server, good())),
        ("not safetensors", "malformed", lambda: upload(server, "robot_0", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b" " * 64)),
        ("huge header length", "malformed", lambda: upload(server, "robot_0", (2**62).to_bytes(8, "little") + b"{}")),
        ("pickle instead of safetensors", "malformed", lambda: upload(server, "robot_0", b"\x80\x04\x95" + b"\x00" * 200)),
        ("global-trunk format", "wrong_format", lambda: upload(server, "robot_0", _blob_with(server, metadata={"format": "fedvla-trunk"}))),
        ("future wire version", "wrong_version", lambda: upload(server, "robot_0", _blob_with(server, metadata={"version": "9"}))),
        ("other model", "wrong_model", lambda: upload(server, "robot_0", _blob_with(server, metadata={"trunk_hash": "0" * 16}))),
        ("sent as another client", "wrong_sender", lambda: upload(server, "robot_0", _blob_with(server, client_id="robot_1"))),
        ("blob round differs", "wrong_round", lambda: upload(server, "robot_0", _blob_with(server, metadata={"round": "7"}))),
        ("missing parameter", "wrong_parameters", lambda: upload(server, "robot_0", _blob_with(server, drop=[f"trunk.{first}"]))),
        ("extra tensor", "wrong_parameters", lambda: upload(server, "robot_0", _blob_with(server, tensors={"trunk.evil": torch.zeros(3)}))),
        ("wrong shape", "wrong_shape", lambda: upload(server, "robot_0", _blob_with(server, tensors={f"trunk.{first}": torch.zeros(shape[0] + 1, shape[1])}))),
        ("dtype differs from header", "wrong_dtype", lambda: upload(server, "robot_0", _blob_with(server, tensors={f"trunk.{first}": torch.zeros(shape, dtype=torch.float16)}))),
        ("unknown dtype", "wrong_dtype", lambda: upload(server, "robot_0", _blob_with(server, metadata={"dtype": "int8"}))),
        ("NaN weights", "not_finite", lambda: upload(server, "robot_0", _blob_with(server, tensors={f"trunk.{first}": torch.full(shape, float("nan"))}))),
        ("infinite weights", "not_finite", lambda: upload(server, "robot_0", _blob_with(server, tensors={f"trunk.{first}": torch.full(shape, float("inf"))}))),
        ("int8 delta with a huge scale", "out_of_range", lambda: upload(server, "robot_0", huge_scale_delta(server))),
        ("negative counts", "bad_counts", lambda: upload(server, "robot_0", _blob_with(server, tensors={"expert_counts": -torch.ones(server.spec.num_layers, server.spec.num_experts, dtype=torch.int64)}))),
        ("counts wrong shape", "bad_counts", lambda: upload(server, "robot_0", _blob_with(server, tensors={"expert_counts": torch.ones(3, 3, dtype=torch.int64)}))),
        ("float counts", "bad_counts", lambda: upload(server, "robot_0", _blob_with(server, tensors={"expert_counts": torch.ones(server.spec.num_layers, server.spec.num_experts)}))),
        ("missing counts", "bad_counts", lambda: upload(server, "robot_0", _blob_with(server, drop=["expert_counts"]))),
        ("zero samples", "bad_num_samples", lambda: upload(server, "robot_0", _blob_with(server, metadata={"num_samples": "0"}))),
        ("negative samples", "bad_num_samples", lambda: upload(server, "robot_0", _blob_with(server, metadata={"num_samples": "-5"}))),
        ("join with another model", "wrong_model", lambda: server.join("robot_0", "f" * 16, sign(SECRETS["robot_0"], "join", "robot_0", 0, "f" * 16))),
        ("forged join", "bad_signature", lambda: server.join("robot_2", server.spec.trunk_hash, "0" * 64)),
        ("fetch with a bad signature", "bad_signature", lambda: server.fetch("robot_0", server.round, 0, 10, "0" * 64)),
    ]


def huge_scale_delta(server, client_id: str = "robot_0", scale: float = 3e38) -> bytes:
    """A valid int8_delta update of ``client_id`` whose first scale is finite but huge: rebuilt as
    base + q·scale it would overflow to ±inf."""
    import json

    from safetensors.torch import load as safetensors_load

    base = server.global_trunk  # what a float32 broadcast sends
    local = {k: v + 0.01 for k, v in base.items()}
    blob = encode_update(random_update(server, client_id, trunk=local), server.spec, WireDtype.INT8_DELTA, base=base)
    tensors = safetensors_load(blob)
    first = SCALE_PREFIX + next(iter(server.spec.shapes))
    tensors[first] = torch.full_like(tensors[first], scale)
    header_length = int.from_bytes(blob[:8], "little")
    metadata = json.loads(blob[8: 8 + header_length])["__metadata__"]
    return safetensors_save(tensors, metadata=metadata)


def _chunk_call(server, index: int, twice: bool = False):
    blob = encode_update(random_update(server, "robot_0"), server.spec)
    begun = server.begin_upload("robot_0", server.round, len(blob), sha256_hex(blob),
                                sign_upload(SECRETS["robot_0"], "robot_0", server.round, blob))
    piece = blob[index * begun.chunk_size: (index + 1) * begun.chunk_size] or b"x"
    reply = server.upload_chunk(begun.upload_id, index, piece, zlib.crc32(piece))
    if twice:
        reply = server.upload_chunk(begun.upload_id, index, piece, zlib.crc32(piece))
    return reply


def _tampered(server, blob: bytes):
    """Signed for one blob, then a different blob is sent under the same signature."""
    signature = sign_upload(SECRETS["robot_0"], "robot_0", server.round, blob)
    other = bytearray(blob)
    other[-1] ^= 0xFF
    begun = server.begin_upload("robot_0", server.round, len(blob), sha256_hex(blob), signature)
    for index in range(begun.num_chunks):
        piece = bytes(other[index * begun.chunk_size: (index + 1) * begun.chunk_size])
        assert server.upload_chunk(begun.upload_id, index, piece, zlib.crc32(piece)).ok
    return server.commit_upload(begun.upload_id)
