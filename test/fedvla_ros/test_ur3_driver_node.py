"""The ur3_driver node on the simulated arm: in dry run chunks are planned and shown, nothing
moves; once enabled, action chunks move the tool, state, TF, the robot
description, the planned path and diagnostics are published, stale input stops the arm, the stop
and recover services answer; an unreachable robot is reported, not fatal; bad settings exit 2."""
import time

import numpy as np
import pytest

from support.ros import start_node, stop_process, wait_for_messages

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("pinocchio")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from fedvla import topics  # noqa: E402
from fedvla.robot.kinematics import ARM_JOINTS, GRIPPER_JOINT  # noqa: E402
from fedvla_interfaces.msg import ActionChunk  # noqa: E402
from fedvla_ros.qos import ACTION_CHUNK_QOS, LATCHED_QOS  # noqa: E402
from fedvla_ros.ur3_driver import TF_UNAVAILABLE, TFMessage  # noqa: E402  (None without a ROS 2 install)

pytestmark = pytest.mark.ros
DRIVER = "/ur3_driver"
RELIABLE = QoSProfile(depth=10)


def chunk(rows):
    actions = np.asarray(rows, dtype=np.float32)
    return ActionChunk(dimension_names=["dx", "dy", "dz", "gripper"], horizon=len(actions),
                       actions=actions.ravel().tolist(), step_period_s=0.1)


def diagnostics(context, predicate, timeout_s=20.0):
    """The first diagnostics status that matches, within ``timeout_s`` (the node may still be starting:
    a 1 Hz topic with no message for a few seconds is not yet a failure)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            (array,) = wait_for_messages(context, topics.DIAGNOSTICS, DiagnosticArray,
                                         timeout_s=max(0.5, min(5.0, deadline - time.monotonic())), qos=RELIABLE)
        except AssertionError:
            continue
        status = array.status[0]
        if predicate(status):
            return status
        seen.append(status.message)
    raise AssertionError(f"no matching diagnostics within {timeout_s} s (seen: {seen[-3:]})")


def call(node, executor, service, timeout_s=10.0, kind=Trigger, **request):
    client = node.create_client(kind, service)
    assert client.wait_for_service(timeout_sec=timeout_s), f"{service} not available"
    future = client.call_async(kind.Request(**request))
    executor.spin_until_future_complete(future, timeout_sec=timeout_s)
    return future.result()


def test_chunks_move_the_simulated_arm_and_the_state_is_published(rclpy_context) -> None:
    driver = start_node("fedvla_ros", "ur3_driver", name="ur3_driver",
                        parameters={"backend": "sim", "action_topic": "/test/action_chunk", "stale_timeout_s": 0.3})
    node = rclpy.create_node("driver_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    publisher = node.create_publisher(ActionChunk, "/test/action_chunk", ACTION_CHUNK_QOS)
    paths, statuses = [], []
    node.create_subscription(Marker, topics.node_topic(DRIVER, topics.PLANNED_PATH), paths.append, LATCHED_QOS)
    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, lambda m: statuses.append(m.status[0]), RELIABLE)
    try:
        description = wait_for_messages(rclpy_context, topics.ROBOT_DESCRIPTION, String, qos=LATCHED_QOS)[0]
        static = wait_for_messages(rclpy_context, topics.TF_STATIC, TFMessage, qos=LATCHED_QOS)[0] if TFMessage else None
        before = wait_for_messages(rclpy_context, topics.node_topic(DRIVER, topics.TOOL_POSE), PoseStamped,
                                   qos=RELIABLE)[0]
        diagnostics(rclpy_context, lambda s: "idle" in s.message)

        # Dry run (the default): chunks are planned and shown, the arm does not move.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            publisher.publish(chunk([[0.0, 1.0, 0.0, 1.0]] * 8))
            executor.spin_once(timeout_sec=0.1)
        dry = diagnostics(rclpy_context, lambda s: True)
        held = wait_for_messages(rclpy_context, topics.node_topic(DRIVER, topics.TOOL_POSE), PoseStamped,
                                 qos=RELIABLE)[0]
        planned_in_dry_run = [m for m in paths if m.action == Marker.ADD]
        enabled = call(node, executor, f"{DRIVER}/{topics.ENABLE_SERVICE}", kind=SetBool, data=True)

        deadline = time.monotonic() + 2.5  # +y and closed, at the policy's pace
        while time.monotonic() < deadline:
            publisher.publish(chunk([[0.0, 1.0, 0.0, 1.0]] * 8))
            executor.spin_once(timeout_sec=0.1)
        # no more chunks: the arm stops (stale input) and the joints hold
        idle = diagnostics(rclpy_context, lambda s: "idle" in s.message)
        joints_a, joints_b = wait_for_messages(rclpy_context, topics.JOINT_STATES, JointState, count=2)
        after = wait_for_messages(rclpy_context, topics.node_topic(DRIVER, topics.TOOL_POSE), PoseStamped,
                                  qos=RELIABLE)[0]
        tf = wait_for_messages(rclpy_context, topics.TF, TFMessage, qos=RELIABLE)[0] if TFMessage else None

        executor.spin_once(timeout_sec=0.1)
        stopped = call(node, executor, f"{DRIVER}/{topics.STOP_SERVICE}")
        recovered = call(node, executor, f"{DRIVER}/{topics.RECOVER_SERVICE}")
    finally:
        executor.shutdown()
        node.destroy_node()
        _, err = stop_process(driver)
    assert driver.returncode == 0, err
    assert {v.key: v.value for v in dry.values}["execution"] == "dry run"
    assert planned_in_dry_run and abs(held.pose.position.y - before.pose.position.y) < 1e-4  # shown, not moved
    assert enabled.success and enabled.message.startswith("enabled")
    assert "<robot" in description.data and 'name="shoulder_pan_joint"' in description.data
    assert any(s.message == "tracking" and s.hardware_id == "simulated" for s in statuses)
    drawn = [m for m in paths if m.action == Marker.ADD]
    assert drawn and len(drawn[-1].points) >= 2 and drawn[-1].header.frame_id == "base_link"
    assert paths[-1].action == Marker.DELETE  # the stale stop dropped the trajectory
    assert idle.level == DiagnosticStatus.OK and {v.key: v.value for v in idle.values}["control_rate_hz"] == "125"
    assert list(joints_a.name) == [*ARM_JOINTS, GRIPPER_JOINT]
    np.testing.assert_allclose(joints_a.position[:6], joints_b.position[:6])  # holding still
    moved = after.pose.position.y - before.pose.position.y
    assert moved > 0.03 and abs(after.pose.position.x - before.pose.position.x) < 0.01
    if TFMessage is None:  # a pip-only install (no ../shared/vendor): said once, and the rest is published
        assert err.count(TF_UNAVAILABLE) == 1
    else:
        assert [(t.header.frame_id, t.child_frame_id) for t in static.transforms] == [("world", "base_link")]
        frames = {t.child_frame_id for t in tf.transforms}
        assert {"tool0", "tcp", "wrist_3_link", "camera_link"} <= frames
        assert {t.header.frame_id for t in tf.transforms} == {"base_link"}
        assert TF_UNAVAILABLE not in err
    assert stopped.success and recovered.success and recovered.message.startswith("nothing to recover")
    assert "no action chunk for" in err


def test_an_unreachable_robot_is_reported_not_fatal(rclpy_context) -> None:
    from fedvla.twin.ur_controller import free_loopback_host

    host = free_loopback_host()  # nothing listens there
    driver = start_node("fedvla_ros", "ur3_driver", name="ur3_driver",
                        parameters={"backend": "ur_rtde", "robot_ip": host, "reconnect_period_s": 0.5})
    try:
        status = diagnostics(rclpy_context, lambda s: s.message == "disconnected", timeout_s=30.0)
        assert driver.poll() is None
    finally:
        _, err = stop_process(driver)
    assert status.level == DiagnosticStatus.ERROR and status.hardware_id == host
    assert f"cannot connect to the UR controller at {host}" in err


@pytest.mark.parametrize(("parameters", "message"), [
    ({"ur_type": "ur5"}, "ur3_driver: error: ur_type: unknown UR model 'ur5' (allowed: ur3, ur3e)"),
    ({"backend": "ur_rtde", "gripper_output": "tool:7"},
     "ur3_driver: error: gripper_output: 'tool:7' is not a digital output (allowed: 'standard:0'..'standard:7', "
     "'configurable:0'..'configurable:7', 'tool:0', 'tool:1' or 'none')"),
    ({"velocity_scale": 3.0}, "ur3_driver: error: velocity_scale:"),
    ({"checkpoint_path": "/nonexistent/checkpoint"}, "ur3_driver: error: checkpoint_path: /nonexistent/checkpoint is "
     "not a checkpoint: config.json is missing"),
    ({"operator_heartbeat_topic": "/deadman"}, "ur3_driver: error: operator_heartbeat_topic: an operator heartbeat "
     "needs both its topic and operator_heartbeat_timeout_s"),
])
def test_bad_settings_exit_2_with_one_line(parameters, message) -> None:
    process = start_node("fedvla_ros", "ur3_driver", name="ur3_driver_bad", parameters=parameters)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith(message)


def test_object_frame_actions_follow_the_located_object(rclpy_context) -> None:
    """The scene parser's target position (PointStamped) is the object frame of ee_pose actions:
    "10 cm above the object, 3 cm to its left" lands there wherever the object was located."""
    from geometry_msgs.msg import PointStamped

    driver = start_node("fedvla_ros", "ur3_driver", name="ur3_driver",
                        parameters={"backend": "sim", "action_topic": "/test/action_chunk", "action_kind": "ee_pose",
                                    "action_frame": "object", "object_position_topic": "/test/target_position",
                                    # tool down, yawed as at the home pose: positions alone move it
                                    "default_orientation_rpy": [np.pi, 0.0, -np.pi / 2],
                                    "execute_steps": 20, "stale_timeout_s": 3.0,  # one 2 s chunk, all of it
                                    "execute_on_start": True})
    node = rclpy.create_node("object_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    chunks = node.create_publisher(ActionChunk, "/test/action_chunk", ACTION_CHUNK_QOS)
    targets = node.create_publisher(PointStamped, "/test/target_position", 10)
    tool_topic = topics.node_topic(DRIVER, topics.TOOL_POSE)
    try:
        start = wait_for_messages(rclpy_context, tool_topic, PoseStamped, qos=RELIABLE)[0].pose.position
        located = np.array([start.x + 0.02, start.y - 0.03, start.z - 0.12])
        bad = PointStamped(point=PointStamped().point.__class__(x=float("nan"), y=0.0, z=0.0))
        bad.header.frame_id = "base_link"
        target = PointStamped()
        target.header.frame_id = "base_link"
        target.point.x, target.point.y, target.point.z = (float(v) for v in located)
        # From where the tool is, in the object's frame, to the goal: in 2 s (a jump is refused).
        goal = np.array([0.0, 0.03, 0.1])
        path = np.linspace(np.array([start.x, start.y, start.z]) - located, goal, 21)[1:]
        steps = np.column_stack([path, -np.ones(len(path))])
        for _ in range(3):
            targets.publish(target)
            targets.publish(bad)  # refused: the last good position stays
            executor.spin_once(timeout_sec=0.1)
        chunks.publish(ActionChunk(dimension_names=["x", "y", "z", "gripper"], horizon=len(steps),
                                   actions=steps.ravel().tolist(), step_period_s=0.1))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        reached = wait_for_messages(rclpy_context, tool_topic, PoseStamped, qos=RELIABLE)[0].pose.position
    finally:
        executor.shutdown()
        node.destroy_node()
        _, err = stop_process(driver)
    assert driver.returncode == 0, err
    np.testing.assert_allclose([reached.x, reached.y, reached.z], located + goal, atol=0.005, err_msg=err)
    assert "object position refused: object position" in err and "is not three finite coordinates" in err


CHUNK_SOURCE = """
import signal, sys, time
import numpy as np
import rclpy
from fedvla_interfaces.msg import ActionChunk
from fedvla_ros.qos import ACTION_CHUNK_QOS
rclpy.init()
node = rclpy.create_node("doomed_policy")
publisher = node.create_publisher(ActionChunk, "/test/action_chunk", ACTION_CHUNK_QOS)
steps = np.tile([0.0, 1.0, 0.0, -1.0], (20, 1))  # +y for 2 s
while publisher.get_subscription_count() == 0:
    time.sleep(0.05)
sys.stdin.readline()  # the driver is up and idle
publisher.publish(ActionChunk(dimension_names=["dx", "dy", "dz", "gripper"], horizon=20,
                              actions=steps.ravel().tolist(), step_period_s=0.1))
print("published", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_killing_the_chunk_source_brakes_the_arm_within_its_liveliness_lease(rclpy_context) -> None:
    """A 2 s chunk, and the process that sent it SIGKILLed 0.6 s in: the driver brakes within the
    chunk topic's liveliness lease (CHUNK_SOURCE_LEASE_S), not after running out the chunk or its
    3 s stale timeout."""
    import signal
    import subprocess
    import sys

    from fedvla_ros.qos import CHUNK_SOURCE_LEASE_S

    driver = start_node("fedvla_ros", "ur3_driver", name="ur3_driver",
                        parameters={"backend": "sim", "action_topic": "/test/action_chunk", "execute_steps": 20,
                                    "stale_timeout_s": 3.0, "execute_on_start": True})
    node = rclpy.create_node("source_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    samples = []  # (receive time, shoulder pan .. wrist 3)
    node.create_subscription(JointState, topics.JOINT_STATES,
                             lambda m: samples.append((time.monotonic(), np.array(m.position[:6]))),
                             qos_profile_sensor_data)
    source = subprocess.Popen([sys.executable, "-c", CHUNK_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        diagnostics(rclpy_context, lambda s: "idle" in s.message)
        source.stdin.write("go\n")
        source.stdin.flush()
        assert source.stdout.readline().strip() == "published"
        published = time.monotonic()
        while time.monotonic() < published + 0.6:
            executor.spin_once(timeout_sec=0.02)
        source.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 1.5:
            executor.spin_once(timeout_sec=0.02)
    finally:
        source.kill()
        source.wait()
        executor.shutdown()
        node.destroy_node()
        _, err = stop_process(driver)
    moving = [t for (t, q), (_, q_next) in zip(samples, samples[1:]) if np.abs(q_next - q).max() > 1e-5]
    assert moving and moving[0] < killed, "the chunk never moved the arm"
    stopped_after = moving[-1] - killed
    print(f"arm still moving {1000 * stopped_after:.0f} ms after the chunk source was killed")
    assert "the action chunk source is gone" in err, err
    # lease, its detection and the brake (a UR brakes in well under 0.2 s at 8 rad/s^2 from this speed)
    assert stopped_after < CHUNK_SOURCE_LEASE_S + 0.4, f"still moving {stopped_after:.2f} s after the kill"
