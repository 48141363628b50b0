"""What the twin's graph tools (``fedvla twin demos``, ``fedvla twin evaluate``) share: the
``twin`` profile started on a free loopback address, a node that resets the cell and recovers the
driver, reads the joint states, the task status and the driver's diagnostics, and a recorder
process per episode that has subscribed to everything an episode needs before the episode starts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.config import ConfigError
from fedvla.graph import Graph, ResolvedNode, find_config_dir
from fedvla.runner import ProfileRunner, RunnerError, find_executable, node_command
from fedvla.twin.ur_controller import free_loopback_host

# What an episode dataset needs from the bag (bag_import), so the recorder must have these first.
RECORDED_TOPICS = [topics.camera_topic(topics.TWIN_CAMERA, topics.COLOR_IMAGE), topics.JOINT_STATES,
                   topics.INSTRUCTION, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)]
PARSED_SCENE_TOPIC = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)


def recorded_topics(parse_scene: bool) -> list[str]:
    """What the recorder must have subscribed to before an episode starts: with the scene parser
    running, its parses too (IOSP datasets need them from the first step)."""
    return RECORDED_TOPICS + ([PARSED_SCENE_TOPIC] if parse_scene else [])


def scene_parser_arguments(detector_weights: Path | None) -> dict[str, str]:
    """The twin profile's launch arguments that run the scene parser (IOSP) on the trained detector."""
    return {"parse_scene": "true", "detector_weights": str(detector_weights)} if detector_weights else {}


RECORDER_TIMEOUT_S = 30.0
RECORDER_STARTS = 3  # recorders started for one episode before giving up
STOP_GRACE_S = 30.0  # a recorder closing its bag after SIGINT (a long episode's mcap: seconds)
# A recorder given up on (its bag is deleted) need not close it. In one suite run, recorders
# interrupted right after they started did not end on SIGINT, and four 30 s waits ran out the test.
DISCARD_GRACE_S = 3.0
INSTRUCTION_PERIOD_S = 0.5
# Left out of the bags: the aligned depth (bags stay small; no policy reads it).
UNRECORDED_TOPICS = ["/rosout", "/parameter_events", topics.camera_topic(topics.TWIN_CAMERA, topics.ALIGNED_DEPTH_IMAGE),
                     topics.camera_topic(topics.TWIN_CAMERA, topics.ALIGNED_DEPTH_INFO)]


def exit_with(run: Callable[[], int]) -> None:
    """A tool's exit: its status, one line and status 2 for a bad configuration, 130 on Ctrl-C."""
    try:
        sys.exit(run())
    except (ConfigError, RunnerError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


@contextlib.contextmanager
def running_twin(arguments: dict[str, str], output: Path, node_factory: Callable, startup_timeout_s: float,
                 niceness: int = 0):
    """The twin profile on a free loopback address (its processes' output to ``output/graph.log``)
    and the tool's node (``node_factory(context)``): yields (node, graph, log); stops all on exit.
    ``niceness``: this process's own work (not the graph's nodes) yields the CPU to the robot."""
    import rclpy

    log = open(output / "graph.log", "a")
    graph = Graph.load(find_config_dir())
    runner = ProfileRunner(graph, "twin", {"robot_ip": free_loopback_host(), "launch_rviz": "false", **arguments},
                           output=log)
    context = rclpy.Context()
    rclpy.init(context=context)
    ros = None
    try:
        runner.start()
        if niceness:
            os.nice(niceness)  # (after starting the graph: its nodes keep normal priority)
        runner.wait(until=lambda: not runner.not_up(), startup_timeout_s=startup_timeout_s)
        ros = node_factory(context)
        yield ros, graph, log
    finally:
        if ros is not None:
            ros.close()
        rclpy.shutdown(context=context)
        runner.stop()
        log.close()


class TwinNode:
    """The tool's ROS side: reset and recover, and what it reads (joints, task status, the driver's
    fault and diagnostics, the policy's action chunks)."""

    def __init__(self, context, name: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from fedvla_interfaces.msg import ActionChunk, TaskStatus
        from fedvla_interfaces.srv import ResetScene
        from fedvla_ros.qos import LATCHED_QOS

        self.node = rclpy.create_node(name, context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.ActionChunk, self.String = ActionChunk, String
        self.instruction = self.node.create_publisher(String, topics.INSTRUCTION, LATCHED_QOS)
        self.joints: dict[str, float] = {}
        self.status = None
        self.driver_fault = ""  # the driver's fault reason, as its diagnostics last reported it
        self.driver_values: dict[str, str] = {}  # its last diagnostics' key/values
        self.chunks_seen: list = []  # action chunks on /policy/action_chunk since the last clear
        self._instruction = None  # kept published (keep_instruction)
        self.node.create_timer(INSTRUCTION_PERIOD_S, self._publish_instruction)
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)
        self.node.create_subscription(TaskStatus, topics.node_topic(topics.WORKCELL_NODE, topics.TASK_STATUS),
                                      self._on_status, LATCHED_QOS)
        self.reset_client = self.node.create_client(
            ResetScene, topics.node_topic(topics.WORKCELL_NODE, topics.RESET_SCENE_SERVICE))
        self.recover_client = self.node.create_client(
            Trigger, topics.node_topic(topics.UR3_DRIVER_NODE, topics.RECOVER_SERVICE))
        self.ResetScene, self.Trigger = ResetScene, Trigger
        from std_srvs.srv import SetBool

        self.enable_client = self.node.create_client(
            SetBool, topics.node_topic(topics.UR3_DRIVER_NODE, topics.ENABLE_SERVICE))
        self.SetBool = SetBool

    def keep_instruction(self, text: str) -> None:
        """Publish the instruction now and every INSTRUCTION_PERIOD_S while this node spins: the
        policy and scene parser subscribe volatile (a terminal's ``ros2 topic pub`` must reach them),
        so one that matched after a single message would never get it."""
        self._instruction = self.String(data=text)
        self._publish_instruction()

    def _publish_instruction(self) -> None:
        if self._instruction is not None:
            self.instruction.publish(self._instruction)

    def watch_chunks(self) -> None:
        """Collect the policy's chunks (:attr:`chunks_seen`)."""
        from fedvla_ros.qos import ACTION_CHUNK_QOS

        self.node.create_subscription(self.ActionChunk, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK),
                                      self.chunks_seen.append, ACTION_CHUNK_QOS)

    def _on_joints(self, msg) -> None:
        self.joints = dict(zip(msg.name, msg.position))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == topics.DRIVER_DIAGNOSTICS:
                self.driver_fault = status.message if status.message.startswith("fault") else ""
                self.driver_values = {v.key: v.value for v in status.values}

    def _on_status(self, msg) -> None:
        self.status = msg

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=max(0.0, min(0.02, deadline - time.monotonic())))

    def call(self, client, request, timeout_s: float = 30.0):
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise RunnerError(f"{client.srv_name} is not available")
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if future.result() is None:
            raise RunnerError(f"{client.srv_name} did not answer within {timeout_s:g} s")
        return future.result()

    def objects(self) -> dict[str, np.ndarray]:
        positions = np.asarray(self.status.object_positions, dtype=float).reshape(-1, 3)
        return dict(zip(self.status.object_names, positions))

    def reset_and_recover(self, task: str, seed: int) -> str:
        """Reset the cell to (task, seed) and recover the driver (the reset stopped the robot program,
        as an operator resetting the cell would); the episode's instruction."""
        answer = self.call(self.reset_client, self.ResetScene.Request(task=task, seed=seed))
        if not answer.success:
            raise ConfigError("task", answer.message)
        self.spin_for(0.5)
        self.call(self.recover_client, self.Trigger.Request())
        deadline = time.monotonic() + 10.0
        while (self.status is None or self.status.seed != seed or self.status.task != task or not self.joints
               or self.driver_fault) and time.monotonic() < deadline:
            self.spin_for(0.1)
            if self.driver_fault:  # (stopped again while settling: recover once more)
                self.call(self.recover_client, self.Trigger.Request())
                self.spin_for(1.2)  # the driver's diagnostics come at 1 Hz
        return answer.instruction

    def enable(self, on: bool) -> None:
        """The driver's ~/enable: execute the policy's chunks (True) or brake and plan only (False)."""
        answer = self.call(self.enable_client, self.SetBool.Request(data=on))
        if not answer.success:
            raise RunnerError(f"the driver refused enable {on}: {answer.message}")

    def wait_for_subscriber(self, node_name: str, topic_names: list[str], timeout_s: float) -> list[str]:
        """Spin until ``node_name`` subscribes to every topic (as this node's graph sees it); the
        topics it still lacks at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [t for t in topic_names
                       if not any(info.node_name == node_name for info in self.node.get_subscriptions_info_by_topic(t))]
            if not missing or time.monotonic() > deadline:
                return missing
            self.spin_for(0.1)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


class EpisodeRecorder:
    """The graph's recorder node on one bag, started (and subscribed to ``required``, by default
    :data:`RECORDED_TOPICS`) when the ``with`` block begins, stopped when it ends."""

    def __init__(self, ros: TwinNode, graph: Graph, bag: Path, log, required: list[str] | None = None) -> None:
        self.ros, self.graph, self.bag, self.log = ros, graph, bag, log
        self.required = required or RECORDED_TOPICS
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> EpisodeRecorder:
        spec = self.graph.nodes["recorder"]
        executable = find_executable(spec.package, spec.executable)
        if executable is None:
            raise RunnerError("fedvla_ros/bag_recorder is not installed: run .ci/setup")
        node = ResolvedNode(spec=spec, parameter_files=tuple(self.graph.config_dir / f for f in spec.parameters),
                            parameter_values={"output_path": str(self.bag), "exclude_topics": UNRECORDED_TOPICS},
                            arguments=())
        for start in range(1, RECORDER_STARTS + 1):
            self.process = subprocess.Popen(node_command(executable, node), stdout=self.log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            # Record from the first step: a loaded machine takes seconds to start the recorder and
            # to discover the publishers (a fixed 2 s wait lost the first third of some episodes).
            missing = self.ros.wait_for_subscriber(spec.name, self.required, RECORDER_TIMEOUT_S)
            if not missing:
                break
            # Once, on a loaded machine, a new recorder saw every topic of the driver's node but
            # /joint_states for 30 s: a fresh participant discovers the graph again.
            self.stop(grace_s=DISCARD_GRACE_S)
            shutil.rmtree(self.bag, ignore_errors=True)
            if start == RECORDER_STARTS:
                raise RunnerError(f"the recorder did not subscribe to {', '.join(missing)} within "
                                  f"{RECORDER_TIMEOUT_S:g} s, {RECORDER_STARTS} times; its log is in {self.log.name}")
            print(f"the recorder did not subscribe to {', '.join(missing)} within {RECORDER_TIMEOUT_S:g} s: "
                  "starting it again", flush=True)
        self.ros.spin_for(0.5)  # the publishers match the recorder's readers (discovery goes both ways)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGINT (the recorder closes its bag), then SIGKILL after ``grace_s``."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            print(f"the recorder did not stop within {grace_s:g} s of SIGINT: killed", flush=True)
            self.process.kill()
            self.process.wait()
        self.process = None
