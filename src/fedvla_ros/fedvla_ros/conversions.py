"""Core dataclasses ↔ ROS messages, in one place."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

from fedvla.camera import Frame, Intrinsics


def image_msg(array: np.ndarray, encoding: str, stamp: Time, frame_id: str) -> Image:
    """A sensor_msgs/Image sharing the array's bytes (rgb8 (H,W,3) uint8 or 16UC1 (H,W) uint16)."""
    array = np.ascontiguousarray(array)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    # bytes, never a numpy array: rclpy copies a uint8[] field from bytes ~100x faster.
    msg.data = array.tobytes()
    return msg


def camera_info_msg(intrinsics: Intrinsics, stamp: Time, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = intrinsics.width, intrinsics.height
    msg.distortion_model = intrinsics.distortion_model
    msg.d = list(intrinsics.distortion)
    msg.k = intrinsics.K.flatten().tolist()
    msg.r = np.eye(3).flatten().tolist()
    msg.p = np.hstack([intrinsics.K, np.zeros((3, 1))]).flatten().tolist()
    return msg


def frame_messages(frame: Frame, stamp: Time, frame_id: str) -> tuple[Image, CameraInfo, Image | None]:
    """Colour image, its camera info, and the aligned depth image (None without depth)."""
    color = image_msg(frame.rgb, "rgb8", stamp, frame_id)
    info = camera_info_msg(frame.intrinsics, stamp, frame_id)
    depth = image_msg(frame.depth, "16UC1", stamp, frame_id) if frame.depth is not None else None
    return color, info, depth


def image_to_array(msg: Image) -> np.ndarray:
    """Inverse of :func:`image_msg` for rgb8/bgr8/16UC1/mono8 images; colour comes back as RGB."""
    dtypes = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1), "16UC1": (np.uint16, 1)}
    if msg.encoding not in dtypes:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(dtypes)})")
    dtype, channels = dtypes[msg.encoding]
    flat = np.frombuffer(bytes(msg.data), dtype=dtype)
    row = flat.reshape(msg.height, msg.step // np.dtype(dtype).itemsize)[:, : msg.width * channels]
    if channels == 1:
        return row
    image = row.reshape(msg.height, msg.width, channels)
    return image[..., ::-1] if msg.encoding == "bgr8" else image
