"""Federated skill rounds on the server's side: each client uploads, per skill it was routed to,
the change of that skill's weights (its delta) and its sample count; the server checks every
upload (:func:`check_skill_delta`) and aggregates each skill over the clients that trained it,
weighted by their samples (:func:`aggregate_skill_deltas`): ``Δ_s = Σ_c n_c Δ_{s,c} / Σ_c n_c``.
A skill nobody trained this round keeps its weights."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch

from fedvla.federation.protocol import RejectReason
from fedvla.federation.wire import WireError


class SkillUploadError(WireError):
    """A skill delta refused, with the :class:`RejectReason` trunk uploads are refused with."""


@dataclasses.dataclass(frozen=True)
class SkillDelta:
    client_id: str
    skill_id: str
    delta: Mapping[str, torch.Tensor]
    num_samples: int


def check_skill_delta(upload: SkillDelta, routed: Iterable[str], template: Mapping[str, torch.Tensor],
                      signature_ok: bool, max_bytes: int) -> None:
    """Refuse an upload the way trunk uploads are refused: with the reason, before it is kept."""
    check_skill_routing(upload, routed, signature_ok, max_bytes)
    shapes = {k: tuple(v.shape) for k, v in upload.delta.items()}
    expected = {k: tuple(v.shape) for k, v in template.items()}
    if shapes != expected:
        raise SkillUploadError(RejectReason.WRONG_SHAPE, f"tensors {shapes} are not the skill's {expected}")
    for name, tensor in upload.delta.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise SkillUploadError(RejectReason.NOT_FINITE, f"{name} is not finite floating point")


def check_skill_routing(upload: SkillDelta, routed: Iterable[str], signature_ok: bool, max_bytes: int) -> None:
    """The checks that need no look inside the values (all an encrypted upload allows): the base,
    the routing, the sample count and the size."""
    if not signature_ok:
        raise SkillUploadError(RejectReason.WRONG_MODEL, f"{upload.client_id}'s base policy is not the library's")
    if upload.skill_id not in set(routed):
        raise SkillUploadError(RejectReason.NOT_ROUTED, f"{upload.client_id} was not routed to {upload.skill_id!r}")
    if not isinstance(upload.num_samples, int) or upload.num_samples <= 0:
        raise SkillUploadError(RejectReason.BAD_NUM_SAMPLES, f"{upload.num_samples!r} is not a positive count")
    size = sum(t.numel() * t.element_size() for t in upload.delta.values())
    if size > max_bytes:
        raise SkillUploadError(RejectReason.TOO_LARGE, f"{size} bytes, at most {max_bytes}")


def aggregate_skill_deltas(uploads: Iterable[SkillDelta]) -> dict[str, dict[str, torch.Tensor]]:
    """Per skill, the sample-weighted mean of its clients' deltas (float64 sums, the skill's dtype)."""
    by_skill: dict[str, list[SkillDelta]] = {}
    for upload in uploads:
        by_skill.setdefault(upload.skill_id, []).append(upload)
    result = {}
    for skill_id, group in by_skill.items():
        total = float(sum(u.num_samples for u in group))
        names = list(group[0].delta)
        result[skill_id] = {name: (sum(u.delta[name].double() * (u.num_samples / total) for u in group))
                            .to(group[0].delta[name].dtype) for name in names}
    return result
