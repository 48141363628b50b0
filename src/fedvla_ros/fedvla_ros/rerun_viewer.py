"""The running graph in rerun (``viewer:=rerun`` on any profile): every topic the viewer shows
(:mod:`fedvla.app.viewer`), subscribed as it appears, logged on the messages' stamps. By default it
serves rerun's web viewer (bundled in the rerun-sdk wheel, no internet needed) and logs its
address; parameters: the fields of :class:`fedvla.app.viewer.ViewerConfig`."""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from fedvla.app.viewer import RerunLogger, ViewerConfig, close_recording, open_recording
from fedvla_ros.conversions import message_class
from fedvla_ros.node_main import main_for
from fedvla_ros.parameters import declare_config

DISCOVERY_PERIOD_S = 1.0


class RerunViewer(Node):
    def __init__(self) -> None:
        super().__init__("rerun_viewer")
        self.config = declare_config(self, ViewerConfig)
        self.stream, where = open_recording(self.config, "live")
        self.logger = RerunLogger(self.stream)
        self._subscribed: dict[str, object] = {}
        self.create_timer(DISCOVERY_PERIOD_S, self._discover)
        self.get_logger().info(where)

    def _discover(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic in self._subscribed or not RerunLogger.logs(topic):
                continue
            # Best effort takes both kinds of publisher: a viewer may miss a frame, never block one.
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
            self._subscribed[topic] = self.create_subscription(
                message_class(types[0]), topic, lambda msg, t=topic: self._log(t, msg), qos)
            self.get_logger().info(f"showing {topic}")

    def _log(self, topic: str, msg) -> None:
        try:
            self.logger.log(topic, msg, self.get_clock().now().nanoseconds / 1e9)
        except ValueError as err:  # a malformed message: said once per topic, the others go on
            self.get_logger().warn(f"not shown, {topic}: {err}", throttle_duration_sec=10.0)

    def destroy_node(self) -> None:
        close_recording(self.stream)
        super().destroy_node()


main = main_for(RerunViewer, "rerun_viewer")
