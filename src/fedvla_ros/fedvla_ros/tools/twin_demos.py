"""Expert demonstrations in the workcell twin, through the graph (``fedvla twin demos``).

It runs the ``twin`` profile (workcell_sim and real_robot's ur3_driver, executing: ``execute:=true``)
and, per episode (task, seed):

1. resets the cell (``/workcell_sim/reset``) and recovers the driver (``/ur3_driver/recover``: the
   reset stopped the robot program, as an operator resetting the cell would);
2. starts the recorder node on a new rosbag2 directory (the D435i's colour image, the joint states,
   the instruction, the action chunks, the task status, and with ``--detector`` the scene parser's
   IOSP parses; the aligned depth is left out to keep bags small);
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
import shutil
import time
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.config import ConfigError
from fedvla.graph import Graph
from fedvla.paths import run_directory, working_tree_commit
from fedvla.robot.kinematics import ARM_JOINTS, ArmKinematics
from fedvla.twin.expert import CONTROL_RATE_HZ, EXPERT_ACTION_SPACE, PROPRIO_JOINTS, Expert, ExpertConfig
from fedvla.twin.detector import detector_weights
from fedvla.twin.tasks import TASKS, task_named
from fedvla_ros.tools.twin_session import (EpisodeRecorder, TwinNode, exit_with, recorded_topics, running_twin,
                                           scene_parser_arguments)

SETTLE_STEPS = 3
DEMOS_FILE = "demos.json"
# A demonstration the robot's safety system interrupted (its RTDE watchdog on a busy machine) is
# repeated, as a human demonstrator would; how many times at most:
MAX_ATTEMPTS = 3
# This collector's own work (the bag import) yields the CPU to the driver, whose RTDE watchdog stops
# the robot after 100 ms without a command. (Not the recorder: a slow reliable subscriber makes the
# driver's publishers block.)
BACKGROUND_NICENESS = 10
DIMENSIONS = ["dx", "dy", "dz", "gripper"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvla twin demos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append", choices=list(TASKS), help="a task (repeat; default all four)")
    parser.add_argument("--episodes", type=int, default=50, help="demonstrations per task (the paper: about 50)")
    parser.add_argument("--first-seed", type=int, default=0, help="layout seed of the first episode")
    parser.add_argument("--output", default="", help="run directory (default runs/twin_demos_<date>_<time>)")
    parser.add_argument("--image-size", type=int, default=128, help="policy image size of the datasets")
    parser.add_argument("--keep-bags", action="store_true", help="keep every bag (default: the first per task)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate of the twin during collection")
    parser.add_argument("--detector", default="", help="run the scene parser (IOSP) on this detector (a fedvla twin "
                        "detector output or a YOLOv8 .pt) and record its parses: datasets a FedVLA policy trains on")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


class DemoNode(TwinNode):
    """The collector's ROS side: the twin session, and the expert's chunk publisher."""

    def __init__(self, context) -> None:
        from fedvla_ros.qos import ACTION_CHUNK_QOS

        super().__init__(context, "twin_demos")
        self.chunks = self.node.create_publisher(self.ActionChunk, topics.node_topic(topics.POLICY_NODE,
                                                                                     topics.ACTION_CHUNK), ACTION_CHUNK_QOS)

    def publish_chunk(self, action: np.ndarray) -> None:
        msg = self.ActionChunk(dimension_names=DIMENSIONS, horizon=1, actions=[float(v) for v in action],
                               step_period_s=1.0 / CONTROL_RATE_HZ)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        self.chunks.publish(msg)


def demonstrate(ros: DemoNode, kinematics: ArmKinematics, task: str, seed: int) -> dict:
    """One expert episode through the graph (the recorder already running)."""
    episode = task_named(task).episode(seed)
    expert = Expert(episode, ros.objects(), ExpertConfig())
    ros.keep_instruction(episode.instruction)  # (again now: in the bag before the first step)
    period = 1.0 / CONTROL_RATE_HZ
    success_steps, steps, started, fault = 0, 0, time.monotonic(), ""
    next_tick = time.monotonic()
    while not expert.done and success_steps <= SETTLE_STEPS:
        fault = fault or ros.driver_fault
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
                    log, recorded: list[str]) -> dict:
    """Reset, recover the driver, record one expert demonstration into ``bag``."""
    ros.keep_instruction(ros.reset_and_recover(task, seed))  # (before recording: one instruction per bag)
    with EpisodeRecorder(ros, graph, bag, log, recorded):
        return demonstrate(ros, kinematics, task, seed)


def collect(args: argparse.Namespace) -> int:
    from fedvla.data.bag_import import BagEpisodeConfig, import_bags
    from fedvla.language import shared_instruction_encoder

    tasks = args.task or list(TASKS)
    output = Path(args.output or run_directory("twin_demos")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    kinematics = ArmKinematics()
    encoder = shared_instruction_encoder("")
    detector = detector_weights(args.detector) if args.detector else None
    bag_config = BagEpisodeConfig(camera_names=(topics.TWIN_CAMERA,), proprio_dim=len(PROPRIO_JOINTS),
                                  proprio_joint_names=PROPRIO_JOINTS, step_times="chunks", iosp=detector is not None)
    state_file = output / DEMOS_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state and state.get("detector", "") != str(detector or ""):  # one dataset, one scene parser
        raise ConfigError("detector", f"{output} was collected with detector {state.get('detector') or 'none'!r}, "
                          f"not {str(detector or 'none')!r}", "the same --detector, or another --output")
    records: list[dict] = state.get("episodes", [])
    done = {(r["task"], r["seed"]) for r in records}  # a run resumes where the last one stopped
    commit = working_tree_commit()  # per demonstration: a resumed collection may run other code
    arguments = {"execute": "true", "task": tasks[0], "twin_fps": str(args.fps), **scene_parser_arguments(detector)}
    with running_twin(arguments, output, DemoNode, args.startup_timeout,
                      niceness=BACKGROUND_NICENESS) as (ros, graph, log):
        for task in tasks:
            for seed in range(args.first_seed, args.first_seed + args.episodes):
                if (task, seed) in done:
                    continue
                began = time.monotonic()
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    bag = output / "bags" / f"{task}_{seed:03d}"
                    shutil.rmtree(bag, ignore_errors=True)
                    record = attempt_episode(ros, graph, kinematics, task, seed, bag, log,
                                             recorded_topics(detector is not None))
                    record["attempts"] = attempt
                    if record["success"] or not record["driver_fault"]:
                        break
                    print(f"{task} seed {seed}: the driver stopped ({record['driver_fault']}); repeating", flush=True)
                record["bag"], record["commit"] = str(bag), commit
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
                write_state(state_file, records, detector)
                print(f"{task} seed {seed}: {'success' if record['success'] else 'FAILED'} in {record['steps']} steps "
                      f"({record['seconds']:.1f} s; {record['detail']})", flush=True)
    state = write_state(state_file, records, detector)
    for task, counts in state["summary"].items():
        print(f"expert ceiling {task}: {counts['successes']}/{counts['episodes']} "
              f"({100 * counts['success_rate']:.0f} %; {counts['repeated_after_driver_stop']} attempts repeated "
              "after the driver stopped)")
    print(f"{len(records)} demonstrations, {state['demonstrations_per_minute']:.2f} per minute; datasets in "
          f"{output / 'datasets'}")
    return 0


def write_state(path: Path, records: list[dict], detector: Path | None) -> dict:
    """demos.json: every episode so far, the summary per task, demonstrations per minute, and the
    scene parser's detector (empty: none ran, the datasets have no IOSP selections)."""
    summary = {}
    for task in dict.fromkeys(r["task"] for r in records):
        mine = [r for r in records if r["task"] == task]
        successes = sum(r["success"] for r in mine)
        summary[task] = {"episodes": len(mine), "successes": successes, "success_rate": successes / len(mine),
                         "repeated_after_driver_stop": sum(r["attempts"] - 1 for r in mine)}
    wall_s = sum(r.get("wall_s", 0.0) for r in records)
    state = {"episodes": records, "summary": summary,
             "commits": sorted({r["commit"] for r in records if r.get("commit")}),
             "demonstrations_per_minute": 60.0 * len(records) / wall_s if wall_s else 0.0,
             "action_space": EXPERT_ACTION_SPACE.to_dict(), "detector": str(detector or "")}
    path.write_text(json.dumps(state, indent=2))
    return state


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_with(lambda: collect(args))
