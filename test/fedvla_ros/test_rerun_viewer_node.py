"""The rerun_viewer node (viewer:=rerun): it subscribes to the stack's topics as they appear and
logs them; in save mode the .rrd holds a simulated camera's images and the joint states."""
import time

import pytest

from support.ros import start_node, stop_process

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rerun")
from sensor_msgs.msg import JointState  # noqa: E402

from fedvla import topics  # noqa: E402

pytestmark = pytest.mark.ros


def test_the_viewer_node_logs_a_live_camera_and_the_joint_states(rclpy_context, tmp_path) -> None:
    from rerun.chunk import RrdReader

    rrd = tmp_path / "live.rrd"
    camera = start_node("fedvla_ros", "camera_node", name="corner", namespace="camera",
                        parameters={"backend": "sim", "width": 96, "height": 64, "fps": 10.0, "sim_task": "door-lock-v3",
                                    "sim_camera": "corner", "sim_seed": 1})
    viewer = start_node("fedvla_ros", "rerun_viewer", name="rerun_viewer",
                        parameters={"mode": "save", "save_path": str(rrd)})
    node = rclpy.create_node("joint_publisher", context=rclpy_context)
    publisher = node.create_publisher(JointState, topics.JOINT_STATES, 10)
    try:
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline and viewer.poll() is None:
            msg = JointState(name=["shoulder_pan_joint"], position=[0.25])
            msg.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(msg)
            time.sleep(0.2)
            if rrd.exists() and rrd.stat().st_size > 20_000 and time.monotonic() > deadline - 75.0:
                break  # images are in (each is tens of kB); give the joints the same chance
    finally:
        out, err = stop_process(viewer, timeout_s=20.0)
        stop_process(camera)
        node.destroy_node()
    assert viewer.returncode == 0, err[-2000:]
    entities = {str(chunk.entity_path) for chunk in RrdReader(rrd).stream()}
    assert {"/camera/corner/image", "/robot/joints/shoulder_pan_joint"} <= entities, (sorted(entities), err[-2000:])
