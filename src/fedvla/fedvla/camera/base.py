"""Camera interface shared by the RealSense, RealSense-recording and simulated backends.

A camera delivers :class:`Frame` objects: an RGB image, an optional depth image aligned to the
colour image (so one set of intrinsics describes both, like realsense-ros'
``aligned_depth_to_color`` topics) and the pinhole intrinsics. Backends register themselves by
:class:`CameraBackend` value; :func:`make_camera` looks them up, so adding a backend never
touches an if/elif chain.
"""
from __future__ import annotations

import abc
import importlib
import dataclasses
import enum
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import ConfigError, parse_enum, require, require_positive
from fedvla.iosp.types import ObjectLabel


class CameraBackend(str, enum.Enum):
    REALSENSE = "realsense"  # a live RealSense device (pyrealsense2)
    REALSENSE_BAG = "realsense_bag"  # a RealSense recording (.bag, or .db3 from librealsense >= 2.57)
    SIM = "sim"  # a camera in a MuJoCo (Meta-World) scene


class CameraError(RuntimeError):
    """The camera cannot deliver frames (not connected, device missing, stream broken)."""


class EndOfRecording(CameraError):
    """A recording played without looping has no more frames."""


RECORDING_SUFFIXES = (".bag", ".db3")


@dataclasses.dataclass(kw_only=True)
class CameraConfig:
    """Settings of one camera. Field names are also the camera node's parameter names."""

    backend: CameraBackend = CameraBackend.SIM
    width: int = 640
    height: int = 480
    fps: float = 30.0
    enable_depth: bool = True
    # sim: also label every pixel with the scene object it shows (the simulator's segmentation),
    # what the scene parser's "sim" detector reads.
    enable_segmentation: bool = False
    # realsense: serial number of the device; empty picks the only connected device.
    serial: str = ""
    # realsense_bag: path of the recording.
    bag_path: str = ""
    loop_playback: bool = True
    # realsense_bag: pace frames as recorded (True) or deliver them as fast as they are read.
    playback_real_time: bool = True
    # sim: Meta-World task whose scene is rendered, the scene camera, and the layout seed.
    sim_task: str = "door-lock-v3"
    sim_camera: str = "corner"
    sim_seed: int = 0

    def __post_init__(self) -> None:
        self.backend = parse_enum(CameraBackend, self.backend, "backend")
        for name in ("width", "height"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    name, f"must be a positive integer, got {value!r}", "an integer > 0")
        require(isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool),
                "fps", f"must be a number, got {self.fps!r}", "a number > 0")
        require_positive(self.fps, "fps")
        if self.backend is CameraBackend.REALSENSE_BAG:
            path = Path(self.bag_path).expanduser()
            require(bool(self.bag_path), "bag_path", "is empty but backend is realsense_bag",
                    "path of an existing .bag or .db3 RealSense recording")
            require(path.suffix in RECORDING_SUFFIXES, "bag_path",
                    f"{self.bag_path!r} is not a RealSense recording", "a .bag or .db3 file")
            require(path.is_file(), "bag_path", f"file {self.bag_path!r} does not exist",
                    "path of an existing .bag or .db3 RealSense recording")
        require(not self.enable_segmentation or self.backend is CameraBackend.SIM, "enable_segmentation",
                f"the {self.backend.value} backend cannot label objects", "true only with backend sim")
        if self.backend is CameraBackend.SIM:
            require(bool(self.sim_task), "sim_task", "is empty", "a Meta-World v3 task name")
            require(bool(self.sim_camera), "sim_camera", "is empty", "a camera of the scene")


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels, with the distortion model named as in sensor_msgs."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the camera matrix
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass
class Frame:
    """One capture. ``depth`` (uint16, ``depth_scale_m`` metres per unit) is aligned to ``rgb``."""

    rgb: np.ndarray  # (H, W, 3) uint8
    intrinsics: Intrinsics
    stamp_s: float  # capture time in the backend's clock, seconds
    frame_number: int
    depth: np.ndarray | None = None  # (H, W) uint16
    depth_scale_m: float = 0.001
    # (H, W) int32 index into the camera's ``objects`` per pixel, -1 for none (sim segmentation).
    labels: np.ndarray | None = None


class Camera(abc.ABC):
    """Lifecycle: ``connect()`` → ``read()``... → ``disconnect()``; also a context manager."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        # The label table of ``Frame.labels`` (backends that segment; set on connect).
        self.objects: tuple[ObjectLabel, ...] = ()

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    def read(self, timeout_ms: int = 1000) -> Frame:
        """Block until the next frame; raise :class:`CameraError` on timeout or failure."""

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise CameraError(f"{type(self).__name__} is not connected: call connect() first")


_REGISTRY: dict[CameraBackend, Callable[[CameraConfig], Camera]] = {}

# The module that registers each backend, imported when a camera of that backend is made: the
# interface does not depend on its implementations (the simulator's camera lives in fedvla.sim,
# a layer above), and each SDK (pyrealsense2, mujoco) loads only when it is used.
BACKEND_MODULES = {
    CameraBackend.REALSENSE: "fedvla.camera.realsense",
    CameraBackend.REALSENSE_BAG: "fedvla.camera.realsense",
    CameraBackend.SIM: "fedvla.sim.camera",
}


def register_camera(*backends: CameraBackend) -> Callable[[type[Camera]], type[Camera]]:
    def decorate(cls: type[Camera]) -> type[Camera]:
        for backend in backends:
            _REGISTRY[backend] = cls
        return cls

    return decorate


def make_camera(config: CameraConfig) -> Camera:
    """Build (but do not connect) the camera for ``config.backend``."""
    if config.backend not in _REGISTRY and config.backend in BACKEND_MODULES:
        importlib.import_module(BACKEND_MODULES[config.backend])
    try:
        factory = _REGISTRY[config.backend]
    except KeyError:
        raise ConfigError("backend", f"no camera registered for {config.backend.value!r}",
                          ", ".join(b.value for b in BACKEND_MODULES)) from None
    return factory(config)
