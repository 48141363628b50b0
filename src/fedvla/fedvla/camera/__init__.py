"""Cameras: one interface (:class:`Camera`), backends chosen by :class:`CameraBackend`."""
from fedvla.camera.base import (
    Camera,
    CameraBackend,
    CameraConfig,
    CameraError,
    EndOfRecording,
    Frame,
    Intrinsics,
    make_camera,
)

__all__ = ["Camera", "CameraBackend", "CameraConfig", "CameraError", "EndOfRecording", "Frame",
           "Intrinsics", "make_camera"]
