"""Intel RealSense cameras through pyrealsense2: a live device or a recording.

Both backends run a ``rs.pipeline`` and share :func:`frameset_to_frame`, which aligns depth to
colour (``rs.align``) and converts librealsense frames and intrinsics to :class:`Frame`. The
frame path is tested without hardware by injecting frames into an ``rs.software_device``
(see ``test/fedvla/camera/test_realsense.py``).

Install the SDK with ``pip install pyrealsense2`` (on Debian/Ubuntu it needs
``apt-get install libusb-1.0-0``).

pyrealsense2 bundles its own Fast DDS. In a process that also runs ROS 2 nodes, initialise
rclpy (which loads ROS's middleware) *before* the first pyrealsense2 import, as the camera node
does; the other order makes the two copies share singletons and the process crash at exit.
pyrealsense2 is therefore imported lazily, on ``connect()``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fedvla.camera.base import (
    Camera,
    CameraBackend,
    CameraConfig,
    CameraError,
    EndOfRecording,
    Frame,
    Intrinsics,
    register_camera,
)

log = logging.getLogger(__name__)

# librealsense distortion models → sensor_msgs/CameraInfo distortion_model names.
_DISTORTION_NAMES = {
    "brown_conrady": "plumb_bob",
    "inverse_brown_conrady": "plumb_bob",
    "modified_brown_conrady": "plumb_bob",
    "none": "plumb_bob",
    "kannala_brandt4": "equidistant",
    "ftheta": "equidistant",
}


def import_pyrealsense2() -> ModuleType:
    try:
        import pyrealsense2 as rs
    except ImportError as err:
        raise CameraError(
            f"pyrealsense2 cannot be imported ({err}): install it with `pip install pyrealsense2`"
            " (and `apt-get install libusb-1.0-0` on Debian/Ubuntu)"
        ) from err
    return rs


def intrinsics_from_rs(intr: Any) -> Intrinsics:
    model = str(intr.model).rsplit(".", 1)[-1]
    return Intrinsics(
        width=int(intr.width),
        height=int(intr.height),
        fx=float(intr.fx),
        fy=float(intr.fy),
        cx=float(intr.ppx),
        cy=float(intr.ppy),
        distortion_model=_DISTORTION_NAMES.get(model, "plumb_bob"),
        distortion=tuple(float(c) for c in intr.coeffs),
    )


def frameset_to_frame(frameset: Any, align: Any | None, depth_scale_m: float) -> Frame:
    """Convert a librealsense frameset (colour + optional depth) to a :class:`Frame`.

    With ``align`` (an ``rs.align(rs.stream.color)``), depth is reprojected into the colour
    camera, so the colour intrinsics describe both images.
    """
    rs = import_pyrealsense2()
    if align is not None and frameset.first_or_default(rs.stream.depth):
        frameset = align.process(frameset)
    color = frameset.get_color_frame()
    if not color:
        raise CameraError("the frameset has no colour frame: is the colour stream enabled?")
    profile = color.get_profile().as_video_stream_profile()
    rgb = np.asanyarray(color.get_data())
    fmt = profile.format()
    if fmt == rs.format.bgr8:
        rgb = rgb[..., ::-1]
    elif fmt != rs.format.rgb8:
        raise CameraError(f"unsupported colour format {fmt}: configure rgb8 or bgr8")
    depth_frame = frameset.get_depth_frame()
    depth = np.array(np.asanyarray(depth_frame.get_data()), dtype=np.uint16) if depth_frame else None
    return Frame(
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        intrinsics=intrinsics_from_rs(profile.get_intrinsics()),
        stamp_s=color.get_timestamp() / 1000.0,
        frame_number=int(color.get_frame_number()),
        depth=depth,
        depth_scale_m=depth_scale_m,
    )


@register_camera(CameraBackend.REALSENSE, CameraBackend.REALSENSE_BAG)
class RealSenseCamera(Camera):
    """A RealSense D400 device (``backend: realsense``) or a recording (``realsense_bag``)."""

    def __init__(self, config: CameraConfig) -> None:
        super().__init__(config)
        self._pipeline: Any = None
        self._align: Any = None
        self._depth_scale_m = 0.001
        self.device_name = ""
        self.device_serial = ""

    @property
    def is_connected(self) -> bool:
        return self._pipeline is not None

    def connect(self) -> None:
        if self.is_connected:
            return
        rs = import_pyrealsense2()
        cfg = self.config
        rs_config = rs.config()
        if cfg.backend is CameraBackend.REALSENSE_BAG:
            rs_config.enable_device_from_file(str(Path(cfg.bag_path).expanduser()), cfg.loop_playback)
        else:
            serial = self._pick_device(rs)
            rs_config.enable_device(serial)
            rs_config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, int(cfg.fps))
            if cfg.enable_depth:
                rs_config.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, int(cfg.fps))
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(rs_config)
        except RuntimeError as err:
            raise CameraError(f"cannot start the RealSense pipeline ({err}): check that the "
                              f"{self._what()} offers {cfg.width}x{cfg.height} at {cfg.fps:g} fps") from err
        device = profile.get_device()
        if cfg.backend is CameraBackend.REALSENSE_BAG:
            device.as_playback().set_real_time(cfg.playback_real_time)
        self.device_name = _info(rs, device, rs.camera_info.name)
        self.device_serial = _info(rs, device, rs.camera_info.serial_number)
        depth_sensors = [s for s in device.query_sensors() if s.is_depth_sensor()]
        if depth_sensors and cfg.enable_depth:
            self._depth_scale_m = float(depth_sensors[0].as_depth_sensor().get_depth_scale())
            self._align = rs.align(rs.stream.color)
        self._pipeline = pipeline
        log.info("RealSense %s (serial %s) started from %s", self.device_name, self.device_serial, self._what())

    def _pick_device(self, rs: ModuleType) -> str:
        serials = [_info(rs, d, rs.camera_info.serial_number) for d in rs.context().query_devices()]
        if not serials:
            raise CameraError("no RealSense device is connected: plug one in (USB 3), or use "
                              "backend 'realsense_bag' or 'sim'")
        if not self.config.serial:
            if len(serials) > 1:
                raise CameraError(f"several RealSense devices are connected ({', '.join(serials)}): "
                                  "set the 'serial' parameter")
            return serials[0]
        if self.config.serial not in serials:
            raise CameraError(f"no RealSense device with serial {self.config.serial!r} "
                              f"(connected: {', '.join(serials)})")
        return self.config.serial

    def _what(self) -> str:
        if self.config.backend is CameraBackend.REALSENSE_BAG:
            return f"recording {self.config.bag_path}"
        return f"device {self.config.serial or '(first found)'}"

    def read(self, timeout_ms: int = 1000) -> Frame:
        self._require_connected()
        ok, frameset = self._pipeline.try_wait_for_frames(timeout_ms)
        if not ok:
            if self.config.backend is CameraBackend.REALSENSE_BAG and not self.config.loop_playback:
                raise EndOfRecording(f"no frame within {timeout_ms} ms: the recording "
                                     f"{self.config.bag_path} has ended")
            raise CameraError(f"no frame from the {self._what()} within {timeout_ms} ms")
        return frameset_to_frame(frameset, self._align, self._depth_scale_m)

    def disconnect(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            finally:
                self._pipeline = None
                self._align = None


def _info(rs: ModuleType, device: Any, key: Any) -> str:
    return device.get_info(key) if device.supports(key) else ""
