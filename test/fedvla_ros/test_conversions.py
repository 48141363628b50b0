"""Core dataclasses ↔ ROS messages."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from builtin_interfaces.msg import Time  # noqa: E402

from fedvla.camera import Intrinsics  # noqa: E402
from fedvla_ros.conversions import camera_info_msg, image_msg, image_to_array  # noqa: E402


def test_images_round_trip_and_bgr_comes_back_as_rgb() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    depth = rng.integers(0, 5000, (5, 7), dtype=np.uint16)
    np.testing.assert_array_equal(image_to_array(image_msg(rgb, "rgb8", Time(), "f")), rgb)
    np.testing.assert_array_equal(image_to_array(image_msg(rgb[..., ::-1], "bgr8", Time(), "f")), rgb)
    msg = image_msg(depth, "16UC1", Time(), "f")
    assert (msg.step, msg.encoding) == (14, "16UC1")
    np.testing.assert_array_equal(image_to_array(msg), depth)
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        msg.encoding = "yuv422"
        image_to_array(msg)


def test_camera_info_carries_k_and_p() -> None:
    intr = Intrinsics(width=640, height=480, fx=600.0, fy=601.0, cx=320.5, cy=240.5)
    info = camera_info_msg(intr, Time(sec=3), "camera_color_optical_frame")
    assert list(info.k) == [600.0, 0.0, 320.5, 0.0, 601.0, 240.5, 0.0, 0.0, 1.0]
    assert list(info.p) == [600.0, 0.0, 320.5, 0.0, 0.0, 601.0, 240.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert (info.width, info.height, info.header.frame_id) == (640, 480, "camera_color_optical_frame")
