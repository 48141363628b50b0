"""Detection caching between control steps and IoU tracking."""
import numpy as np

from fedvla.iosp.tracking import CachedDetector, IouTracker, box_iou
from fedvla.iosp.types import Detection


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_tracks_follow_moving_objects_and_new_objects_get_new_ids() -> None:
    tracker = IouTracker(min_iou=0.3)
    first = tracker.update([Detection("cup", (0, 0, 10, 10)), Detection("cup", (50, 50, 60, 60))])
    assert [d.track_id for d in first] == [0, 1]
    second = tracker.update([Detection("cup", (52, 51, 62, 61)), Detection("cup", (1, 0, 11, 10)),
                             Detection("drawer", (0, 0, 10, 10))])  # same place, other name: new object
    assert [d.track_id for d in second] == [1, 0, 2]
    third = tracker.update([Detection("cup", (100, 100, 110, 110))])  # moved too far: a new track
    assert third[0].track_id == 3


def test_detector_runs_every_n_frames() -> None:
    calls = []

    def detect(image):
        calls.append(image.mean())
        return [Detection("puck", (0, 0, 4, 4))]

    cached = CachedDetector(detect, every_n=3)
    frames = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(7)]
    results = [cached(f) for f in frames]
    assert calls == [0, 3, 6] and all(r[0].track_id == 0 for r in results)
    cached.reset()
    cached(frames[1])
    assert calls[-1] == 1
