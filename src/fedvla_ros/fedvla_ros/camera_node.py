"""Camera node: a RealSense device, a RealSense recording or a simulated camera, published
on realsense-ros topic names (``~/color/image_raw``, ``~/color/camera_info``,
``~/aligned_depth_to_color/image_raw``, ``~/aligned_depth_to_color/camera_info``) with
sensor-data QoS. A simulated camera with ``enable_segmentation`` also publishes the object label
of every pixel on ``~/segmentation/image_raw`` (16UC1, same stamp as the colour image) and its
label table on ``~/segmentation/labels`` (latched), what the scene parser's sim detector reads.
Parameters: the fields of :class:`fedvla.camera.CameraConfig`, plus ``optical_frame_id``.
"""
from __future__ import annotations

import threading

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from fedvla import topics
from fedvla.camera import CameraConfig, CameraError, EndOfRecording, make_camera
from fedvla_interfaces.msg import ObjectLabels
from fedvla_ros.conversions import frame_messages, label_image_msg, object_labels_msg
from fedvla_ros.node_main import StartupError, main_for
from fedvla_ros.parameters import declare, declare_config
from fedvla_ros.qos import LATCHED_QOS


class CameraNode(Node):
    def __init__(self) -> None:
        super().__init__("camera")
        self.config = declare_config(self, CameraConfig)
        self.frame_id = declare(self, "optical_frame_id", f"{self.get_name()}_color_optical_frame",
                                "frame of the colour optical axis (the aligned depth shares it)")
        qos = qos_profile_sensor_data
        self._color_pub = self.create_publisher(Image, topics.private_topic(topics.COLOR_IMAGE), qos)
        self._color_info_pub = self.create_publisher(CameraInfo, topics.private_topic(topics.COLOR_INFO), qos)
        self._depth_pub = self._depth_info_pub = None
        if self.config.enable_depth:
            self._depth_pub = self.create_publisher(Image, topics.private_topic(topics.ALIGNED_DEPTH_IMAGE), qos)
            self._depth_info_pub = self.create_publisher(
                CameraInfo, topics.private_topic(topics.ALIGNED_DEPTH_INFO), qos)
        self._labels_pub = self._labels_table_pub = None
        if self.config.enable_segmentation:
            self._labels_pub = self.create_publisher(Image, topics.private_topic(topics.SEGMENTATION_IMAGE), qos)
            self._labels_table_pub = self.create_publisher(
                ObjectLabels, topics.private_topic(topics.SEGMENTATION_LABELS), LATCHED_QOS)
        self.camera = make_camera(self.config)
        self.frames_published = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._connect_error: CameraError | None = None
        # Capture blocks in read() at the sensor's pace, so it runs on its own thread; the camera
        # connects on that thread too, because an OpenGL context (sim) belongs to one thread.
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        try:
            self._connected.wait()
        except KeyboardInterrupt:  # stopped while connecting: let the capture thread clean up
            self._stop.set()
            self._thread.join(timeout=10.0)
            raise
        if self._connect_error is not None:
            raise StartupError(str(self._connect_error))
        self.get_logger().info(
            f"{self.config.backend.value} camera streaming {self.config.width}x{self.config.height} "
            f"at {self.config.fps:g} fps on {self.resolve_topic_name(topics.private_topic(topics.COLOR_IMAGE))}")

    def _run(self) -> None:
        try:
            self.camera.connect()
        except CameraError as err:
            self._connect_error = err
            return
        finally:
            self._connected.set()
        if self._labels_table_pub is not None:
            self._labels_table_pub.publish(object_labels_msg(self.camera.objects, self.get_clock().now().to_msg(),
                                                             self.frame_id))
        try:
            self._capture_loop()
        except Exception as err:  # a dead capture thread must not leave a silent node behind
            if self.context.ok():  # (publishing fails harmlessly while ROS shuts down)
                self.get_logger().fatal(f"capture failed: {err!r}")
                self.context.try_shutdown()
        finally:
            self.camera.disconnect()

    def _capture_loop(self) -> None:
        timeout_ms = max(1000, int(3000 / self.config.fps))
        while not self._stop.is_set() and self.context.ok():
            try:
                frame = self.camera.read(timeout_ms)
            except EndOfRecording as err:
                self.get_logger().info(f"{err}: stopping")
                self.context.try_shutdown()
                return
            except CameraError as err:
                self.get_logger().warn(str(err), throttle_duration_sec=5.0)
                continue
            stamp = self.get_clock().now().to_msg()
            color, info, depth = frame_messages(frame, stamp, self.frame_id)
            self._color_pub.publish(color)
            self._color_info_pub.publish(info)
            if depth is not None and self._depth_pub is not None:
                self._depth_pub.publish(depth)
                self._depth_info_pub.publish(info)
            if frame.labels is not None and self._labels_pub is not None:
                self._labels_pub.publish(label_image_msg(frame.labels, stamp, self.frame_id))
            self.frames_published += 1

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        super().destroy_node()


main = main_for(CameraNode, "camera_node")
