"""Closed-loop evaluation of a checkpoint through the ROS graph, in the workcell twin (``fedvla twin
evaluate``).

It runs the ``twin`` profile with the checkpoint (``checkpoint:=C``: workcell_sim, the driver over
ur_rtde in dry run, the policy node on the twin's D435i image and ``/joint_states``) and, per trial
(task, seed):

1. resets the cell (``/workcell_sim/reset``), publishes the episode's instruction on
   ``/instruction`` (the policy node takes it) and recovers the driver;
2. records the trial with the recorder node into ``bags/<task>_<seed>`` (replayable with the
   ``replay`` profile: ``fedvla launch replay bag:=... checkpoint:=C``);
3. enables execution (the driver's ``~/enable``) and lets the policy drive until the task's success
   check (``/workcell_sim/task_status``) holds and three more chunks ran, or ``--max-steps``
   chunks, or the driver faults (a protective stop) for more than a second; then revokes enable
   (the arm holds) for the next reset.

It reports per task the success rate with its Wilson 95 % interval, the simulated time to success,
the policy's latency per chunk (the ``compute_time_s`` each chunk carries), the chunks the driver
refused (its diagnostics) and the protective stops; then the same checkpoint on the same seeds
in-process (:func:`fedvla.twin.evaluation.evaluate_in_process`, no ROS), and whether both agree
within binomial noise. ``evaluation.json`` (every trial), ``evaluation.md`` and ``success.png``
are written to the output directory; ``trials.json`` after every trial, so a run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from fedvla.config import ConfigError
from fedvla.graph import Graph, parse_overrides
from fedvla.paths import run_directory
from fedvla.twin.evaluation import (TwinTrial, agreement_lines, checkpoint_action_space, checkpoint_detector,
                                    evaluate_in_process, report_table, summarize, write_report)
from fedvla.twin.expert import CONTROL_RATE_HZ
from fedvla.twin.tasks import TASKS
from fedvla_ros.tools.twin_session import (EpisodeRecorder, TwinNode, exit_with, recorded_topics, running_twin,
                                           scene_parser_arguments)

SETTLE_STEPS = 3  # chunks after the success check first holds (the paper's success: the state holds)
FAULT_GRACE_S = 1.0  # a fault this long ends the trial (a protective stop needs the operator)
TRIALS_FILE = "trials.json"
# A trial the robot's own safety system interrupted (its RTDE watchdog, on a starved machine: not the
# policy's doing, unlike a protective stop) is repeated; how many times at most:
MAX_ATTEMPTS = 3
# Layout seeds of evaluation trials: far from the demonstrations' (0, 1, ...), so the policy meets
# layouts it has not been trained on.
FIRST_EVALUATION_SEED = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvla twin evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory (trained on twin data)")
    parser.add_argument("--task", action="append", choices=list(TASKS), help="a task (repeat; default all four)")
    parser.add_argument("--trials", type=int, default=20, help="trials per task")
    parser.add_argument("--first-seed", type=int, default=FIRST_EVALUATION_SEED, help="layout seed of the first trial")
    parser.add_argument("--max-steps", type=int, default=100, help="chunks before a trial times out")
    parser.add_argument("--output", default="", help="run directory (default runs/twin_evaluate_<date>_<time>)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera rate of the twin")
    parser.add_argument("--detector", default="", help="the scene parser's detector, for a policy that uses IOSP (a "
                        "fedvla twin detector output or a YOLOv8 .pt): the one its demonstrations were parsed with")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process cross-check")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--launch-argument", action="append", default=[], metavar="NAME:=VALUE",
                        help="a twin profile argument for the run (repeat), e.g. inference_mode:=async, "
                        "injected_latency:=0.3, chunk_aggregator:=crossfade, time_aligned:=false")
    args = parser.parse_args(argv)
    try:
        args.launch_arguments = parse_overrides(args.launch_argument)
    except ConfigError as err:
        parser.error(f"--launch-argument: {err}")
    # (what provenance records: this tool's own options, also when the twin study calls it)
    args.command = shlex.join(["fedvla", "twin", "evaluate", *(sys.argv[1:] if argv is None else argv)])
    if args.trials < 1 or args.max_steps < 1:
        parser.error("--trials and --max-steps must be at least 1")
    return args


def _refused(values: dict[str, str]) -> dict[str, int]:
    # (the chunks the policy sends in dry run between trials are planned, and may be refused, too:
    # a trial counts those refused while it executed)
    prefix = "refused_while_executing."
    return {k[len(prefix):]: int(v) for k, v in values.items() if k.startswith(prefix)}


def run_trial(ros: TwinNode, graph: Graph, task: str, seed: int, bag: Path, log, max_steps: int,
              recorded: list[str]) -> TwinTrial:
    """One trial through the graph (see the module docstring). Between trials the driver is in dry
    run: the policy (which never stops) moves nothing until the trial starts with ~/enable."""
    ros.enable(False)
    instruction = ros.reset_and_recover(task, seed)
    ros.keep_instruction(instruction)
    ros.spin_for(1.2)  # the driver's diagnostics after the recovery (1 Hz): the refusals before the trial
    refused_before = _refused(ros.driver_values)
    with EpisodeRecorder(ros, graph, bag, log, recorded):
        start_sim = ros.status.sim_time
        ros.keep_instruction(instruction)  # (again now: in the bag before the first chunk)
        ros.enable(True)
        ros.chunks_seen.clear()  # (the chunks planned in dry run before are not the trial's)
        success_at, success_chunks, fault, fault_since = None, 0, "", None
        # (wall-clock guard: the policy keeps its rate unless the machine is overloaded)
        deadline = time.monotonic() + 3.0 * max_steps / CONTROL_RATE_HZ + 30.0
        while len(ros.chunks_seen) < max_steps and time.monotonic() < deadline:
            ros.spin_for(0.05)
            if ros.driver_fault:
                fault = fault or ros.driver_fault
                fault_since = fault_since or time.monotonic()
                if time.monotonic() - fault_since > FAULT_GRACE_S:
                    break
            else:
                fault_since = None
            if success_at is None and ros.status.success and ros.status.seed == seed:
                success_at, success_chunks = ros.status.sim_time - start_sim, len(ros.chunks_seen)
            if success_at is not None and len(ros.chunks_seen) - success_chunks > SETTLE_STEPS:
                break
        chunks = list(ros.chunks_seen)
        ros.enable(False)  # the arm holds: the trial's end state stays as it was judged
        ros.spin_for(1.2)  # the driver's diagnostics covering the trial's last chunks
    status = ros.status
    refused = {k: n - refused_before.get(k, 0) for k, n in _refused(ros.driver_values).items()}
    refused = {k: n for k, n in refused.items() if n > 0}
    return TwinTrial(task=task, seed=seed, success=bool(status.success), time_to_success_s=success_at if status.success
                     else None, steps=len(chunks), latencies_ms=[1000.0 * c.compute_time_s for c in chunks],
                     refused_chunks=sum(refused.values()), refused_reasons=refused,
                     protective_stops=int("protective" in fault), detail=status.detail, fault=fault, bag=str(bag))


def evaluate(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint).expanduser().resolve()
    checkpoint_action_space(checkpoint)  # refuse a checkpoint without one before starting anything
    detector = checkpoint_detector(checkpoint, args.detector)
    tasks = args.task or list(TASKS)
    seeds = list(range(args.first_seed, args.first_seed + args.trials))
    output = Path(args.output or run_directory("twin_evaluate")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    state_file = output / TRIALS_FILE
    trials = [TwinTrial.from_dict(t) for t in json.loads(state_file.read_text())] if state_file.is_file() else []
    done = {(t.task, t.seed) for t in trials}  # a run resumes where the last one stopped
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def node(context) -> TwinNode:
        ros = TwinNode(context, "twin_evaluate")
        ros.watch_chunks()
        return ros

    arguments = {"execute": "false", "task": tasks[0], "twin_fps": str(args.fps), "checkpoint": str(checkpoint),
                 **scene_parser_arguments(detector), **args.launch_arguments}
    driver: dict[str, str] = {}
    with running_twin(arguments, output, node, args.startup_timeout) as (ros, graph, log):
        for task in tasks:
            for seed in seeds:
                if (task, seed) in done:
                    continue
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    bag = output / "bags" / f"{task}_{seed:04d}"
                    shutil.rmtree(bag, ignore_errors=True)
                    trial = run_trial(ros, graph, task, seed, bag, log, args.max_steps, recorded_topics(bool(detector)))
                    trial.attempts = attempt
                    if not trial.fault or "protective" in trial.fault:
                        break
                    print(f"graph {task} seed {seed}: the robot program stopped ({trial.fault}); repeating", flush=True)
                trials.append(trial)
                state_file.write_text(json.dumps([dataclasses.asdict(t) for t in trials], indent=1))
                print(f"graph {task} seed {seed}: {'success' if trial.success else 'failed'} after {trial.steps} chunks"
                      + (f" ({trial.fault})" if trial.fault else "") + f"; {trial.detail}", flush=True)
        driver = dict(ros.driver_values)  # (its figures over this run's trials: smoothness, merges, the queue)
    mine = [t for t in trials if t.task in tasks and t.seed in seeds]
    results = {"graph": summarize(mine)}
    in_process: list[TwinTrial] = []
    if not args.no_in_process:
        for task in tasks:
            in_process += evaluate_in_process(checkpoint, task, seeds, args.max_steps, detector_weights=detector)
        results["in-process"] = summarize(in_process)
    provenance = {"checkpoint": str(checkpoint), "command": args.command,
                  "started": started, "seeds": seeds, "max_steps": args.max_steps, "camera_fps": args.fps,
                  "detector": str(detector or ""), "launch_arguments": args.launch_arguments,
                  "driver_diagnostics": driver}
    write_report(output, results, {"graph": mine, "in-process": in_process}, provenance)
    print("\n".join(report_table(results)))
    if "in-process" in results:
        print("\n".join(agreement_lines(results["graph"], results["in-process"])))
    print(f"report: {output / 'evaluation.md'}; trial bags in {output / 'bags'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_with(lambda: evaluate(args))
