"""ur3_driver node: action chunks in, safe servoJ motion of a UR3 out (or of the simulated arm).

Subscribes to ``action_topic`` (fedvla_interfaces/ActionChunk; default the policy's) and, for
object-frame actions, to the object's pose: ``object_pose_topic`` (geometry_msgs/PoseStamped) or
``object_position_topic`` (geometry_msgs/PointStamped, such as the scene parser's
``~/target_position``; the object's axes are then parallel to ``base_link``), stamped in
``base_link`` or any other link of the URDF, such as the camera's optical frame. The control loop
runs at the controller's rate (:class:`fedvla.robot.runtime.ArmRuntime`) in a child process of its
own (``separate_process``, :mod:`fedvla.robot.loop_process`); every safety decision is the core's.

Publishes, at ``state_rate_hz``: ``/joint_states`` (the six arm joints and the gripper's finger),
``~/tool_pose`` (PoseStamped, ``base_link``), ``/tf`` (every link of ``urdf/ur3_gripper.urdf`` from
our own forward kinematics: the pip-only install has no robot_state_publisher; a full ROS install
gets the same tree) and ``~/planned_path`` (the tool path of the trajectory being executed, an RViz
line strip, latched); at 1 Hz ``/diagnostics`` (mode, fault, refused chunks, loop overruns); once, latched,
``/robot_description`` and ``/tf_static`` (world → base_link). ``/tf`` and ``/tf_static`` go out only where
``tf2_msgs`` is importable (any ROS 2 install): it is not on PyPI, so a pip-only install publishes the rest
and says so once at startup.

Execution starts in dry run unless ``execute_on_start``: chunks are planned, checked and shown on
``~/planned_path``, nothing moves. Services: ``~/enable`` (std_srvs/SetBool) starts execution
(true) or brakes and returns to dry run (false); with ``operator_heartbeat_topic`` (std_msgs/Bool,
a deadman switch) execution also stops once it is stale or released. ``~/recover``
(std_srvs/Trigger) leaves a fault after the operator cleared its cause (unlocks a protective stop,
restarts the control script); ``~/stop`` (Trigger) brakes and drops the trajectory.
Parameters: the fields of ``fedvla.robot.runtime.DRIVER_CONFIG_CLASSES`` (driver, safety limits,
retargeting, servoJ settings, chunk execution).
"""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker

from fedvla import topics
from fedvla.app.arm import checked_action_space
from fedvla.data.messages import parse_action_chunk
from fedvla.robot.backends import BackendError
from fedvla.robot.controller import ExecutionRefused
from fedvla.robot.loop_process import SeparateArmRuntime
from fedvla.robot.runtime import DRIVER_CONFIG_CLASSES, ArmRuntime
from fedvla_interfaces.msg import ActionChunk
from fedvla_ros.conversions import diagnostics_msg, fill_pose, matrix_from_pose, path_marker, transforms
from fedvla_ros.node_main import main_for
from fedvla_ros.parameters import declare_config
from fedvla_ros.qos import ACTION_CHUNK_QOS, LATCHED_QOS

try:  # not on PyPI: comes with a ROS 2 install (and ../shared/vendor on our machines)
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None
TF_UNAVAILABLE = ("TF is not published: /tf and /tf_static need tf2_msgs, which comes with a ROS 2 install "
                  "(not on PyPI); /joint_states and /robot_description are published")


class Ur3DriverNode(Node):
    def __init__(self) -> None:
        super().__init__("ur3_driver")
        configs = [declare_config(self, cls) for cls in DRIVER_CONFIG_CLASSES]
        driver, retarget = configs[0], configs[2]
        if driver.checkpoint_path:  # before anything connects: a policy it would misread never runs
            space = checked_action_space(driver.checkpoint_path, retarget)
            self.get_logger().info(f"policy actions: {space.describe()}")
        self.runtime = (SeparateArmRuntime if driver.separate_process else ArmRuntime)(*configs)
        self.config, self.kinematics = driver, self.runtime.kinematics
        self._base = self.kinematics.base_frame

        self._joints_pub = self.create_publisher(JointState, topics.JOINT_STATES, qos_profile_sensor_data)
        self._tool_pub = self.create_publisher(PoseStamped, topics.private_topic(topics.TOOL_POSE), 10)
        self._tf_pub = None if TFMessage is None else self.create_publisher(TFMessage, topics.TF, 100)
        if self._tf_pub is None:
            self.get_logger().warning(TF_UNAVAILABLE)
        self._path_pub = self.create_publisher(Marker, topics.private_topic(topics.PLANNED_PATH), LATCHED_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self._publish_latched()

        runtime = self.runtime
        self.create_subscription(ActionChunk, driver.action_topic,
                                 lambda m: self._refusing("action chunk", lambda: self._submit(m)), ACTION_CHUNK_QOS,
                                 event_callbacks=SubscriptionEventCallbacks(liveliness=self._on_chunk_source))
        if driver.object_pose_topic:  # (refused: a frame that is not a URDF link, NaN)
            self.create_subscription(PoseStamped, driver.object_pose_topic, lambda m: self._refusing("object pose", (
                lambda: runtime.set_object_pose(matrix_from_pose(m.pose), m.header.frame_id))), 10)
        if driver.object_position_topic:
            self.create_subscription(PointStamped, driver.object_position_topic, lambda m: self._refusing(
                "object position", lambda: runtime.set_object_position(np.array([m.point.x, m.point.y, m.point.z]),
                                                                        m.header.frame_id)), 10)
        if driver.operator_heartbeat_topic:
            self.create_subscription(Bool, driver.operator_heartbeat_topic,
                                     lambda msg: runtime.operator_heartbeat(bool(msg.data)), 10)
        self.create_service(Trigger, topics.private_topic(topics.RECOVER_SERVICE),
                            lambda _, response: self._answer("recover", response, runtime.recover))
        self.create_service(Trigger, topics.private_topic(topics.STOP_SERVICE),
                            lambda _, response: self._answer("stop", response, lambda: runtime.stop() or "stopped"))
        self.create_service(SetBool, topics.private_topic(topics.ENABLE_SERVICE), lambda request, response: self._answer(
            f"enable {request.data}", response, runtime.enable if request.data else runtime.disable))
        self.create_timer(1.0 / driver.state_rate_hz, self._publish_state)
        self.create_timer(1.0, self._publish_diagnostics)
        self._last_path: np.ndarray | None = None
        self.runtime.start()
        where = driver.robot_ip if driver.backend.value == "ur_rtde" else "simulated arm"
        self.get_logger().info(f"{driver.ur_type} ({where}) at {driver.control_rate_hz:g} Hz; actions from "
                               f"{driver.action_topic}; " + ("executing them" if self.runtime.snapshot().enabled else
                               f"dry run: chunks are planned and shown, not executed, until {self.get_name()}/enable"))

    def destroy_node(self) -> None:
        self.runtime.close()
        super().destroy_node()

    # Inputs ---------------------------------------------------------------------------------------
    def _refusing(self, what: str, apply) -> None:
        """Apply an input; a bad one is logged (throttled) and changes nothing (the core logs its own refusals)."""
        try:
            apply()
        except ValueError as err:
            self.get_logger().error(f"{what} refused: {err}", throttle_duration_sec=5.0)

    def _submit(self, msg: ActionChunk) -> None:
        chunk = parse_action_chunk(msg)
        # The stamp is the observation the chunk answers (the policy node stamps its camera frame's).
        observed = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        self.runtime.submit_chunk(chunk.actions.astype(np.float64), chunk.step_period_s, observed or None)

    def _answer(self, what: str, response, action):
        """A service's answer: the action's message, or why it could not be done."""
        try:
            response.success, response.message = True, action()
        except (BackendError, ExecutionRefused) as err:
            response.success, response.message = False, str(err)
        self.get_logger().info(f"{what}: {response.message}")
        return response

    # Outputs --------------------------------------------------------------------------------------
    def _publish_latched(self) -> None:
        description = self.create_publisher(String, topics.ROBOT_DESCRIPTION, LATCHED_QOS)
        description.publish(String(data=self.kinematics.urdf_path.read_text()))
        self._latched = [description]
        if TFMessage is None:
            return
        static = self.create_publisher(TFMessage, topics.TF_STATIC, LATCHED_QOS)
        static.publish(TFMessage(transforms=transforms({self._base: np.eye(4)}, "world", self.get_clock().now().to_msg())))
        self._latched.append(static)

    def _publish_state(self) -> None:
        snapshot = self.runtime.snapshot()
        if snapshot.measured_q is None:
            return
        stamp = self.get_clock().now().to_msg()
        q = snapshot.measured_q
        names, positions = self.runtime.joint_state(snapshot)
        joints = JointState(name=names, position=positions)
        joints.header.stamp = stamp
        self._joints_pub.publish(joints)

        self._publish_tf(q, stamp)
        tool = PoseStamped()
        tool.header.stamp, tool.header.frame_id = stamp, self._base
        fill_pose(tool.pose.position, tool.pose.orientation, self.kinematics.fk(q).homogeneous)
        self._tool_pub.publish(tool)
        self._publish_path(snapshot.planned_q, stamp)

    def _publish_tf(self, q: np.ndarray, stamp) -> None:
        if self._tf_pub is not None:
            self._tf_pub.publish(TFMessage(transforms=transforms(self.kinematics.link_poses(q), self._base, stamp)))

    def _publish_path(self, planned_q: np.ndarray | None, stamp) -> None:
        if planned_q is self._last_path or (planned_q is not None and self._last_path is not None
                                             and np.array_equal(planned_q, self._last_path)):
            return
        self._last_path = planned_q
        points = None if planned_q is None else self.kinematics.tool_path(planned_q)
        self._path_pub.publish(path_marker(points, self._base, stamp))

    def _on_chunk_source(self, info) -> None:
        # A chunk publisher died or left (its liveliness lease ran out, or it was destroyed).
        if info.not_alive_count_change > 0 or info.alive_count_change < 0:
            self.runtime.source_lost(f"{info.alive_count} publisher(s) of {self.config.action_topic} left")

    def _publish_diagnostics(self) -> None:
        s = self.runtime.snapshot()
        hardware = self.config.robot_ip if self.config.backend.value == "ur_rtde" else "simulated"
        self._diagnostics_pub.publish(diagnostics_msg(topics.DRIVER_DIAGNOSTICS, hardware, s.healthy,
                                                      s.status_message(),
                                                      s.diagnostic_values(self.config.control_rate_hz),
                                                      self.get_clock().now().to_msg()))


main = main_for(Ur3DriverNode, "ur3_driver")
