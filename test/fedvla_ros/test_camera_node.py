"""The camera node end to end: real processes, real DDS, the realsense-ros topic names."""
import os

import numpy as np
import pytest

from support.ros import start_node, stop_process, wait_for_messages

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from fedvla import topics  # noqa: E402
from fedvla.readiness import READY_DIR_ENV, ready_marker  # noqa: E402

pytestmark = pytest.mark.ros


def test_sim_camera_publishes_images_and_camera_info(rclpy_context, tmp_path) -> None:
    process = start_node("fedvla_ros", "camera_node", name="front", namespace="cam_test",
                         parameters={"backend": "sim", "width": 80, "height": 60, "fps": 20.0,
                                     "sim_task": "window-open-v3", "sim_camera": "topview"},
                         env=dict(os.environ, **{READY_DIR_ENV: str(tmp_path)}))
    try:
        color = wait_for_messages(rclpy_context, "/cam_test/front/" + topics.COLOR_IMAGE, Image, count=3)
        info = wait_for_messages(rclpy_context, "/cam_test/front/" + topics.COLOR_INFO, CameraInfo)[0]
        depth = wait_for_messages(rclpy_context, "/cam_test/front/" + topics.ALIGNED_DEPTH_IMAGE, Image)[0]
        # Streaming, so it told the runner it is up, under its namespaced name.
        assert [p.name for p in tmp_path.iterdir()] == [ready_marker(tmp_path, "/cam_test/front").name]
    finally:
        out, err = stop_process(process)
    assert process.returncode == 0, err
    image = color[-1]
    assert (image.width, image.height, image.encoding, image.step) == (80, 60, "rgb8", 240)
    assert image.header.frame_id == "front_color_optical_frame"
    assert np.frombuffer(bytes(image.data), np.uint8).std() > 10
    assert (depth.encoding, depth.step, depth.header.frame_id) == ("16UC1", 160, image.header.frame_id)
    assert (info.width, info.height, info.distortion_model) == (80, 60, "plumb_bob")
    k = np.array(info.k).reshape(3, 3)
    assert k[0, 0] > 0 and k[0, 0] == pytest.approx(k[1, 1]) and k[0, 2] == pytest.approx(39.5)
    assert np.array(info.p).reshape(3, 4)[:, :3].tolist() == k.tolist()


def test_bag_backend_replays_a_realsense_recording_on_ros_topics(rclpy_context, tmp_path) -> None:
    from support.realsense_software_device import HEIGHT, WIDTH, SoftwareCamera, make_frames

    frames = make_frames(10, seed=5)
    recording = SoftwareCamera().record(tmp_path / "rec.db3", frames)
    process = start_node("fedvla_ros", "camera_node", name="camera", namespace="camera",
                         parameters={"backend": "realsense_bag", "bag_path": str(recording), "loop_playback": True})
    try:
        images = wait_for_messages(rclpy_context, "/camera/camera/" + topics.COLOR_IMAGE, Image, count=4)
    finally:
        _, err = stop_process(process)
    assert process.returncode == 0, err  # librealsense and rclpy shut down cleanly together
    injected = {f.rgb.tobytes() for f in frames}
    for msg in images:
        assert (msg.width, msg.height) == (WIDTH, HEIGHT)
        assert bytes(msg.data) in injected  # byte-identical to what was injected into librealsense


@pytest.mark.parametrize(("parameters", "expected"), [
    ({"backend": "kinect"}, "backend: unknown value 'kinect' (allowed: realsense, realsense_bag, sim)"),
    ({"fps": -5.0}, "fps: must be positive, got -5.0 (allowed: a number > 0)"),
    ({"backend": "realsense_bag", "bag_path": "/no/such/recording.bag"},
     "bag_path: file '/no/such/recording.bag' does not exist (allowed: path of an existing .bag or .db3"),
    ({"fps": "fast"}, "fps: must be a number, got 'fast' (allowed: a number > 0)"),
    ({"enable_depth": 3}, "enable_depth: wrong type 3 (allowed: a boolean (true/false), e.g. true)"),
])
def test_invalid_parameters_exit_with_one_clear_line(parameters, expected, tmp_path) -> None:
    process = start_node("fedvla_ros", "camera_node", name="bad", parameters=parameters,
                         env=dict(os.environ, **{READY_DIR_ENV: str(tmp_path)}))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert not any(tmp_path.iterdir())  # never reported itself up
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("camera_node: error: " + expected)


def test_missing_device_exits_with_one_line_saying_what_to_check() -> None:
    pytest.importorskip("pyrealsense2")
    import pyrealsense2 as rs

    if len(rs.context().query_devices()):
        pytest.skip("a RealSense device is connected")
    process = start_node("fedvla_ros", "camera_node", name="nodevice", parameters={"backend": "realsense"})
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert [line for line in err.splitlines() if line.strip()] == [
        "camera_node: error: no RealSense device is connected: plug one in (USB 3), or use backend "
        "'realsense_bag' or 'sim'"]
