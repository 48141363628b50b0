"""Grouping scene objects and selecting each group's visual tokens (FedVLA §3.1, Alg. 1 l. 5–11).

Grouping follows the paper's three rules: objects the instruction names are **Target** objects;
other foreground objects are **Surrounding** objects; static scene elements are **Background**
objects. Which detections the instruction names comes from :mod:`fedvla.iosp.targets`
(text similarity between instruction phrases and object names).

Token selection picks, per group, the top-k patch tokens of an image's patch grid (k = 8 in the
paper). Two rules, named in the config (``selection_rule``) so a run says which one was active:

* ``clip`` — the paper's: cosine similarity between each patch embedding of a vision-language
  encoder and the group's text embedding (the mean of its object-name embeddings). Meaningful
  only with pretrained CLIP weights.
* ``box_mask`` — the offline default: the fraction of each patch covered by the group's masks
  (boxes where a detector gives no mask). A patch is selected when its coverage is at least
  ``min(min_coverage, half the best patch's coverage)`` (and not zero): a large object gives its
  well-covered patches, not its fringe; an object smaller than a patch still gives the patches
  it lies on. So a group may have fewer than k valid tokens rather than k tokens that miss it.
  Without pretrained CLIP weights patch-to-text similarity is noise; overlap is not.

A group with no object, or with fewer valid patches than k, has its remaining slots marked
invalid (``valid`` False); the policy masks them out.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Sequence

import numpy as np

from fedvla.config import parse_enum, require
from fedvla.iosp.types import Detection, ObjectGroup, SelectedTokens

class SelectionRule(str, enum.Enum):
    BOX_MASK = "box_mask"
    CLIP = "clip"


@dataclasses.dataclass(kw_only=True)
class TokenSelectionConfig:
    selection_rule: SelectionRule = SelectionRule.BOX_MASK
    tokens_per_group: int = 8  # the paper's top-8
    min_coverage: float = 0.5  # box_mask: patch coverage that always suffices (see the module doc)

    def __post_init__(self) -> None:
        self.selection_rule = parse_enum(SelectionRule, self.selection_rule, "selection_rule")
        require(self.tokens_per_group >= 1, "tokens_per_group", f"must be at least 1, got {self.tokens_per_group}")
        require(0.0 < self.min_coverage <= 1.0, "min_coverage", f"{self.min_coverage} is outside (0, 1]", "0 < x <= 1")


def group_detections(detections: Sequence[Detection], target_names: Collection[str]) -> list[ObjectGroup]:
    """The paper's three rules, one group per detection."""
    targets = set(target_names)
    return [ObjectGroup.TARGET if d.name in targets else
            ObjectGroup.SURROUNDING if d.foreground else ObjectGroup.BACKGROUND for d in detections]


def object_mask(detection: Detection, height: int, width: int) -> np.ndarray:
    """The detection's mask, or its box filled where the detector gives no mask."""
    if detection.mask is not None:
        if detection.mask.shape != (height, width):
            raise ValueError(f"{detection.name}: mask {detection.mask.shape} differs from the image ({height}, {width})")
        return detection.mask.astype(bool)
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in detection.box)
    mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return mask


def patch_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows·cols,) fraction of each patch of a ``grid`` over the image that ``mask`` covers.

    Patch edges follow ``linspace`` over the image, so sizes that do not divide evenly still
    cover every pixel exactly once.
    """
    y_edges, x_edges = patch_edges(mask.shape, grid)
    # Sum of mask pixels per patch from the integral image: O(H·W) once, O(1) per patch.
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y0, y1 = y_edges[:-1, None], y_edges[1:, None]
    x0, x1 = x_edges[None, :-1], x_edges[None, 1:]
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (y1 - y0) * (x1 - x0)
    return (covered / np.maximum(area, 1)).reshape(-1).astype(np.float32)


def patch_edges(image_hw: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel edges of a ``grid`` over an image: rows + 1 y edges, cols + 1 x edges (``linspace``, so
    sizes that do not divide evenly still cover every pixel exactly once)."""
    (height, width), (rows, cols) = image_hw, grid
    return (np.linspace(0, height, rows + 1).round().astype(int), np.linspace(0, width, cols + 1).round().astype(int))


def tokens_on_objects(detections: Sequence[Detection], groups: Sequence[ObjectGroup], selection: SelectedTokens,
                      image_hw: tuple[int, int], grid: tuple[int, int]) -> list[np.ndarray]:
    """Per detection, the selected tokens of its group whose patch the object covers (any pixel of
    its mask, or of its box without one): which object each token of a parse lies on."""
    height, width = image_hw
    y_edges, x_edges = patch_edges(image_hw, grid)
    cols = grid[1]
    out = []
    for detection, group in zip(detections, groups):
        mask = object_mask(detection, height, width)
        chosen = selection.indices[group][selection.valid[group]]
        on = [int(i) for i in chosen
              if mask[y_edges[i // cols]:y_edges[i // cols + 1], x_edges[i % cols]:x_edges[i % cols + 1]].any()]
        out.append(np.array(on, dtype=np.int64))
    return out


def _top_k(scores: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")[:k]  # stable: ties go to the lower patch index
    indices = np.zeros(k, dtype=np.int64)
    chosen = np.zeros(k, dtype=np.float32)
    indices[: len(order)] = order
    chosen[: len(order)] = scores[order]
    valid = np.zeros(k, dtype=bool)
    valid[: len(order)] = scores[order] >= threshold
    return indices, valid, chosen


def select_by_overlap(detections: Sequence[Detection], groups: Sequence[ObjectGroup], image_hw: tuple[int, int],
                      grid: tuple[int, int], config: TokenSelectionConfig) -> SelectedTokens:
    """``box_mask`` rule: per group, the k patches its objects cover most (≥ ``min_coverage``)."""
    height, width = image_hw
    k = config.tokens_per_group
    out = SelectedTokens.empty(k)
    for group in ObjectGroup:
        members = [d for d, g in zip(detections, groups) if g is group]
        if not members:
            continue
        union = np.zeros((height, width), dtype=bool)
        for detection in members:
            union |= object_mask(detection, height, width)
        coverage = patch_coverage(union, grid)
        threshold = max(min(config.min_coverage, 0.5 * float(coverage.max())), np.finfo(np.float32).tiny)
        out.indices[group], out.valid[group], out.scores[group] = _top_k(coverage, k, threshold)
    return out


def select_by_similarity(patch_embeddings: np.ndarray, group_text_embeddings: Sequence[np.ndarray | None],
                         config: TokenSelectionConfig) -> SelectedTokens:
    """``clip`` rule: per group, the k patches most cosine-similar to the group's text embedding
    (``None`` for a group with no object). Every slot of a present group is valid."""
    patches = np.asarray(patch_embeddings, dtype=np.float32)
    patches = patches / np.maximum(np.linalg.norm(patches, axis=1, keepdims=True), 1e-8)
    k = config.tokens_per_group
    out = SelectedTokens.empty(k)
    for group, text in zip(ObjectGroup, group_text_embeddings):
        if text is None:
            continue
        text = np.asarray(text, dtype=np.float32)
        similarity = patches @ (text / max(float(np.linalg.norm(text)), 1e-8))
        out.indices[group], out.valid[group], out.scores[group] = _top_k(similarity, k, -np.inf)
    return out
