"""Wire format of the federation: trunk weights + expert counts as one safetensors blob.

A blob is the safetensors layout (an 8-byte header length, a JSON header with every tensor's
dtype, shape and byte range, then the raw little-endian bytes): no pickle, nothing executes on
load, and the header is parsed by the safetensors library (Rust) before any tensor is touched.
The header's ``__metadata__`` carries our versioned envelope:

=================  =====================================================================
``format``         ``fedvla-trunk`` (a global trunk) or ``fedvla-update`` (a client upload)
``version``        :data:`WIRE_VERSION`; a reader refuses any other
``trunk_hash``     :attr:`TrunkSpec.trunk_hash`: names, shapes and the trunk's model settings
``round``          the federation round the blob belongs to
``dtype``          ``float32`` / ``bfloat16`` / ``float16``: every trunk tensor has it; or
                   ``int8_delta`` (updates only, see below)
``client_id``      updates only: the sender
``num_samples``    updates only: local training samples (FedAvg weight)
=================  =====================================================================

Tensors: ``trunk.<name>`` for each trunk parameter and, in updates, ``expert_counts`` (int64,
L×K). Sending bf16/fp16 halves the bytes; the server upcasts to fp32 before aggregating.

``int8_delta`` sends the round's change instead of the weights: per parameter, ``Δ = θ_local −
θ_global`` (θ_global as the client received it) quantised per row (first dimension) to int8 with
``scale.<name> = max|Δ_row| / 127`` (float32) and round-to-nearest; the server rebuilds ``θ_global
+ q·scale``. Error per element ≤ ``max|Δ_row| / 254``: a quarter of the fp32 bytes, for an error
that shrinks with the update itself (and deterministic, so a resumed server rebuilds the same
update). A scale that allows a change of more than ``MAX_DELTA_RATIO`` times ``max(1, max|θ_global|)``
is refused (``out_of_range``), and so is a rebuilt tensor that is not finite. Chosen because an MoE trunk is most of the model, so sending only the trunk in bf16
saves about half of a full fp32 model's bytes, and int8 deltas about three quarters.

Integrity and authentication: the sender signs ``sha256(blob)`` with HMAC-SHA256 under its
per-client secret (:func:`sign_upload`), bound to the client id and the round, so a blob cannot be
replayed into another round or attributed to another client.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import math
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from fedvla.federation.protocol import RejectReason

WIRE_VERSION = "1"
TRUNK_FORMAT, UPDATE_FORMAT = "fedvla-trunk", "fedvla-update"
COUNTS_KEY = "expert_counts"
PARAM_PREFIX = "trunk."
SCALE_PREFIX = "scale."
# int8_delta: the largest change one update may make to a tensor, as a multiple of max(1, the
# tensor's largest magnitude). A round of training moves weights by a small fraction of themselves;
# 1000x is far beyond any real update and far below float32 overflow.
MAX_DELTA_RATIO = 1000.0


class WireDtype(str, enum.Enum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    INT8_DELTA = "int8_delta"  # updates only: quantised change from the round's global trunk

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "int8_delta": torch.int8}[self.value]

    @property
    def is_delta(self) -> bool:
        return self is WireDtype.INT8_DELTA


class WireError(ValueError):
    """A blob or request is invalid; ``reason`` is the machine-readable cause."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
    """What every blob of one federation must match: parameter names and shapes, the number of
    MoE layers and experts (the counts' shape) and a hash that also covers the trunk's model
    settings (two trunks with equal shapes but different routing must not be mixed)."""

    shapes: Mapping[str, tuple[int, ...]]
    num_layers: int
    num_experts: int
    trunk_hash: str

    @classmethod
    def from_trunk(cls, trunk: Mapping[str, torch.Tensor], *, num_layers: int, num_experts: int,
                   settings: Mapping[str, object]) -> TrunkSpec:
        shapes = {name: tuple(t.shape) for name, t in trunk.items()}
        text = json.dumps({"shapes": {k: list(v) for k, v in sorted(shapes.items())}, "layers": num_layers,
                           "experts": num_experts, "settings": dict(sorted(settings.items()))}, sort_keys=True)
        return cls(shapes=shapes, num_layers=num_layers, num_experts=num_experts,
                   trunk_hash=hashlib.sha256(text.encode()).hexdigest()[:16])

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def max_blob_bytes(self) -> int:
        """The largest valid update (fp32 trunk + counts + a generous header)."""
        return 4 * self.num_parameters + 8 * self.num_layers * self.num_experts + 64 * 1024 + 256 * len(self.shapes)


@dataclasses.dataclass
class TrunkUpdate:
    """One client's contribution to a round."""

    client_id: str
    round: int
    trunk: dict[str, torch.Tensor]  # parameter name (without prefix) → tensor
    expert_counts: torch.Tensor  # (L, K) int64
    num_samples: int


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _signed_message(kind: str, client_id: str, round_index: int, digest: str) -> bytes:
    return f"fedvla-{kind}-v{WIRE_VERSION}|{client_id}|{round_index}|{digest}".encode()


def sign(secret: str, kind: str, client_id: str, round_index: int, digest: str = "") -> str:
    """HMAC-SHA256 (hex) of a request of ``kind`` (``join``, ``fetch``, ``upload``)."""
    return hmac.new(secret.encode(), _signed_message(kind, client_id, round_index, digest), "sha256").hexdigest()


def verify(secret: str, signature: str, kind: str, client_id: str, round_index: int, digest: str = "") -> bool:
    return hmac.compare_digest(sign(secret, kind, client_id, round_index, digest), signature)


def sign_upload(secret: str, client_id: str, round_index: int, blob: bytes) -> str:
    return sign(secret, "upload", client_id, round_index, sha256_hex(blob))


def _row_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def quantize_delta(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and per-row float32 scales of a float tensor (see the module docstring)."""
    rows = _row_view(delta.float())
    scale = rows.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / safe.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q.reshape(delta.shape).contiguous(), scale.contiguous()


def dequantize_delta(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (_row_view(q).float() * scale.unsqueeze(1)).reshape(q.shape)


def _trunk_tensors(trunk: Mapping[str, torch.Tensor], dtype: WireDtype,
                   base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    if not dtype.is_delta:
        return {PARAM_PREFIX + name: t.detach().to("cpu", dtype.torch_dtype).contiguous() for name, t in trunk.items()}
    if base is None:
        raise ValueError("int8_delta needs the round's global trunk (base) to encode the change from")
    tensors = {}
    for name, t in trunk.items():
        q, scale = quantize_delta(t.detach().cpu().float() - base[name].detach().cpu().float())
        tensors[PARAM_PREFIX + name], tensors[SCALE_PREFIX + name] = q, scale
    return tensors


def encode_trunk(trunk: Mapping[str, torch.Tensor], spec: TrunkSpec, round_index: int,
                 dtype: WireDtype = WireDtype.FLOAT32) -> bytes:
    """The global trunk of ``round_index`` as a blob."""
    if WireDtype(dtype).is_delta:
        raise ValueError("a global trunk is sent as weights (float32/bfloat16/float16), not as a delta")
    metadata = {"format": TRUNK_FORMAT, "version": WIRE_VERSION, "trunk_hash": spec.trunk_hash,
                "round": str(round_index), "dtype": WireDtype(dtype).value}
    return safetensors_save(_trunk_tensors(trunk, WireDtype(dtype)), metadata=metadata)


def encode_update(update: TrunkUpdate, spec: TrunkSpec, dtype: WireDtype = WireDtype.FLOAT32,
                  base: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """An update blob; ``base`` (the round's global trunk as received) is needed for int8_delta."""
    dtype = WireDtype(dtype)
    tensors = _trunk_tensors(update.trunk, dtype, base)
    tensors[COUNTS_KEY] = update.expert_counts.detach().to("cpu", torch.int64).contiguous()
    metadata = {"format": UPDATE_FORMAT, "version": WIRE_VERSION, "trunk_hash": spec.trunk_hash,
                "round": str(update.round), "dtype": dtype.value, "client_id": update.client_id,
                "num_samples": str(update.num_samples)}
    return safetensors_save(tensors, metadata=metadata)


def _read_blob(blob: bytes, spec: TrunkSpec, expected_format: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if len(blob) > spec.max_blob_bytes():
        raise WireError(RejectReason.TOO_LARGE, f"{len(blob)} bytes, at most {spec.max_blob_bytes()} for this trunk")
    try:
        header_len = int.from_bytes(blob[:8], "little")
        if len(blob) < 8 or header_len > len(blob) - 8:
            raise WireError(RejectReason.MALFORMED, "truncated safetensors header")
        header = json.loads(bytes(blob[8: 8 + header_len]))
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise WireError(RejectReason.MALFORMED, "__metadata__ is not a string map")
        tensors = safetensors_load(bytes(blob))
    except WireError:
        raise
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, RuntimeError) as err:
        raise WireError(RejectReason.MALFORMED, f"not a safetensors blob ({str(err).splitlines()[0][:120]})") from None
    if metadata.get("format") != expected_format:
        raise WireError(RejectReason.WRONG_FORMAT, f"format {metadata.get('format')!r}, expected {expected_format!r}")
    if metadata.get("version") != WIRE_VERSION:
        raise WireError(RejectReason.WRONG_VERSION,
                        f"wire version {metadata.get('version')!r}; this server reads {WIRE_VERSION!r}")
    if metadata.get("trunk_hash") != spec.trunk_hash:
        raise WireError(RejectReason.WRONG_MODEL, f"trunk hash {metadata.get('trunk_hash')!r}, the federation's is "
                        f"{spec.trunk_hash!r}: the client's model config differs from the server's")
    return metadata, tensors


def _check_trunk(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], spec: TrunkSpec,
                 base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    try:
        dtype = WireDtype(metadata.get("dtype"))
    except ValueError:
        raise WireError(RejectReason.WRONG_DTYPE, f"dtype {metadata.get('dtype')!r} "
                        f"(allowed: {', '.join(d.value for d in WireDtype)})") from None
    if dtype.is_delta and base is None:
        raise WireError(RejectReason.WRONG_DTYPE, "an int8_delta blob where weights were expected")
    trunk = {k.removeprefix(PARAM_PREFIX): v for k, v in tensors.items() if k.startswith(PARAM_PREFIX)}
    if set(trunk) != set(spec.shapes):
        missing, extra = sorted(set(spec.shapes) - set(trunk)), sorted(set(trunk) - set(spec.shapes))
        raise WireError(RejectReason.WRONG_PARAMETERS, f"missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in trunk.items():
        if tuple(t.shape) != spec.shapes[name]:
            raise WireError(RejectReason.WRONG_SHAPE, f"{name}: shape {tuple(t.shape)}, expected {spec.shapes[name]}")
        if t.dtype != dtype.torch_dtype:
            raise WireError(RejectReason.WRONG_DTYPE, f"{name}: {t.dtype}, the header says {dtype.value}")
        if not bool(torch.isfinite(t).all()):
            raise WireError(RejectReason.NOT_FINITE, f"{name} has NaN or infinite values")
    if not dtype.is_delta:
        return {name: trunk[name].float() for name in spec.shapes}  # the model's order, not the file's
    rebuilt = {}
    for name in spec.shapes:
        scale = tensors.get(SCALE_PREFIX + name)
        rows = trunk[name].shape[0] if trunk[name].dim() >= 2 else 1
        if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != (rows,):
            raise WireError(RejectReason.WRONG_SHAPE, f"{SCALE_PREFIX}{name}: expected float32 ({rows},), got "
                            f"{None if scale is None else (scale.dtype, tuple(scale.shape))}")
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise WireError(RejectReason.NOT_FINITE, f"{SCALE_PREFIX}{name} must be finite and non-negative")
        base_tensor = base[name].float()
        # A finite but huge scale (3e38) overflows base + q·scale to ±inf: bound the change by the
        # base's own magnitude first, then check what was rebuilt.
        largest_change = 127.0 * float(scale.max()) if scale.numel() else 0.0
        allowed = MAX_DELTA_RATIO * max(1.0, float(base_tensor.abs().max()) if base_tensor.numel() else 0.0)
        if largest_change > allowed:
            raise WireError(RejectReason.OUT_OF_RANGE, f"{SCALE_PREFIX}{name} allows changes up to "
                            f"{largest_change:.3g}, more than {MAX_DELTA_RATIO:g} x the weights' largest magnitude "
                            f"({allowed:.3g})")
        rebuilt[name] = base_tensor + dequantize_delta(trunk[name], scale)
        if not bool(torch.isfinite(rebuilt[name]).all()):
            raise WireError(RejectReason.NOT_FINITE, f"{name} rebuilt from its int8 delta has NaN or infinite values")
    return rebuilt


def _parse_int(metadata: Mapping[str, str], key: str, reason: RejectReason) -> int:
    text = metadata.get(key)
    if text is None or not text.isdigit():
        raise WireError(reason, f"{key} {text!r} is not a non-negative integer")
    return int(text)


def decode_trunk(blob: bytes, spec: TrunkSpec) -> tuple[int, dict[str, torch.Tensor]]:
    """A global-trunk blob → (round, fp32 trunk). Raises :class:`WireError`."""
    metadata, tensors = _read_blob(blob, spec, TRUNK_FORMAT)
    if set(tensors) - {PARAM_PREFIX + k for k in spec.shapes}:
        raise WireError(RejectReason.WRONG_PARAMETERS, "unexpected tensors in a trunk blob")
    return _parse_int(metadata, "round", RejectReason.WRONG_ROUND), _check_trunk(tensors, metadata, spec)


def decode_update(blob: bytes, spec: TrunkSpec, *, base: Mapping[str, torch.Tensor] | None = None,
                  max_num_samples: int = 10**9) -> TrunkUpdate:
    """A client upload → :class:`TrunkUpdate` (fp32 trunk), every field checked; ``base`` is the
    round's global trunk as broadcast (int8_delta updates are rebuilt on it). Raises :class:`WireError`."""
    metadata, tensors = _read_blob(blob, spec, UPDATE_FORMAT)
    allowed = {PARAM_PREFIX + k for k in spec.shapes} | {COUNTS_KEY}
    if metadata.get("dtype") == WireDtype.INT8_DELTA.value:
        allowed |= {SCALE_PREFIX + k for k in spec.shapes}
    unexpected = set(tensors) - allowed
    if unexpected:
        raise WireError(RejectReason.WRONG_PARAMETERS, f"unexpected tensors {sorted(unexpected)[:3]}")
    trunk = _check_trunk(tensors, metadata, spec, base)
    counts = tensors.get(COUNTS_KEY)
    expected_shape = (spec.num_layers, spec.num_experts)
    if counts is None:
        raise WireError(RejectReason.BAD_COUNTS, "expert_counts is missing")
    if tuple(counts.shape) != expected_shape or counts.dtype != torch.int64:
        raise WireError(RejectReason.BAD_COUNTS, f"expert_counts: {counts.dtype} {tuple(counts.shape)}, "
                        f"expected int64 {expected_shape}")
    if bool((counts < 0).any()):
        raise WireError(RejectReason.BAD_COUNTS, "expert_counts has negative entries")
    num_samples = _parse_int(metadata, "num_samples", RejectReason.BAD_NUM_SAMPLES)
    if not 0 < num_samples <= max_num_samples:
        raise WireError(RejectReason.BAD_NUM_SAMPLES, f"num_samples {num_samples} outside 1..{max_num_samples}")
    client_id = metadata.get("client_id", "")
    return TrunkUpdate(client_id=client_id, round=_parse_int(metadata, "round", RejectReason.WRONG_ROUND),
                       trunk=trunk, expert_counts=counts, num_samples=num_samples)
