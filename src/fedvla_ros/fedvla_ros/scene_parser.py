"""Scene parser node (IOSP, FedVLA §3.1): camera images + instruction in, parsed scenes out.

Subscribes, for every camera in ``cameras``, to ``/camera/<name>/color/image_raw`` and
``color/camera_info`` (and, with the ``sim`` detector, the camera's ``segmentation/image_raw``
and latched ``segmentation/labels``), and to ``/instruction`` (std_msgs/String; the
``instruction`` parameter is the initial one). On a timer at ``rate_hz`` it parses each camera's
newest unparsed frame (a sim frame once its label image with the same stamp has arrived) and
publishes:

* ``~/parsed_scene`` (fedvla_interfaces/ParsedScene): one per camera frame, stamped and framed
  like the image; what an IOSP policy consumes;
* ``~/markers`` (visualization_msgs/MarkerArray): each object's box and name in the camera's
  optical frame, on the plane ``marker_depth_m`` ahead, coloured by group (target red,
  surrounding amber, background blue);
* ``~/<camera>/annotated_image`` (sensor_msgs/Image): the image with boxes and the selected patch
  tokens tinted by group; rendered only while someone subscribes;
* ``~/target_position`` (geometry_msgs/PointStamped): with ``locate_target``, the instruction's
  target located in 3-D with the camera's ``aligned_depth_to_color/image_raw`` frame of the same
  stamp (:mod:`fedvla.iosp.localize`), in the camera's optical frame; also a sphere on
  ``~/markers``. What the arm driver's ``object_position_topic`` consumes.

Parameters: the fields of :class:`fedvla.iosp.runtime.SceneParserRuntimeConfig` and
:class:`fedvla.iosp.localize.TargetLocatorConfig`.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from fedvla import topics
from fedvla.data.messages import parsed_scene_fields
from fedvla.iosp.frames import FrameSync
from fedvla.iosp.localize import TargetLocatorConfig, locate_target
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.runtime import SceneParserRuntime, SceneParserRuntimeConfig
from fedvla.iosp.visualize import annotate
from fedvla_interfaces.msg import ObjectLabels, ParsedScene, SceneObject
from fedvla_ros.conversions import (camera_matrix, image_msg, image_to_array, labels_from_msg, objects_from_msg,
                                    scene_markers, stamp_ns, target_marker, target_position_msg)
from fedvla_ros.node_main import main_for
from fedvla_ros.parameters import declare_config
from fedvla_ros.qos import LATCHED_QOS

MISSING_LABELS_WARN_S = 2.0


class SceneParserNode(Node):
    def __init__(self) -> None:
        super().__init__("scene_parser")
        self.config = declare_config(self, SceneParserRuntimeConfig)
        self.locator = declare_config(self, TargetLocatorConfig)
        self.runtime = SceneParserRuntime(self.config)
        self.instruction = self.config.instruction
        self.frames = FrameSync(self.config.cameras, needs_labels=self.runtime.needs_labels)
        self._camera_matrix: dict[str, np.ndarray] = {}
        self._marker_counts: dict[str, int] = dict.fromkeys(self.config.cameras, 0)
        self._annotated_pubs = {}
        for camera in self.config.cameras:
            node = topics.camera_node(camera)
            self.create_subscription(Image, topics.node_topic(node, topics.COLOR_IMAGE),
                                     lambda msg, c=camera: self._on_image(c, msg), qos_profile_sensor_data)
            self.create_subscription(CameraInfo, topics.node_topic(node, topics.COLOR_INFO),
                                     lambda msg, c=camera: self._on_info(c, msg), qos_profile_sensor_data)
            if self.runtime.needs_labels:
                self.create_subscription(Image, topics.node_topic(node, topics.SEGMENTATION_IMAGE),
                                         lambda msg, c=camera: self._on_label_image(c, msg), qos_profile_sensor_data)
                self.create_subscription(ObjectLabels, topics.node_topic(node, topics.SEGMENTATION_LABELS),
                                         lambda msg, c=camera: self._on_label_table(c, msg), LATCHED_QOS)
            if self.locator.locate_target:
                self.create_subscription(Image, topics.node_topic(node, topics.ALIGNED_DEPTH_IMAGE),
                                         lambda msg, c=camera: self._on_depth_image(c, msg), qos_profile_sensor_data)
            self._annotated_pubs[camera] = self.create_publisher(
                Image, topics.private_topic(topics.annotated_image_topic(camera)), qos_profile_sensor_data)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, 10)
        self._scene_pub = self.create_publisher(ParsedScene, topics.private_topic(topics.PARSED_SCENE), 10)
        self._marker_pub = self.create_publisher(MarkerArray, topics.private_topic(topics.SCENE_MARKERS), 10)
        self._target_pub = self.create_publisher(PointStamped, topics.private_topic(topics.TARGET_POSITION), 10)
        self.create_timer(1.0 / self.config.rate_hz, self._parse_new_frames)
        self.get_logger().info(
            f"parsing {list(self.config.cameras)} at up to {self.config.rate_hz:g} Hz with the {self.config.detector.value} "
            f"detector, {self.config.selection_rule.value} token selection ({self.config.tokens_per_group} per group on "
            f"{self.config.patch_rows}x{self.config.patch_cols}), instruction {self.instruction!r}")

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _on_image(self, camera: str, msg: Image) -> None:
        self.frames.add_image(camera, stamp_ns(msg.header), msg, self._now_s())

    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        try:
            self._camera_matrix[camera] = camera_matrix(msg)
        except ValueError as err:
            self.get_logger().error(f"{camera}: {err}", throttle_duration_sec=10.0)

    def _on_label_image(self, camera: str, msg: Image) -> None:
        self.frames.add_labels(camera, stamp_ns(msg.header), msg)

    def _on_depth_image(self, camera: str, msg: Image) -> None:
        awaiting = self.frames.add_depth(camera, stamp_ns(msg.header), msg)
        if awaiting is not None:
            parse, header = awaiting.parsed
            markers = self._locate(camera, parse, header, msg)
            if markers:
                self._marker_pub.publish(MarkerArray(markers=markers))

    def _locate(self, camera: str, parse: CameraParse, header, depth_msg: Image) -> list:
        """Publish the target's position from the frame's depth image; its marker (or none)."""
        matrix = self._camera_matrix.get(camera)
        if matrix is None:
            return []
        try:
            location = locate_target(parse, image_to_array(depth_msg), matrix, self.locator)
        except ValueError as err:
            self.get_logger().warn(f"{camera}: depth image: {err}", throttle_duration_sec=10.0)
            return []
        if location is None:
            return []
        self._target_pub.publish(target_position_msg(location, header))
        return [target_marker(location, header, camera, self._marker_lifetime_s)]

    @property
    def _marker_lifetime_s(self) -> float:
        return max(1.0, 3.0 / self.config.rate_hz)

    def _on_label_table(self, camera: str, msg: ObjectLabels) -> None:
        try:
            self.runtime.set_objects(camera, objects_from_msg(msg))
        except ValueError as err:
            self.get_logger().error(f"{camera}: bad label table: {err}")

    def _on_instruction(self, msg: String) -> None:
        if msg.data != self.instruction:
            self.get_logger().info(f"instruction: {msg.data!r}")
        self.instruction = msg.data

    def _parse_new_frames(self) -> None:
        for camera in self.config.cameras:
            table_missing = self.runtime.needs_labels and not self.runtime.has_objects(camera)
            ready = None if table_missing else self.frames.take(camera)
            if ready is None:
                if self.frames.waiting_for_labels_s(camera, self._now_s()) > MISSING_LABELS_WARN_S:
                    self.get_logger().warn(f"{camera}: no segmentation labels for its frames: start its camera node "
                                           "with enable_segmentation:=true (sim backend), or use detector:=yolo",
                                           throttle_duration_sec=10.0)
                continue
            frame, label_msg = ready
            self._publish(camera, frame.image, None if label_msg is None else labels_from_msg(label_msg))

    def _publish(self, camera: str, msg: Image, labels: np.ndarray | None) -> None:
        try:
            image = image_to_array(msg)
        except ValueError as err:
            self.get_logger().warn(f"{camera}: {err}", throttle_duration_sec=10.0)
            image = np.zeros((0, 0, 3), np.uint8)  # the parser's defined output for a malformed image
        parse = self.runtime.parse(camera, image, self.instruction, labels)
        self._scene_pub.publish(ParsedScene(header=msg.header, **parsed_scene_fields(
            parse, self.config.selection_rule.value, SceneObject)))
        markers = []
        matrix = self._camera_matrix.get(camera)
        if matrix is not None:
            markers = scene_markers(parse, msg.header, matrix, self.config.marker_depth_m, self._marker_counts[camera],
                                    lifetime_s=self._marker_lifetime_s)
            self._marker_counts[camera] = len(parse.detections)
        if self.locator.locate_target and parse.detections:
            depth_msg = self.frames.depth(camera, stamp_ns(msg.header))
            if depth_msg is not None:
                markers += self._locate(camera, parse, msg.header, depth_msg)
            else:  # its depth image is still on the way
                self.frames.await_depth(camera, stamp_ns(msg.header), (parse, msg.header))
        if markers:  # one array per frame: RViz shows a frame's boxes and target together
            self._marker_pub.publish(MarkerArray(markers=markers))
        publisher = self._annotated_pubs[camera]
        if publisher.get_subscription_count() and image.size:
            publisher.publish(image_msg(annotate(image, parse), "rgb8", msg.header.stamp, msg.header.frame_id))


main = main_for(SceneParserNode, "scene_parser")
