"""A RealSense software device (pyrealsense2's own) that serves and records injected frames.

This exercises librealsense itself (stream profiles, syncer, recorder, playback pipeline,
align) without hardware, instead of mocking the stack's classes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0-0) are needed for RealSense tests")

SERIAL = "000011112222"
WIDTH, HEIGHT, FPS = 64, 48, 30
FX, FY, CX, CY = 60.0, 61.0, 31.5, 23.5
DEPTH_SCALE_M = 0.001


@dataclass
class InjectedFrame:
    rgb: np.ndarray
    depth: np.ndarray


def _intrinsics() -> "rs.intrinsics":
    intr = rs.intrinsics()
    intr.width, intr.height = WIDTH, HEIGHT
    intr.fx, intr.fy, intr.ppx, intr.ppy = FX, FY, CX, CY
    intr.model = rs.distortion.brown_conrady
    intr.coeffs = [0.0] * 5
    return intr


def _stream(kind: "rs.stream", uid: int, fmt: "rs.format", bpp: int) -> "rs.video_stream":
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = kind, 0, uid
    stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = WIDTH, HEIGHT, FPS, bpp, fmt
    stream.intrinsics = _intrinsics()
    return stream


def make_frames(count: int, seed: int = 0) -> list[InjectedFrame]:
    """Random colour (so every frame is identifiable) over a smooth depth ramp (a tilted plane,
    which aligning depth to an identically placed colour camera reproduces exactly)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for i in range(count):
        depth = (800 + 3 * u + 2 * v + 10 * i).astype(np.uint16)
        frames.append(InjectedFrame(rgb=rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), depth=depth))
    return frames


class SoftwareCamera:
    """A software RealSense with identical colour/depth intrinsics (so align is the identity)."""

    def __init__(self) -> None:
        self.device = rs.software_device()
        self.depth_sensor = self.device.add_sensor("Depth")
        self.color_sensor = self.device.add_sensor("Color")
        self.depth_profile = self.depth_sensor.add_video_stream(_stream(rs.stream.depth, 0, rs.format.z16, 2))
        self.color_profile = self.color_sensor.add_video_stream(_stream(rs.stream.color, 1, rs.format.rgb8, 3))
        self.depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_SCALE_M)
        self.device.register_info(rs.camera_info.serial_number, SERIAL)
        self.device.register_info(rs.camera_info.name, "Software D435i")
        self.device.create_matcher(rs.matchers.default)
        identity = rs.extrinsics()
        identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        self.depth_profile.register_extrinsics_to(self.color_profile, identity)

    def _open(self, target: object) -> None:
        for sensor, profile in ((self.depth_sensor, self.depth_profile), (self.color_sensor, self.color_profile)):
            sensor.open(profile)
            sensor.start(target)

    def _close(self) -> None:
        for sensor in (self.depth_sensor, self.color_sensor):
            sensor.stop()
            sensor.close()

    def inject(self, index: int, frame: InjectedFrame) -> None:
        for sensor, profile, pixels, bpp in ((self.depth_sensor, self.depth_profile, frame.depth, 2),
                                             (self.color_sensor, self.color_profile, frame.rgb, 3)):
            video = rs.software_video_frame()
            video.pixels = pixels.tobytes()
            video.bpp, video.stride = bpp, bpp * WIDTH
            video.timestamp = index * 1000.0 / FPS
            video.domain = rs.timestamp_domain.hardware_clock
            video.frame_number = index
            video.profile = profile.as_video_stream_profile()
            sensor.on_video_frame(video)

    def framesets(self, frames: list[InjectedFrame]) -> list["rs.composite_frame"]:
        """Inject frames through a syncer and return the synchronised framesets."""
        syncer = rs.syncer()
        self._open(syncer)
        out = []
        try:
            for i, frame in enumerate(frames):
                self.inject(i, frame)
                out.append(syncer.wait_for_frames(2000))
                out[-1].keep()
        finally:
            self._close()
        return out

    def record(self, path: Path, frames: list[InjectedFrame]) -> Path:
        """Record the injected frames with librealsense's recorder (a .db3 rosbag2 file)."""
        recorder = rs.recorder(str(path), self.device)
        queue = rs.frame_queue(64)
        self._open(queue)
        try:
            for i, frame in enumerate(frames):
                self.inject(i, frame)
                time.sleep(1.0 / FPS)
        finally:
            self._close()
            del recorder  # the recording is finalised when the recorder goes away
        return path
