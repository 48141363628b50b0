"""Which camera frame the scene parser parses next, and with which label and depth image.

Colour, label and depth images of a camera come on separate topics: one may arrive a few frames
before or after its colour image. Per camera this keeps the newest unparsed colour frame (older
ones are skipped: the parser runs at its own rate) and the last ``keep`` label and depth images by
stamp. A frame is ready once its label image of the same stamp is in (when labels are needed); a
parsed frame whose depth image has not arrived waits for it (the newest such frame per camera).
Payloads are whatever the caller stores (ROS messages in the node): nothing here decodes them.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

Payload = TypeVar("Payload")


@dataclasses.dataclass
class Frame(Generic[Payload]):
    stamp_ns: int
    image: Payload
    received_s: float  # on the caller's clock: how long its labels have been missing


@dataclasses.dataclass
class AwaitingDepth:
    stamp_ns: int
    parsed: Any  # what the caller needs to finish the frame once its depth image arrives


class _ByStamp(OrderedDict):
    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def add(self, stamp_ns: int, payload: Any) -> None:
        self[stamp_ns] = payload
        while len(self) > self.keep:
            self.popitem(last=False)


class FrameSync:
    def __init__(self, cameras: Iterable[str], *, needs_labels: bool, keep: int = 8) -> None:
        self.needs_labels = needs_labels
        self._frames: dict[str, Frame] = {}
        self._labels = {c: _ByStamp(keep) for c in cameras}
        self._depth = {c: _ByStamp(keep) for c in cameras}
        self._awaiting: dict[str, AwaitingDepth] = {}

    def add_image(self, camera: str, stamp_ns: int, image: Any, now_s: float) -> None:
        self._frames[camera] = Frame(stamp_ns, image, now_s)

    def add_labels(self, camera: str, stamp_ns: int, labels: Any) -> None:
        self._labels[camera].add(stamp_ns, labels)

    def take(self, camera: str) -> tuple[Frame, Any] | None:
        """The camera's newest unparsed frame and its label image (None without labels), removed;
        None while there is no frame, or its label image is still on the way."""
        frame = self._frames.get(camera)
        if frame is None:
            return None
        labels = None
        if self.needs_labels:
            labels = self._labels[camera].get(frame.stamp_ns)
            if labels is None:
                return None
        del self._frames[camera]
        return frame, labels

    def waiting_for_labels_s(self, camera: str, now_s: float) -> float:
        """How long the camera's newest frame has waited for its label image (0: none waiting)."""
        frame = self._frames.get(camera)
        return now_s - frame.received_s if frame is not None and self.needs_labels else 0.0

    def depth(self, camera: str, stamp_ns: int) -> Any:
        """The depth image of this stamp, if it has arrived."""
        return self._depth[camera].get(stamp_ns)

    def await_depth(self, camera: str, stamp_ns: int, parsed: Any) -> None:
        """Finish this parsed frame when its depth image arrives (replaces an older waiting one)."""
        self._awaiting[camera] = AwaitingDepth(stamp_ns, parsed)

    def add_depth(self, camera: str, stamp_ns: int, depth: Any) -> AwaitingDepth | None:
        """Keep a depth image; returns the parsed frame that was waiting for it, if one was."""
        self._depth[camera].add(stamp_ns, depth)
        awaiting = self._awaiting.get(camera)
        if awaiting is not None and awaiting.stamp_ns == stamp_ns:
            return self._awaiting.pop(camera)
        return None
