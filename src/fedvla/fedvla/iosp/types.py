"""The types every IOSP stage shares (detectors, grouping, token selection, the scene-parser node)."""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np


# COCO classes that are static scene elements (YOLO does not know which are): the default
# background classes of the YOLOv8 detector.
COCO_BACKGROUND_CLASSES = ("dining table", "bed", "couch", "refrigerator", "oven")


class ObjectGroup(enum.IntEnum):
    """The paper's three object groups; the values index the policy's per-group expert statistics."""

    TARGET = 0  # objects the instruction names
    SURROUNDING = 1  # other foreground objects the robot may touch or avoid
    BACKGROUND = 2  # static scene elements (table, walls, the robot's base)


@dataclasses.dataclass
class Detection:
    """One object in one image. ``box`` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    name: str  # the class or object name ("drawer", "puck", "door lock")
    box: tuple[float, float, float, float]
    score: float = 1.0
    mask: np.ndarray | None = None  # (H, W) bool, where the detector provides one
    foreground: bool = True  # False for static scene elements (the simulator knows; YOLO: config)
    track_id: int = -1  # stable across frames when tracked

    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@dataclasses.dataclass(frozen=True)
class ObjectLabel:
    """One entry of a segmentation label table: pixels labelled ``i`` show object ``i``."""

    name: str
    foreground: bool  # False for static scene elements


def detections_from_labels(labels: np.ndarray, objects: Sequence[ObjectLabel],
                           min_pixels: int = 4) -> list[Detection]:
    """One detection per object with at least ``min_pixels`` pixels in a (H, W) label image
    (object index per pixel, -1 for none): its mask, the mask's extent as box, score 1.0 and the
    object index as ``track_id`` (a simulator knows identities: no tracker needed)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label image is (H, W), got shape {labels.shape}")
    if labels.size and int(labels.max()) >= len(objects):
        raise ValueError(f"label {int(labels.max())} has no entry in a table of {len(objects)} objects")
    counts = np.bincount(labels.ravel().astype(np.int64) + 1, minlength=len(objects) + 1)[1:]
    detections = []
    for index in np.flatnonzero(counts >= min_pixels):
        mask = labels == index
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        obj = objects[index]
        detections.append(Detection(
            name=obj.name, box=(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
            score=1.0, mask=mask, foreground=obj.foreground, track_id=int(index)))
    return detections


NUM_GROUPS = len(ObjectGroup)


@dataclasses.dataclass
class SelectedTokens:
    """Per group (rows: :class:`ObjectGroup` order), k patch indices (row-major in the grid), whether
    each slot holds a real selection, and its score (coverage or cosine similarity)."""

    indices: np.ndarray  # (3, k) int64
    valid: np.ndarray  # (3, k) bool
    scores: np.ndarray  # (3, k) float32

    @classmethod
    def empty(cls, tokens_per_group: int) -> SelectedTokens:
        """No token selected in any group (every slot invalid)."""
        shape = (NUM_GROUPS, tokens_per_group)
        return cls(indices=np.zeros(shape, np.int64), valid=np.zeros(shape, bool), scores=np.zeros(shape, np.float32))

    def flat_indices(self) -> np.ndarray:
        """(3·k,) int32, row-major by group, -1 for empty slots (the ParsedScene message layout)."""
        return np.where(self.valid, self.indices, -1).astype(np.int32).reshape(-1)

    @classmethod
    def from_flat(cls, flat: Sequence[int], tokens_per_group: int) -> SelectedTokens:
        values = np.asarray(flat, dtype=np.int64)
        if values.shape != (NUM_GROUPS * tokens_per_group,):
            raise ValueError(f"expected {NUM_GROUPS} x {tokens_per_group} token indices, got {values.shape[0]}")
        grid = values.reshape(NUM_GROUPS, tokens_per_group)
        return cls(indices=np.maximum(grid, 0), valid=grid >= 0, scores=np.zeros(grid.shape, np.float32))

    def group_of_patch(self, num_patches: int) -> np.ndarray:
        """(num_patches,) int8: the group whose selection holds each patch, -1 for none."""
        out = np.full(num_patches, -1, dtype=np.int8)
        for group in range(NUM_GROUPS):
            out[self.indices[group][self.valid[group]]] = group
        return out


@dataclasses.dataclass(frozen=True)
class LabelledFrame:
    """What the ``sim`` detector reads: a simulated camera frame's label image and its table."""

    labels: np.ndarray  # (H, W) index into ``objects`` per pixel, -1 for none
    objects: tuple[ObjectLabel, ...]
