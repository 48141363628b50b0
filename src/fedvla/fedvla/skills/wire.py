"""The skill federation's blobs on the federation transport (safetensors, string metadata):

* the **manifest** of a round, what ``fetch`` of item "" reads: the router's weights (``router/…``)
  and, in the metadata, the round, the library's skill versions, the skill config every client
  builds its modules from, and the base signature's hash;
* a **skill**, what ``fetch`` of item ``<skill_id>`` reads: its latest weights and version;
* a client's **upload**: per skill it trained, and for the router, the change of the weights
  (``<skill_id>/<name>``), with its sample count, tasks and base signature hash.

Decoding refuses, with a :class:`~fedvla.federation.wire.WireError` naming the
:class:`~fedvla.federation.protocol.RejectReason`, anything that is not such a blob: a hostile
upload never gets further than here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Mapping

import torch

from fedvla.federation.protocol import RejectReason
from fedvla.federation.wire import WireError
from fedvla.skills.aggregation import SkillDelta
from fedvla.skills.library import SkillSignature
from fedvla.skills.modules import SkillConfig

MANIFEST_FORMAT = "fedvla-skill-manifest/1"
SKILL_FORMAT = "fedvla-skill/1"
UPLOAD_FORMAT = "fedvla-skill-upload/1"
ROUTER_ID = "router"


def signature_hash(signature: SkillSignature) -> str:
    """What a skill client joins with: sha256 of its base signature (canonical JSON)."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(signature), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class Manifest:
    round: int
    versions: dict[str, int]  # skill id → latest version
    router_version: int
    skill_config: SkillConfig
    signature_hash: str
    router: dict[str, torch.Tensor]  # encrypted (fedvla.skills.encryption) in a ckks federation
    encryption: str = "none"  # fedvla.skills.federation.SkillEncryption
    key_fingerprint: str = ""  # of the server's public key, in a ckks federation


@dataclasses.dataclass
class SkillUploadBlob:
    client_id: str
    round: int
    num_samples: int
    tasks: list[str]
    signature_hash: str
    deltas: dict[str, dict[str, torch.Tensor]]  # skill id (or ROUTER_ID) → tensor name → delta

    def skill_deltas(self) -> list[SkillDelta]:
        return [SkillDelta(self.client_id, skill, delta, self.num_samples) for skill, delta in self.deltas.items()]


def _save(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def _metadata(blob: bytes) -> dict[str, str]:
    """A safetensors byte string's ``__metadata__`` (from its JSON header)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8: 8 + length])
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def _load(blob: bytes, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    try:
        tensors, metadata = load(bytes(blob)), _metadata(bytes(blob))
    except Exception as err:  # safetensors and the header parse raise their own errors for junk
        raise WireError(RejectReason.MALFORMED, f"not a safetensors blob ({type(err).__name__})") from None
    if metadata.get("format") != expected_format:
        raise WireError(RejectReason.WRONG_FORMAT, f"format {metadata.get('format')!r}, expected {expected_format!r}")
    return tensors, metadata


def _int(metadata: Mapping[str, str], key: str) -> int:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        raise WireError(RejectReason.MALFORMED, f"metadata {key!r} is missing or not an integer") from None


def _json(metadata: Mapping[str, str], key: str):
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError):
        raise WireError(RejectReason.MALFORMED, f"metadata {key!r} is missing or not JSON") from None


def encode_manifest(manifest: Manifest) -> bytes:
    return _save({f"{ROUTER_ID}/{k}": v for k, v in manifest.router.items()},
                 {"format": MANIFEST_FORMAT, "round": str(manifest.round), "versions": json.dumps(manifest.versions),
                  "router_version": str(manifest.router_version),
                  "skill_config": json.dumps(dataclasses.asdict(manifest.skill_config)),
                  "signature_hash": manifest.signature_hash, "encryption": manifest.encryption,
                  "key_fingerprint": manifest.key_fingerprint})


def decode_manifest(blob: bytes) -> Manifest:
    tensors, metadata = _load(blob, MANIFEST_FORMAT)
    router = {k.removeprefix(f"{ROUTER_ID}/"): v for k, v in tensors.items()}
    return Manifest(_int(metadata, "round"), {str(k): int(v) for k, v in _json(metadata, "versions").items()},
                    _int(metadata, "router_version"), SkillConfig(**_json(metadata, "skill_config")),
                    metadata.get("signature_hash", ""), router, metadata.get("encryption", "none"),
                    metadata.get("key_fingerprint", ""))


def encode_skill(skill_id: str, version: int, state: Mapping[str, torch.Tensor]) -> bytes:
    return _save(state, {"format": SKILL_FORMAT, "skill_id": skill_id, "version": str(version)})


def decode_skill(blob: bytes, skill_id: str) -> tuple[int, dict[str, torch.Tensor]]:
    tensors, metadata = _load(blob, SKILL_FORMAT)
    if metadata.get("skill_id") != skill_id:
        raise WireError(RejectReason.WRONG_PARAMETERS, f"the blob is skill {metadata.get('skill_id')!r}, not {skill_id!r}")
    return _int(metadata, "version"), tensors


def encode_upload(upload: SkillUploadBlob) -> bytes:
    return _save({f"{skill}/{name}": tensor for skill, delta in upload.deltas.items() for name, tensor in delta.items()},
                 {"format": UPLOAD_FORMAT, "client_id": upload.client_id, "round": str(upload.round),
                  "num_samples": str(upload.num_samples), "tasks": json.dumps(list(upload.tasks)),
                  "signature_hash": upload.signature_hash})


def decode_upload(blob: bytes) -> SkillUploadBlob:
    tensors, metadata = _load(blob, UPLOAD_FORMAT)
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        skill, _, name = key.partition("/")
        if not skill or not name:
            raise WireError(RejectReason.WRONG_PARAMETERS, f"tensor {key[:80]!r} is not named <skill_id>/<name>")
        deltas.setdefault(skill, {})[name] = tensor
    tasks = _json(metadata, "tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise WireError(RejectReason.MALFORMED, "metadata 'tasks' is not a list of task names")
    return SkillUploadBlob(metadata.get("client_id", ""), _int(metadata, "round"), _int(metadata, "num_samples"),
                           tasks, metadata.get("signature_hash", ""), deltas)
