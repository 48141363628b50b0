"""Records every topic of the running graph to a rosbag2 directory, like ``ros2 bag record -a``,
with the ``rosbags`` library (so it works where rosbag2 is not installed). Messages are stored
as received (serialized CDR), stamped with their receive time. Parameters: the fields of
:class:`fedvla.bag.RecorderConfig`.
"""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from fedvla.bag import BagError, BagWriter, RecorderConfig
from fedvla_ros.conversions import message_class
from fedvla_ros.node_main import StartupError, main_for
from fedvla_ros.parameters import declare_config


class BagRecorder(Node):
    def __init__(self) -> None:
        super().__init__("bag_recorder")
        self.config = declare_config(self, RecorderConfig)
        self.output_path = self.config.resolved_output_path()
        try:
            self.writer = BagWriter(self.output_path, self.config.storage, compression=self.config.compression)
        except BagError as err:
            raise StartupError(str(err)) from err
        # Every callback runs on the executor's one thread: sqlite3 objects belong to the
        # thread that made them, so the writer is only ever touched from there.
        self._recorded_topics: dict[str, object] = {}
        self.create_timer(self.config.discovery_period_s, self._discover)
        self.get_logger().info(f"recording to {self.output_path} ({self.config.storage}, compression "
                               f"{self.config.compression})")

    def _qos_for(self, topic: str) -> QoSProfile:
        """Match the publishers, as rosbag2 does: best effort if any publisher is best effort."""
        publishers = self.get_publishers_info_by_topic(topic)
        qos = QoSProfile(depth=100)
        if any(p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers):
            qos.reliability = ReliabilityPolicy.BEST_EFFORT
        if publishers and all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers):
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
        return qos

    def _discover(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic in self._recorded_topics or topic in self.config.exclude_topics:
                continue
            if not self.get_publishers_info_by_topic(topic):
                continue  # only subscribers so far: the QoS to match is unknown yet
            msgtype = types[0]
            try:
                cls = message_class(msgtype)
                self.writer.add_topic(topic, msgtype)
            except (ImportError, AttributeError, BagError) as err:
                self.get_logger().warn(f"not recording {topic} ({msgtype}): {err}", once=True)
                self._recorded_topics[topic] = None
                continue
            self._recorded_topics[topic] = self.create_subscription(
                cls, topic, lambda raw, t=topic: self._write(t, raw), self._qos_for(topic), raw=True)
            self.get_logger().info(f"recording {topic} [{msgtype}]")

    def _write(self, topic: str, raw: bytes) -> None:
        self.writer.write(topic, self.get_clock().now().nanoseconds, raw)

    def destroy_node(self) -> None:
        self.writer.close()
        counts = ", ".join(f"{t}: {n}" for t, n in sorted(self.writer.counts.items()))
        self.get_logger().info(f"wrote {self.output_path} ({counts or 'no messages'})")
        super().destroy_node()


main = main_for(BagRecorder, "bag_recorder")
