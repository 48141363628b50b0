"""The workcell_sim node: the twin's D435i on realsense-ros topics, its task's success check
(latched), ~/reset to another task and layout, and bad settings refused at startup with one line
(exit 2) before anything listens or moves."""
import pytest

from support.ros import start_node, stop_process, wait_for_messages

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from fedvla import topics  # noqa: E402
from fedvla.twin.ur_controller import free_loopback_host  # noqa: E402
from fedvla_interfaces.msg import TaskStatus  # noqa: E402
from fedvla_interfaces.srv import ResetScene  # noqa: E402
from fedvla_ros.qos import LATCHED_QOS  # noqa: E402

pytestmark = pytest.mark.ros
CAMERA = topics.camera_node(topics.TWIN_CAMERA)
STATUS = topics.node_topic(topics.WORKCELL_NODE, topics.TASK_STATUS)


def reset(context, task: str, seed: int) -> ResetScene.Response:
    node = rclpy.create_node("workcell_reset_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        client = node.create_client(ResetScene, topics.node_topic(topics.WORKCELL_NODE, topics.RESET_SCENE_SERVICE))
        assert client.wait_for_service(timeout_sec=30.0)
        future = client.call_async(ResetScene.Request(task=task, seed=seed))
        executor.spin_until_future_complete(future, timeout_sec=30.0)
        return future.result()
    finally:
        executor.shutdown()
        node.destroy_node()


@pytest.mark.timeout(180)
def test_the_twin_publishes_the_d435i_topics_and_resets_on_request(rclpy_context) -> None:
    host = free_loopback_host()
    twin = start_node("fedvla_ros", "workcell_sim", name="workcell_sim",
                      parameters={"host": host, "task": "sorting_pills", "seed": 2, "fps": 10.0})
    try:
        (color,) = wait_for_messages(rclpy_context, topics.node_topic(CAMERA, topics.COLOR_IMAGE), Image, timeout_s=60)
        assert (color.width, color.height, color.encoding) == (640, 480, "rgb8")
        assert color.header.frame_id == "camera_color_optical_frame"
        (depth,) = wait_for_messages(rclpy_context, topics.node_topic(CAMERA, topics.ALIGNED_DEPTH_IMAGE), Image)
        assert (depth.width, depth.height, depth.encoding) == (640, 480, "16UC1")
        (info,) = wait_for_messages(rclpy_context, topics.node_topic(CAMERA, topics.ALIGNED_DEPTH_INFO), CameraInfo)
        assert info.k[0] == pytest.approx(615.0, abs=2.0)  # the D435i colour sensor's focal length at 640x480
        (status,) = wait_for_messages(rclpy_context, STATUS, TaskStatus, qos=LATCHED_QOS)
        assert (status.task, status.seed, status.success) == ("sorting_pills", 2, False)
        assert status.instruction.startswith("put the pill bottle into the ")

        answer = reset(rclpy_context, "open_drawer", 5)
        assert answer.success and answer.instruction == "open the drawer", answer.message
        status = wait_for_messages(rclpy_context, STATUS, TaskStatus, count=2, qos=LATCHED_QOS)[-1]
        assert (status.task, status.seed) == ("open_drawer", 5)
        assert status.detail.startswith("drawer out 0.0 cm")

        answer = reset(rclpy_context, "fold_laundry", 1)
        assert not answer.success
        assert "unknown task 'fold_laundry'" in answer.message and "sorting_pills" in answer.message
    finally:
        _, err = stop_process(twin)
    assert "Traceback" not in err, err


@pytest.mark.parametrize("parameters, message", [
    ({"task": "fold_laundry"}, "task: unknown task 'fold_laundry'"),
    ({"urdf_path": "/nonexistent/arm.urdf"}, "urdf_path: /nonexistent/arm.urdf does not exist"),
    ({"ur_type": "ur5"}, "ur_type: unknown UR type 'ur5'"),
])
def test_bad_settings_exit_2_with_one_line(parameters, message) -> None:
    process = start_node("fedvla_ros", "workcell_sim", name="workcell_sim_bad",
                         parameters={"host": free_loopback_host(), **parameters})
    _, err = process.communicate(timeout=90)
    assert process.returncode == 2, err
    assert message in err.strip().splitlines()[-1]


def test_a_urdf_whose_joints_do_not_match_the_twin_exits_2_naming_them(tmp_path) -> None:
    import re

    from fedvla.robot.kinematics import find_urdf

    text = find_urdf().read_text()
    # the arm with its last wrist joint renamed: a different robot description
    other = tmp_path / "other_arm.urdf"
    other.write_text(re.sub(r'joint name="wrist_3_joint"', 'joint name="wrist_3"', text))
    process = start_node("fedvla_ros", "workcell_sim", name="workcell_sim_bad",
                         parameters={"host": free_loopback_host(), "urdf_path": str(other)})
    _, err = process.communicate(timeout=90)
    assert process.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "urdf_path: other_arm.urdf has no joint wrist_3_joint: its joints do not match" in last, last
