"""Policy node: camera images + joint states + instruction in, action chunks out.

Subscribes to ``/camera/<name>/color/image_raw`` for every camera the checkpoint was trained
with, ``/joint_states`` and ``/instruction`` (std_msgs/String; the ``instruction`` parameter
is the initial one). When ``inference_mode`` says a step is due (:mod:`fedvla.app.inference_schedule`:
every ``1/rate_hz``, or once the last chunk's executed actions run low or out) it runs the policy
on the newest inputs (none older than ``max_input_age_s``) and publishes ``~/action_chunk``
(fedvla_interfaces/ActionChunk; ``injected_latency_s`` holds it back, for benchmarks)
and ``~/expert_activation`` (per-layer expert token counts of that step). A checkpoint trained
with IOSP also waits for ``/scene_parser/parsed_scene`` (one ParsedScene per camera): the parse
runs in the scene_parser node by default, so RViz, bags and the policy share one parse and the
policy's timer never waits on detection. Parameters: the fields of
:class:`fedvla.app.policy_runtime.PolicyRuntimeConfig`.
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from fedvla import topics
from fedvla.app.inference_schedule import InferenceSchedule
from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
from fedvla.data.messages import action_chunk_fields, expert_activation_fields, parse_parsed_scene
from fedvla.data.observations import proprio_from_joint_state
from fedvla.model.checkpoint import CheckpointError
from fedvla.iosp.types import SelectedTokens
from fedvla_interfaces.msg import ActionChunk, ExpertActivation, ParsedScene
from fedvla_ros.conversions import image_to_array
from fedvla_ros.node_main import StartupError, main_for
from fedvla_ros.parameters import declare_config
from fedvla_ros.qos import ACTION_CHUNK_QOS


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.config = declare_config(self, PolicyRuntimeConfig)
        try:
            self.runtime = PolicyRuntime(self.config)
        except CheckpointError as err:
            raise StartupError(str(err)) from err
        self.instruction = self.config.instruction
        self._images: dict[str, tuple[Image, float]] = {}
        self._joints: tuple[JointState, float] | None = None
        for name in self.runtime.camera_names:
            topic = topics.camera_topic(name, topics.COLOR_IMAGE)
            self.create_subscription(Image, topic, lambda msg, n=name: self._on_image(n, msg), qos_profile_sensor_data)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, qos_profile_sensor_data)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, 10)
        self._scenes: dict[str, tuple[SelectedTokens, float]] = {}  # per camera, with its arrival time
        if self.runtime.uses_iosp:
            # IOSP runs in the scene_parser node (one parse shared by the policy, RViz and bags).
            topic = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)
            self.create_subscription(ParsedScene, topic, self._on_scene, 10)
        self._chunk_pub = self.create_publisher(ActionChunk, topics.private_topic(topics.ACTION_CHUNK), ACTION_CHUNK_QOS)
        self._experts_pub = self.create_publisher(ExpertActivation, topics.private_topic(topics.EXPERT_ACTIVATION), 10)
        self.schedule = InferenceSchedule(self.config.inference_mode, 1.0 / self.config.rate_hz,
                                          self.runtime.model_config.execute_steps, self.config.refill_threshold)
        self.create_timer(self.schedule.poll_period_s, self._step)
        self.get_logger().info(f"policy from {self.config.checkpoint_path} at {self.config.rate_hz:g} Hz "
                               f"({self.schedule.mode.value} inference), cameras {list(self.runtime.camera_names)}, "
                               f"instruction {self.instruction!r}")

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _on_image(self, name: str, msg: Image) -> None:
        self._images[name] = (msg, self._now_s())

    def _on_scene(self, msg: ParsedScene) -> None:
        grid, k = self.runtime.model_config.patch_grid, self.runtime.model_config.iosp_tokens_per_group
        try:
            scene = parse_parsed_scene(msg)
        except ValueError as err:
            self.get_logger().error(f"scene parse of {msg.camera_name!r} refused: {err}", throttle_duration_sec=5.0)
            return
        if scene.grid != tuple(grid) or scene.selection.indices.shape[1] != k:
            self.get_logger().error(f"scene parse of {scene.camera!r} selects {msg.tokens_per_group} tokens on a "
                                    f"{scene.grid[0]}x{scene.grid[1]} grid; the policy needs {k} on {grid[0]}x{grid[1]}",
                                    throttle_duration_sec=5.0)
            return
        self._scenes[scene.camera] = (scene.selection, self._now_s())

    def _on_joints(self, msg: JointState) -> None:
        self._joints = (msg, self._now_s())

    def _on_instruction(self, msg: String) -> None:
        if msg.data != self.instruction:
            self.get_logger().info(f"instruction: {msg.data!r}")
        self.instruction = msg.data

    def _proprio(self, msg: JointState) -> np.ndarray:
        try:
            return proprio_from_joint_state(msg.name, msg.position, self.config.proprio_joint_names,
                                            self.runtime.model_config.proprio_dim)
        except ValueError as err:
            raise ValueError(f"{topics.JOINT_STATES} {err}") from None

    def _observed(self, tick) -> object:
        """The stamp of the observation a chunk answers: its oldest camera frame's (the camera
        stamps the capture), or the tick when a camera leaves its frames unstamped."""
        stamps = [self._images[n][0].header.stamp for n in self.runtime.camera_names]
        if any(s.sec == 0 and s.nanosec == 0 for s in stamps):
            return tick.to_msg()
        return min(stamps, key=lambda s: (s.sec, s.nanosec))

    def _step(self) -> None:
        # The chunk is stamped with the time of the observation it answers, not of its publication:
        # step h of it is meant for stamp + h · step_period (what a replay compares it with), and
        # the driver measures the loop's latency from it to the chunk's first servo setpoint.
        tick = self.get_clock().now()
        now, max_age = tick.nanoseconds / 1e9, self.config.max_input_age_s
        if not self.schedule.due(now):
            return
        stale = [n for n in self.runtime.camera_names if n not in self._images or now - self._images[n][1] > max_age]
        if self._joints is None or now - self._joints[1] > max_age:
            stale.append("joint_states")
        if self.runtime.uses_iosp:
            stale += [f"scene parse of {n}" for n in self.runtime.camera_names
                      if n not in self._scenes or now - self._scenes[n][1] > max_age]
        if stale or not self.instruction:
            waiting = ", ".join(stale) if stale else "an instruction"
            self.get_logger().info(f"waiting for {waiting}", throttle_duration_sec=5.0)
            return
        try:
            images = [image_to_array(self._images[n][0]) for n in self.runtime.camera_names]
            selections = None
            if self.runtime.uses_iosp:
                selections = [self._scenes[n][0] for n in self.runtime.camera_names]
            step = self.runtime.step(images, self._proprio(self._joints[0]), self.instruction, selections)
        except ValueError as err:
            self.get_logger().error(str(err), throttle_duration_sec=5.0)
            return
        stamp = self._observed(tick)
        chunk = ActionChunk(**action_chunk_fields(step.chunk, 1.0 / self.config.rate_hz, compute_time_s=step.latency_s))
        chunk.header.stamp = stamp
        routing = step.routing
        activation = ExpertActivation(**expert_activation_fields(step.expert_counts, step.experts_per_token,
                                                                 routing.skills if routing else (),
                                                                 routing.weights if routing else ()))
        activation.header.stamp = stamp
        self.schedule.observed(stamp.sec + 1e-9 * stamp.nanosec)
        if self.config.injected_latency_s > 0:
            self._publish_later(chunk, activation)
        else:
            self._publish(chunk, activation)

    def _publish(self, chunk: ActionChunk, activation: ExpertActivation) -> None:
        self._chunk_pub.publish(chunk)
        self._experts_pub.publish(activation)
        self.schedule.published(self.get_clock().now().nanoseconds / 1e9)

    def _publish_later(self, chunk: ActionChunk, activation: ExpertActivation) -> None:
        """Publish after ``injected_latency_s``, as a slower policy would (a one-shot timer: the
        executor keeps serving the inputs meanwhile)."""
        def fire() -> None:
            self.destroy_timer(timer)
            self._publish(chunk, activation)

        timer = self.create_timer(self.config.injected_latency_s, fire)


main = main_for(PolicyNode, "policy_node")
