"""Compares a live policy's action chunks with the ones a bag recorded, while the bag plays (the
``replay`` profile: bag_player → policy node → this node). Runs on the bag's clock
(``use_sim_time``). When the player reports ``done``, it waits ``settle_s`` for the last
predictions, writes the report of :mod:`fedvla.replay` (replay.md, replay.json, replay.png) to
``output_dir`` and ends the launch. Parameters: the fields of :class:`fedvla.replay.ReplayEvaluatorConfig`.
"""
from __future__ import annotations

import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import Bool

from fedvla.data.messages import parse_action_chunk
from fedvla.replay import PLOT_FILE, REPORT_FILE, LiveReplay, ReplayEvaluatorConfig, write_replay_report
from fedvla_interfaces.msg import ActionChunk
from fedvla_ros.conversions import stamp_ns
from fedvla_ros.node_main import NodeExit, main_for
from fedvla_ros.parameters import declare_config


class ReplayEvaluator(Node):
    def __init__(self) -> None:
        super().__init__("replay_evaluator")
        self.config = declare_config(self, ReplayEvaluatorConfig)
        self.output = self.config.resolved_output_dir()
        self.replay = LiveReplay()
        self._done_at: float | None = None
        self.create_subscription(ActionChunk, self.config.predicted_topic, self._on_predicted, 100)
        self.create_subscription(ActionChunk, self.config.recorded_topic, self._on_recorded, 100)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(Bool, self.config.done_topic, self._on_done, latched)
        # A wall-clock timer: the bag's clock stops with the bag.
        self._timer = self.create_timer(0.2, self._check_done, clock=self._wall_clock())
        self.get_logger().info(f"comparing {self.config.predicted_topic} with {self.config.recorded_topic}; report "
                               f"to {self.output}")

    def _wall_clock(self):
        from rclpy.clock import Clock, ClockType

        return Clock(clock_type=ClockType.STEADY_TIME)

    def _on_predicted(self, msg: ActionChunk) -> None:
        try:
            chunk = parse_action_chunk(msg)
            self.replay.add_predicted(stamp_ns(msg.header), chunk.actions, chunk.step_period_s, chunk.compute_time_s)
        except ValueError as err:
            self.get_logger().error(f"predicted chunk refused: {err}", throttle_duration_sec=5.0)

    def _on_recorded(self, msg: ActionChunk) -> None:
        try:
            chunk = parse_action_chunk(msg)
            self.replay.add_recorded(stamp_ns(msg.header), chunk.actions, chunk.step_period_s)
        except ValueError as err:
            self.get_logger().error(f"recorded chunk refused: {err}", throttle_duration_sec=5.0)

    def _on_done(self, msg: Bool) -> None:
        if msg.data and self._done_at is None:
            self._done_at = time.monotonic()

    def _check_done(self) -> None:
        if self._done_at is None or time.monotonic() - self._done_at < self.config.settle_s:
            return
        recorded, predicted = self.replay.counts
        record = self.replay.record()
        if not len(record):
            raise NodeExit(f"nothing to compare: {recorded} recorded and {predicted} predicted chunks; did the policy "
                           "run (checkpoint, inputs) and does the bag hold action chunks?", status=1)
        details = {"bag": self.config.bag_path, "checkpoint": self.config.checkpoint_path,
                   "recorded chunks": recorded, "predicted chunks": predicted, "through": "ROS graph (replay profile)"}
        metrics = write_replay_report(self.output, record, title="Open-loop replay (ROS graph)", details=details)
        raise NodeExit(f"{metrics.steps} predictions compared, chunk MAE {metrics.chunk_mae:.4f}; report "
                       f"{self.output / REPORT_FILE}, plot {self.output / PLOT_FILE}")


main = main_for(ReplayEvaluator, "replay_evaluator")
