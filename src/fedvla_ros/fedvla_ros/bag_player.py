"""Plays a rosbag2 directory back on its topics at the recorded timing, like ``ros2 bag play
--clock`` (which a pip-only machine does not have), with the ``rosbags`` library. Messages are
published as recorded (serialized CDR, no conversion); ``/clock`` follows the bag's time so nodes
with ``use_sim_time`` run on it. Once every message is out, ``~/done`` (std_msgs/Bool, latched)
turns true. Parameters: the fields of :class:`fedvla.bag.PlayerConfig`.
"""
from __future__ import annotations

import threading
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool

from fedvla import topics
from fedvla.bag import BagError, PlayerConfig, read_raw_messages, summarize_bag
from fedvla_ros.conversions import message_class
from fedvla_ros.node_main import StartupError, main_for
from fedvla_ros.parameters import declare_config

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class BagPlayer(Node):
    def __init__(self) -> None:
        super().__init__("bag_player")
        self.config = declare_config(self, PlayerConfig)
        try:
            self.summary = summarize_bag(self.config.bag_path)
        except BagError as err:
            raise StartupError(str(err)) from err
        self._outputs = {}
        for topic in self.summary.topics:
            if not self.config.plays(topic.name):
                continue
            try:
                cls = message_class(topic.msgtype)
            except (ImportError, AttributeError, ValueError):
                self.get_logger().warn(f"not playing {topic.name}: {topic.msgtype} is not installed")
                continue
            qos = LATCHED if topic.name in self.config.latched_topics else QoSProfile(depth=100)
            self._outputs[topic.name] = self.create_publisher(cls, self.config.output_topic(topic.name), qos)
        missing = [t for t in self.config.wait_for_subscribers
                   if t not in {self.config.output_topic(n) for n in self._outputs}]
        if missing:
            raise StartupError(f"wait_for_subscribers names {missing}, which this bag does not play "
                               f"(it plays {sorted(self.config.output_topic(n) for n in self._outputs)})")
        self._clock = self.create_publisher(Clock, topics.CLOCK, 10) if self.config.publish_clock else None
        self._done = self.create_publisher(Bool, topics.private_topic(topics.PLAYER_DONE), LATCHED)
        self._done.publish(Bool(data=False))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)
        self._thread.start()
        self.get_logger().info(f"playing {self.config.bag_path} ({self.summary.duration_s:.1f} s, "
                               f"{len(self._outputs)} topics) at {self.config.rate:g}x")

    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock is not None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(stamp_ns, 1_000_000_000)
            self._clock.publish(msg)

    def _wait_for_subscribers(self) -> bool:
        outputs = {self.config.output_topic(n): p for n, p in self._outputs.items()}
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not self._stop.is_set():
            waiting = [t for t in self.config.wait_for_subscribers if outputs[t].get_subscription_count() == 0]
            if not waiting:
                return True
            if time.monotonic() > deadline:
                self.get_logger().error(f"no subscriber on {', '.join(waiting)} after "
                                        f"{self.config.startup_timeout_s:g} s: not playing")
                return False
            self.get_logger().info(f"waiting for subscribers on {', '.join(waiting)}", throttle_duration_sec=5.0)
            time.sleep(0.1)
        return False

    def _play(self) -> None:
        # A thread of its own: playback keeps the recorded timing whatever the executor is doing.
        if not self._wait_for_subscribers():
            return
        rate, period = self.config.rate, self.config.clock_period_s
        first_ns = wall_start = group_ns = None
        published = 0
        for topic, stamp_ns, raw in read_raw_messages(self.config.bag_path, list(self._outputs)):
            if first_ns is None:
                first_ns, group_ns, wall_start = stamp_ns, stamp_ns, time.monotonic()
            if stamp_ns > group_ns:
                # /clock reaches a stamp only once every message of that stamp is out, so that a
                # node's timer firing at it sees them (as far as delivery order allows).
                self._publish_clock(group_ns)
                target = wall_start + (stamp_ns - first_ns) / 1e9 / rate
                while (now := time.monotonic()) < target:  # /clock keeps ticking through gaps
                    if self._stop.is_set():
                        return
                    time.sleep(min(period, target - now))
                    self._publish_clock(min(first_ns + round((time.monotonic() - wall_start) * rate * 1e9),
                                            stamp_ns - 1))
                group_ns = stamp_ns
            self._outputs[topic].publish(raw)
            published += 1
        if group_ns is not None:
            self._publish_clock(group_ns)
        self._done.publish(Bool(data=True))
        self.get_logger().info(f"played {published} messages of {self.config.bag_path}")

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        super().destroy_node()


main = main_for(BagPlayer, "bag_player")
