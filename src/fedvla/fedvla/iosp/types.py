"""The types every IOSP stage shares (detectors, grouping, token selection, the scene-parser node)."""
from __future__ import annotations

import dataclasses
import enum

import numpy as np


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
