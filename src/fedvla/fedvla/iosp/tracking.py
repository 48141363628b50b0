"""Detections that persist between control steps: run the detector every N frames and keep object
identities across detector runs by box IoU (greedy, highest IoU first, same name required).

Objects move little between two policy steps, so re-detecting every frame would make detection
dominate IOSP's latency; the track ids let the scene parse (and RViz) follow an object.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from fedvla.iosp.types import Detection


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class IouTracker:
    """Assigns stable ``track_id``s: a detection takes the id of the previous run's detection of the
    same name with the highest IoU (≥ ``min_iou``); the others get new ids."""

    def __init__(self, min_iou: float = 0.3) -> None:
        self.min_iou = min_iou
        self._previous: list[Detection] = []
        self._next_id = 0

    def update(self, detections: list[Detection]) -> list[Detection]:
        pairs = sorted(((box_iou(d.box, p.box), i, j) for i, d in enumerate(detections)
                        for j, p in enumerate(self._previous) if d.name == p.name), reverse=True)
        taken_new, taken_old = set(), set()
        tracked = [dataclasses.replace(d) for d in detections]
        for iou, i, j in pairs:
            if iou < self.min_iou:
                break
            if i in taken_new or j in taken_old:
                continue
            tracked[i].track_id = self._previous[j].track_id
            taken_new.add(i)
            taken_old.add(j)
        for i, d in enumerate(tracked):
            if i not in taken_new:
                d.track_id = self._next_id
                self._next_id += 1
        self._previous = tracked
        return tracked


@dataclasses.dataclass
class CachedDetector:
    """Calls ``detect`` on every ``every_n``-th frame (and the first), returns the tracked result
    of the last call in between. ``every_n`` = 1 detects every frame."""

    detect: Callable[[Any], list[Detection]]  # reads an image, or what the parser hands it instead
    every_n: int = 5
    tracker: IouTracker = dataclasses.field(default_factory=IouTracker)
    _frames: int = 0
    _last: list[Detection] | None = None

    def __call__(self, frame: Any) -> list[Detection]:
        if self._last is None or self._frames % self.every_n == 0:
            self._last = self.tracker.update(self.detect(frame))
        self._frames += 1
        return self._last

    def reset(self) -> None:
        """Forget the cached detections (new episode, new scene)."""
        self._last, self._frames = None, 0
