"""The RealSense backends against librealsense's software device (no hardware, no mocks)."""
import numpy as np
import pytest

from fedvla.camera import CameraBackend, CameraConfig, CameraError, EndOfRecording, make_camera

from support.realsense_software_device import (
    CX, CY, DEPTH_SCALE_M, FX, FY, HEIGHT, SERIAL, WIDTH, SoftwareCamera, make_frames, rs,
)
from fedvla.camera.realsense import frameset_to_frame


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    frames = make_frames(12)
    path = SoftwareCamera().record(tmp_path_factory.mktemp("rs") / "injected.db3", frames)
    return path, frames


def assert_aligned_depth(aligned: np.ndarray, injected: np.ndarray) -> None:
    """Colour and depth share intrinsics and pose, so rs.align keeps depth values in place, up
    to its rasterisation: a few holes (0) and a few values taken from an adjacent pixel (the
    injected ramp changes by at most 5 mm between neighbours)."""
    covered = aligned > 0
    assert covered.mean() > 0.95
    diff = np.abs(aligned[covered].astype(int) - injected[covered].astype(int))
    assert diff.max() <= 5
    assert (diff == 0).mean() > 0.97


def test_unaligned_depth_is_byte_identical() -> None:
    frames = make_frames(3, seed=2)
    converted = [frameset_to_frame(fs, None, DEPTH_SCALE_M) for fs in SoftwareCamera().framesets(frames)]
    complete = [f for f in converted if f.depth is not None]
    assert complete
    for frame in complete:
        np.testing.assert_array_equal(frame.depth, frames[_match(frame, frames)].depth)


def _match(frame, frames) -> int:
    """Index of the injected frame whose pixels ``frame`` reproduces exactly."""
    hits = [i for i, f in enumerate(frames) if np.array_equal(f.rgb, frame.rgb)]
    assert len(hits) == 1, "the colour image is not byte-identical to any injected frame"
    return hits[0]


def test_syncer_framesets_convert_byte_identical_with_intrinsics() -> None:
    frames = make_frames(5, seed=1)
    framesets = SoftwareCamera().framesets(frames)
    align = rs.align(rs.stream.color)
    converted = [frameset_to_frame(fs, align, DEPTH_SCALE_M) for fs in framesets]
    complete = [f for f in converted if f.depth is not None]  # the syncer may emit colour alone first
    assert len(complete) >= len(frames) - 1
    for frame in complete:
        injected = frames[_match(frame, frames)]
        assert_aligned_depth(frame.depth, injected.depth)
        assert frame.depth_scale_m == DEPTH_SCALE_M
        intr = frame.intrinsics
        assert (intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy) == (WIDTH, HEIGHT, FX, FY, CX, CY)
        assert intr.distortion_model == "plumb_bob"


def test_bag_backend_plays_back_the_recording(recording) -> None:
    path, frames = recording
    cfg = CameraConfig(backend=CameraBackend.REALSENSE_BAG, bag_path=str(path), loop_playback=False,
                       playback_real_time=False)
    with make_camera(cfg) as camera:
        assert camera.device_serial == SERIAL
        played = []
        with pytest.raises(EndOfRecording, match="has ended"):
            for _ in range(len(frames) + 5):
                played.append(camera.read(timeout_ms=1500))
    indices = [_match(f, frames) for f in played]
    # librealsense may drop the first frames while the recorder starts; the rest come in order.
    assert len(indices) >= len(frames) - 3
    assert indices == list(range(indices[0], indices[0] + len(indices)))
    for frame, index in zip(played, indices):
        assert_aligned_depth(frame.depth, frames[index].depth)
        assert frame.intrinsics.K[0, 0] == FX and frame.intrinsics.K[1, 2] == CY


def test_bag_backend_loops_when_asked(recording) -> None:
    path, frames = recording
    cfg = CameraConfig(backend=CameraBackend.REALSENSE_BAG, bag_path=str(path), loop_playback=True,
                       playback_real_time=False)
    with make_camera(cfg) as camera:
        # Three times the recording without EndOfRecording: it looped (without loop_playback the
        # reads end after one pass, as the test above shows).
        played = [_match(camera.read(timeout_ms=1500), frames) for _ in range(3 * len(frames))]
    assert len(set(played)) >= len(frames) - 3
    assert any(b < a for a, b in zip(played, played[1:])), f"playback never wrapped around: {played}"


def test_live_backend_without_a_device_says_what_to_do() -> None:
    if len(rs.context().query_devices()) > 0:
        pytest.skip("a RealSense device is connected")
    camera = make_camera(CameraConfig(backend=CameraBackend.REALSENSE))
    with pytest.raises(CameraError, match="no RealSense device is connected"):
        camera.connect()
    assert not camera.is_connected


def test_read_before_connect_is_an_error() -> None:
    camera = make_camera(CameraConfig(backend=CameraBackend.REALSENSE))
    with pytest.raises(CameraError, match="call connect"):
        camera.read()


@pytest.mark.hardware
def test_live_device_streams_aligned_frames() -> None:
    with make_camera(CameraConfig(backend=CameraBackend.REALSENSE, width=640, height=480, fps=30)) as camera:
        frame = camera.read(timeout_ms=5000)
    assert frame.rgb.shape == (480, 640, 3) and frame.depth.shape == (480, 640)
    assert frame.intrinsics.fx > 0
