"""Expert demonstrations in the workcell twin, through the graph (``fedvla twin demos``).

It runs the ``twin`` profile (workcell_sim and real_robot's ur3_driver, executing: ``execute:=true``)
and, per episode (task, seed):

1. resets the cell (``/workcell_sim/reset``) and recovers the driver (``/ur3_driver/recover``: the
   reset stopped the robot program, as an operator resetting the cell would);
2. starts the recorder node on a new rosbag2 directory (the D435i's colour image, the joint states,
   the instruction, the action chunks, the task status; the aligned depth is left out to keep bags
   small);
3. acts as the expert (:mod:`fedvla.twin.expert`): every 0.1 s it reads the tool pose from
   ``/joint_states`` (forward kinematics) and the objects from ``/workcell_sim/task_status``, and
   publishes a horizon-1 action chunk on ``/policy/action_chunk``, which the driver executes with its
   own IK and safety checks, until the task's success check holds (then three more steps) or 80 steps;
4. stops the recorder and, for a successful demonstration, imports the bag into the task's episode
   dataset (``fedvla bag import``, the expert's action space recorded with it). Bags are deleted once
   imported, except the first of each task (``--keep-bags`` keeps all).

It writes ``demos.json`` after every episode (one record per episode and the summary) and prints
the expert's success rate per task - the ceiling of every policy learned from these
demonstrations - and the demonstrations collected per minute. A run on an existing output
directory resumes: the (task, seed) pairs it holds are not collected again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.config import ConfigError
from fedvla.graph import Graph, ResolvedNode, find_config_dir
from fedvla.paths import run_directory
from fedvla.robot.kinematics import ARM_JOINTS, GRIPPER_JOINT, ArmKinematics
from fedvla.runner import ProfileRunner, RunnerError, find_executable, node_command
from fedvla.twin.expert import CONTROL_RATE_HZ, EXPERT_ACTION_SPACE, Expert, ExpertConfig
from fedvla.twin.tasks import TASKS, task_named
from fedvla.twin.ur_controller import free_loopback_host

SETTLE_STEPS = 3
DEMOS_FILE = "demos.json"
DRIVER_DIAGNOSTICS = "ur3_driver: arm"
# A demonstration the robot's safety system interrupted (its RTDE watchdog on a busy machine) is
# repeated, as a human demonstrator would; how many times at most:
MAX_ATTEMPTS = 3
# This collector's own work (the bag import) yields the CPU to the driver, whose RTDE watchdog stops
# the robot after 100 ms without a command. (Not the recorder: a slow reliable subscriber makes the
# driver's publishers block.)
BACKGROUND_NICENESS = 10
PROPRIO_JOINTS = (*ARM_JOINTS, GRIPPER_JOINT)
DIMENSIONS = ["dx", "dy", "dz", "gripper"]
# What an episode dataset needs from the bag (bag_import), so the recorder must have these first.
RECORDED_TOPICS = [topics.camera_topic(topics.TWIN_CAMERA, topics.COLOR_IMAGE), topics.JOINT_STATES,
                   topics.INSTRUCTION, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)]
RECORDER_TIMEOUT_S = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvla twin demos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append", choices=list(TASKS), help="a task (repeat; default all four)")
    parser.add_argument("--episodes", type=int, default=50, help="demonstrations per task (the paper: about 50)")
    parser.add_argument("--first-seed", type=int, default=0, help="layout seed of the first episode")
    parser.add_argument("--output", default="", help="run directory (default runs/twin_demos_<date>_<time>)")
    parser.add_argument("--image-size", type=int, default=128, help="policy image size of the datasets")
    parser.add_argument("--keep-bags", action="store_true", help="keep every bag (default: the first per task)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate of the twin during collection")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


class DemoNode:
    """The collector's ROS side: the expert's publisher, and what it reads."""

    def __init__(self, context) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from fedvla_interfaces.msg import ActionChunk, TaskStatus
        from fedvla_interfaces.srv import ResetScene
        from fedvla_ros.qos import LATCHED_QOS

        self._rclpy = rclpy
        self.node = rclpy.create_node("twin_demos", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.ActionChunk, self.String = ActionChunk, String
        self.chunks = self.node.create_publisher(ActionChunk, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK), 10)
        self.instruction = self.node.create_publisher(String, topics.INSTRUCTION, LATCHED_QOS)
        self.joints: dict[str, float] = {}
        self.status = None
        self.driver_fault = ""  # the driver's fault reason, as its diagnostics last reported it
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)
        self.node.create_subscription(TaskStatus, topics.node_topic(topics.WORKCELL_NODE, topics.TASK_STATUS),
                                      self._on_status, LATCHED_QOS)
        self.reset_client = self.node.create_client(
            ResetScene, topics.node_topic(topics.WORKCELL_NODE, topics.RESET_SCENE_SERVICE))
        self.recover_client = self.node.create_client(
            Trigger, topics.node_topic(topics.UR3_DRIVER_NODE, topics.RECOVER_SERVICE))
        self.ResetScene, self.Trigger = ResetScene, Trigger

    def _on_joints(self, msg) -> None:
        self.joints = dict(zip(msg.name, msg.position))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == DRIVER_DIAGNOSTICS:
                self.driver_fault = status.message if status.message.startswith("fault") else ""

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

    def publish_chunk(self, action: np.ndarray) -> None:
        msg = self.ActionChunk(dimension_names=DIMENSIONS, horizon=1, actions=[float(v) for v in action],
                               step_period_s=1.0 / CONTROL_RATE_HZ)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        self.chunks.publish(msg)

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


def recorder_process(graph: Graph, bag: Path, log) -> subprocess.Popen:
    spec = graph.nodes["recorder"]
    executable = find_executable(spec.package, spec.executable)
    if executable is None:
        raise RunnerError("fedvla_ros/bag_recorder is not installed: run .ci/setup")
    exclude = ["/rosout", "/parameter_events", topics.camera_topic(topics.TWIN_CAMERA, topics.ALIGNED_DEPTH_IMAGE),
               topics.camera_topic(topics.TWIN_CAMERA, topics.ALIGNED_DEPTH_INFO)]
    node = ResolvedNode(spec=spec, parameter_files=tuple(graph.config_dir / f for f in spec.parameters),
                        parameter_values={"output_path": str(bag), "exclude_topics": exclude}, arguments=())
    return subprocess.Popen(node_command(executable, node), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_recorder(process: subprocess.Popen) -> None:
    import signal

    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def demonstrate(ros: DemoNode, kinematics: ArmKinematics, task: str, seed: int) -> dict:
    """One expert episode through the graph (the recorder already running)."""
    episode = task_named(task).episode(seed)
    expert = Expert(episode, ros.objects(), ExpertConfig())
    period = 1.0 / CONTROL_RATE_HZ
    success_steps, steps, started, fault = 0, 0, time.monotonic(), ""
    next_tick = time.monotonic()
    while not expert.done and success_steps <= SETTLE_STEPS:
        fault = fault or ros.driver_fault
        ros.instruction.publish(ros.String(data=episode.instruction))
        q = np.array([ros.joints[j] for j in ARM_JOINTS])
        ros.publish_chunk(expert.act(kinematics.fk(q).translation, ros.objects()))
        steps += 1
        next_tick += period
        ros.spin_for(max(0.0, next_tick - time.monotonic()))
        if ros.status.success:
            success_steps += 1
    ros.spin_for(0.3)  # the last chunk executes and reaches the bag
    return {"task": task, "seed": seed, "instruction": episode.instruction, "success": bool(ros.status.success),
            "steps": steps, "seconds": round(time.monotonic() - started, 2), "detail": ros.status.detail,
            "driver_fault": fault or ros.driver_fault}


def attempt_episode(ros: DemoNode, graph: Graph, kinematics: ArmKinematics, task: str, seed: int, bag: Path,
                    log) -> dict:
    """Reset, recover the driver, record one expert demonstration into ``bag``."""
    answer = ros.call(ros.reset_client, ros.ResetScene.Request(task=task, seed=seed))
    if not answer.success:
        raise ConfigError("task", answer.message)
    ros.spin_for(0.5)
    ros.call(ros.recover_client, ros.Trigger.Request())
    deadline = time.monotonic() + 10.0
    while (ros.status is None or ros.status.seed != seed or ros.status.task != task or not ros.joints
           or ros.driver_fault) and time.monotonic() < deadline:
        ros.spin_for(0.1)
        if ros.driver_fault:  # (stopped again while settling: recover once more)
            ros.call(ros.recover_client, ros.Trigger.Request())
            ros.spin_for(1.2)  # the driver's diagnostics come at 1 Hz
    recorder = recorder_process(graph, bag, log)
    # Record from the first step: a loaded machine takes seconds to start the recorder and to
    # discover the publishers (a fixed 2 s wait lost the first third of some episodes).
    missing = ros.wait_for_subscriber(graph.nodes["recorder"].name, RECORDED_TOPICS, RECORDER_TIMEOUT_S)
    if missing:
        stop_recorder(recorder)
        raise RunnerError(f"the recorder did not subscribe to {', '.join(missing)} within {RECORDER_TIMEOUT_S:g} s; "
                          f"its log is in {log.name}")
    ros.spin_for(0.5)  # the publishers match the recorder's readers (discovery goes both ways)
    try:
        return demonstrate(ros, kinematics, task, seed)
    finally:
        stop_recorder(recorder)


def collect(args: argparse.Namespace) -> int:
    import rclpy

    from fedvla.data.bag_import import BagEpisodeConfig, import_bags
    from fedvla.language import shared_instruction_encoder

    tasks = args.task or list(TASKS)
    output = Path(args.output or run_directory("twin_demos")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    host = free_loopback_host()
    graph = Graph.load(find_config_dir())
    log = open(output / "graph.log", "a")
    runner = ProfileRunner(graph, "twin", {"robot_ip": host, "execute": "true", "task": tasks[0],
                                            "twin_fps": str(args.fps), "launch_rviz": "false"}, output=log)
    kinematics = ArmKinematics()
    encoder = shared_instruction_encoder("")
    bag_config = BagEpisodeConfig(camera_names=(topics.TWIN_CAMERA,), proprio_dim=len(PROPRIO_JOINTS),
                                  proprio_joint_names=PROPRIO_JOINTS, step_times="chunks")
    state_file = output / DEMOS_FILE
    records: list[dict] = json.loads(state_file.read_text())["episodes"] if state_file.is_file() else []
    done = {(r["task"], r["seed"]) for r in records}  # a run resumes where the last one stopped
    context = rclpy.Context()
    rclpy.init(context=context)
    ros = None
    try:
        runner.start()
        os.nice(BACKGROUND_NICENESS)  # (after starting the graph: its nodes keep normal priority)
        runner.wait(until=lambda: not runner.not_up(), startup_timeout_s=args.startup_timeout)
        ros = DemoNode(context)
        for task in tasks:
            for seed in range(args.first_seed, args.first_seed + args.episodes):
                if (task, seed) in done:
                    continue
                began = time.monotonic()
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    bag = output / "bags" / f"{task}_{seed:03d}"
                    shutil.rmtree(bag, ignore_errors=True)
                    record = attempt_episode(ros, graph, kinematics, task, seed, bag, log)
                    record["attempts"] = attempt
                    if record["success"] or not record["driver_fault"]:
                        break
                    print(f"{task} seed {seed}: the driver stopped ({record['driver_fault']}); repeating", flush=True)
                record["bag"] = str(bag)
                if record["success"]:
                    imported = import_bags([bag], output / "datasets" / task, bag_config, encoder,
                                           image_size=args.image_size, action_space=EXPERT_ACTION_SPACE.to_dict())
                    record["imported_steps"] = imported[0].sampling.steps
                    record["import_dropped"] = dict(imported[0].sampling.dropped)  # steps left out, by reason
                first_of_task = not any(r["task"] == task for r in records)
                if not args.keep_bags and not first_of_task:
                    shutil.rmtree(bag, ignore_errors=True)
                    record["bag"] = ""
                record["wall_s"] = round(time.monotonic() - began, 2)  # reset to import, repeats included
                records.append(record)
                write_state(state_file, records)
                print(f"{task} seed {seed}: {'success' if record['success'] else 'FAILED'} in {record['steps']} steps "
                      f"({record['seconds']:.1f} s; {record['detail']})", flush=True)
    finally:
        if ros is not None:
            ros.close()
        rclpy.shutdown(context=context)
        runner.stop()
        log.close()
    state = write_state(state_file, records)
    for task, counts in state["summary"].items():
        print(f"expert ceiling {task}: {counts['successes']}/{counts['episodes']} "
              f"({100 * counts['success_rate']:.0f} %; {counts['repeated_after_driver_stop']} attempts repeated "
              "after the driver stopped)")
    print(f"{len(records)} demonstrations, {state['demonstrations_per_minute']:.2f} per minute; datasets in "
          f"{output / 'datasets'}")
    return 0


def write_state(path: Path, records: list[dict]) -> dict:
    """demos.json: every episode so far, the summary per task, and demonstrations per minute."""
    summary = {}
    for task in dict.fromkeys(r["task"] for r in records):
        mine = [r for r in records if r["task"] == task]
        successes = sum(r["success"] for r in mine)
        summary[task] = {"episodes": len(mine), "successes": successes, "success_rate": successes / len(mine),
                         "repeated_after_driver_stop": sum(r["attempts"] - 1 for r in mine)}
    wall_s = sum(r.get("wall_s", 0.0) for r in records)
    state = {"episodes": records, "summary": summary,
             "demonstrations_per_minute": 60.0 * len(records) / wall_s if wall_s else 0.0,
             "action_space": EXPERT_ACTION_SPACE.to_dict()}
    path.write_text(json.dumps(state, indent=2))
    return state


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        sys.exit(collect(args))
    except (ConfigError, RunnerError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
