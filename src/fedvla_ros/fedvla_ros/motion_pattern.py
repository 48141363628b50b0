"""motion_pattern node: publishes a scripted end-effector pattern as action chunks on
``~/action_chunk`` (fedvla_interfaces/ActionChunk), for bring-up and the simulated demo when no
policy runs. Parameters: the fields of :class:`fedvla.robot.pattern.MotionPatternConfig`."""
from __future__ import annotations

import time

from rclpy.node import Node

from fedvla import topics
from fedvla.data.messages import action_chunk_fields
from fedvla.robot.pattern import ACTION_NAMES, MotionPatternConfig, circle_chunk
from fedvla_interfaces.msg import ActionChunk
from fedvla_ros.node_main import main_for
from fedvla_ros.parameters import declare_config
from fedvla_ros.qos import ACTION_CHUNK_QOS


class MotionPatternNode(Node):
    def __init__(self) -> None:
        super().__init__("motion_pattern")
        self.config = declare_config(self, MotionPatternConfig)
        self._publisher = self.create_publisher(ActionChunk, topics.private_topic(topics.ACTION_CHUNK), ACTION_CHUNK_QOS)
        self._started = time.monotonic()
        self.create_timer(1.0 / self.config.rate_hz, self._publish)
        self.get_logger().info(f"circle of {self.config.radius_m * 100:g} cm every {self.config.period_s:g} s, "
                               f"{self.config.rate_hz:g} chunks/s")

    def _publish(self) -> None:
        actions = circle_chunk(time.monotonic() - self._started, self.config)
        chunk = ActionChunk(**action_chunk_fields(actions, self.config.step_period_s, dimension_names=ACTION_NAMES))
        chunk.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(chunk)


main = main_for(MotionPatternNode, "motion_pattern")
