"""Closed-loop evaluation of a policy checkpoint in the twin (FedVLA §4.2's real-world protocol:
success per task over trials), ROS-free: the statistics, the report, and the in-process runner
that cross-checks the graph's result (``fedvla twin evaluate`` runs the trials through the ROS
graph; :mod:`fedvla_ros.tools.twin_evaluate`).

* **Success** per task with a Wilson 95 % score interval (:func:`wilson_interval`): with 20 trials a
  binomial rate is uncertain by ±20 points, and the Wilson interval stays inside [0, 1] and is
  sensible at 0 and 20 successes, where the normal approximation collapses to a point.
* **Agreement** of the graph's and the in-process result (:func:`agree_within_noise`): a two-sided
  two-proportion z-test at 5 % (pooled variance); the same seeds are run, but the graph adds
  middleware latency and scheduling jitter, so the trials are not identical, only exchangeable.
* **Time to success** (simulated seconds from the reset), **policy latency** per step (p50 and p95,
  the policy runtime's own compute time), the driver's **refused chunks** (by reason) and the
  **protective stops**.

In-process (:func:`evaluate_in_process`): :class:`~fedvla.twin.inprocess.InProcessTwin` runs the
driver's runtime on the physics; the policy sees the twin camera's render of the same D435i image
and the joint states the driver would publish (the six arm joints and the gripper finger at the
end of its commanded travel: :data:`fedvla.twin.expert.PROPRIO_JOINTS`), at the checkpoint's
control rate.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedvla.config import ConfigError
from fedvla.statistics import agree_within_noise, wilson_interval

@dataclasses.dataclass
class TwinTrial:
    """One closed-loop trial (through the graph or in-process)."""

    task: str
    seed: int
    success: bool
    time_to_success_s: float | None  # simulated seconds from the reset; None without success
    steps: int  # policy steps (chunks) in the trial
    latencies_ms: list[float]  # the policy's compute time per step
    refused_chunks: int = 0
    refused_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    protective_stops: int = 0
    detail: str = ""  # the task's success check, in words
    fault: str = ""
    bag: str = ""  # the trial's rosbag2 (graph trials)
    attempts: int = 1  # graph trials: repeated after the robot program stopped without a protective stop

    @classmethod
    def from_dict(cls, values: dict) -> TwinTrial:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def summarize(trials: Iterable[TwinTrial]) -> dict[str, dict]:
    """Per task: successes, trials, rate and its Wilson 95 % interval, time to success, policy
    latency p50/p95, refused chunks (by reason) and protective stops."""
    by_task: dict[str, list[TwinTrial]] = {}
    for trial in trials:
        by_task.setdefault(trial.task, []).append(trial)
    summary = {}
    for task, group in by_task.items():
        wins = [t for t in group if t.success]
        low, high = wilson_interval(len(wins), len(group))
        latencies = np.array([ms for t in group for ms in t.latencies_ms], dtype=float)
        times = [t.time_to_success_s for t in wins if t.time_to_success_s is not None]
        reasons: Counter = Counter()
        for t in group:
            reasons.update(t.refused_reasons)
        summary[task] = {
            "successes": len(wins), "trials": len(group), "success_rate": len(wins) / len(group),
            "wilson95": [low, high],
            "time_to_success_s": float(np.mean(times)) if times else None,
            "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else None,
            "refused_chunks": sum(t.refused_chunks for t in group), "refused_reasons": dict(reasons),
            "protective_stops": sum(t.protective_stops for t in group),
            "seeds": [t.seed for t in group],
            "outcomes": [bool(t.success) for t in group],  # per trial, in the order of seeds
        }
    return summary


def trial_outcomes(runs: dict[str, list[dict]], tasks: Sequence[str]) -> dict[str, list[dict]]:
    """A twin study's graph results (per method, one run per training seed, each task's
    :func:`summarize` entry) as the simulation study's records: per task a (1, trials) success
    array in seed order, so that its tables and paired tests apply. Trials pair by seed (the same
    layout and start), so every run must have run the same seeds."""
    converted: dict[str, list[dict]] = {}
    expected: dict[str, list[int]] = {}
    for method, method_runs in runs.items():
        converted[method] = []
        for run in method_runs:
            evaluation = {}
            for task in tasks:
                summary = run["evaluation"][task]
                seeds = sorted(summary["seeds"])
                if expected.setdefault(task, seeds) != seeds:
                    raise ConfigError("trials", f"{method} ran {task} on seeds {seeds}, another method on "
                                      f"{expected[task]}: the trials do not pair", "the same --trials for every method")
                by_seed = dict(zip(summary["seeds"], summary["outcomes"]))
                evaluation[task] = {"successes": [[by_seed[seed] for seed in seeds]]}
            converted[method].append({**run, "evaluation": evaluation})
    return converted


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report_table(results: dict[str, dict[str, dict]]) -> list[str]:
    """A markdown table: one row per (evaluation, task); ``results``: label -> :func:`summarize`."""
    lines = ["| evaluation | task | success | Wilson 95 % | time to success (s) | policy latency p50 / p95 (ms) "
             "| refused chunks | protective stops |",
             "|---|---|---|---|---|---|---|---|"]
    for label, summary in results.items():
        for task, s in summary.items():
            low, high = s["wilson95"]
            lines.append(f"| {label} | {task} | {s['successes']}/{s['trials']} ({100 * s['success_rate']:.0f} %) "
                         f"| {100 * low:.0f}-{100 * high:.0f} % | {_number(s['time_to_success_s'], '.1f')} "
                         f"| {_number(s['latency_ms_p50'], '.1f')} / {_number(s['latency_ms_p95'], '.1f')} "
                         f"| {s['refused_chunks']} | {s['protective_stops']} |")
    return lines


def agreement_lines(graph: dict[str, dict], in_process: dict[str, dict]) -> list[str]:
    """One line per task the two evaluations share: both rates and whether they agree."""
    lines = []
    for task in graph:
        if task not in in_process:
            continue
        g, p = graph[task], in_process[task]
        agree = agree_within_noise(g["successes"], g["trials"], p["successes"], p["trials"])
        lines.append(f"{task}: graph {g['successes']}/{g['trials']}, in-process {p['successes']}/{p['trials']}: "
                     + ("agree within binomial noise (two-proportion test, 5 %)" if agree
                        else "DISAGREE beyond binomial noise (two-proportion test, 5 %)"))
    return lines


def plot_success(path: Path, results: dict[str, dict[str, dict]]) -> None:
    """Success per task with Wilson 95 % whiskers, one bar per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for summary in results.values() for task in summary})
    labels = list(results)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tasks), 3.4))
    for i, label in enumerate(labels):
        xs, rates, errors = [], [], [[], []]
        for j, task in enumerate(tasks):
            s = results[label].get(task)
            if s is None:
                continue
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            rates.append(100 * s["success_rate"])
            errors[0].append(100 * (s["success_rate"] - s["wilson95"][0]))
            errors[1].append(100 * (s["wilson95"][1] - s["success_rate"]))
        ax.bar(xs, rates, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(tasks)), [t.replace("_", " ") for t in tasks])
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%), Wilson 95 %")
    ax.legend(fontsize=8)
    ax.set_title("Closed loop in the workcell twin")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(output: Path, results: dict[str, dict[str, dict]], trials: dict[str, list[TwinTrial]],
                 provenance: dict) -> None:
    """``evaluation.json`` (summaries, every trial, provenance), ``evaluation.md`` and
    ``success.png`` under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    document = {"provenance": provenance, "summary": results,
                "trials": {label: [dataclasses.asdict(t) for t in group] for label, group in trials.items()}}
    (output / "evaluation.json").write_text(json.dumps(document, indent=1))
    lines = ["# Closed-loop evaluation in the workcell twin", "",
             f"Checkpoint `{provenance.get('checkpoint', '')}`, written by `{provenance.get('command', '')}`.", "",
             *report_table(results)]
    if "graph" in results and "in-process" in results:
        lines += ["", *(f"* {line}" for line in agreement_lines(results["graph"], results["in-process"]))]
    lines += ["", "![success per task](success.png)", ""]
    (output / "evaluation.md").write_text("\n".join(lines))
    plot_success(output / "success.png", results)


# ---- in-process ----
class PolicyAgent:
    """A checkpoint as an :data:`~fedvla.twin.inprocess.Agent`: renders the twin's D435i image,
    reads the joints as the driver publishes them, runs the policy runtime. A policy that uses IOSP
    gets its selections from the twin profile's scene parser (:func:`twin_scene_parser`) on
    ``detector_weights``, as in the graph. It records each step's policy latency (:attr:`latencies_ms`,
    cleared by :meth:`agent_for`; the scene parser is another node in the graph, so not counted)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", torch_threads: int = 0,
                 detector_weights: str | Path | None = None) -> None:
        from fedvla import topics
        from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
        from fedvla.robot.kinematics import ArmKinematics
        from fedvla.twin.expert import CONTROL_RATE_HZ, PROPRIO_JOINTS

        self.runtime = PolicyRuntime(PolicyRuntimeConfig(
            checkpoint_path=str(checkpoint), rate_hz=CONTROL_RATE_HZ, proprio_joint_names=PROPRIO_JOINTS,
            available_cameras=(topics.TWIN_CAMERA,), device=device, torch_threads=torch_threads))
        self.parser = None
        if self.runtime.uses_iosp:
            if not detector_weights:
                raise ConfigError("detector", "this policy uses IOSP and no detector was given for the scene parser",
                                  "the detector its demonstrations were parsed with (--detector)")
            self.parser = twin_scene_parser(detector_weights)
        self.camera = topics.TWIN_CAMERA
        self.period_s = 1.0 / self.runtime.config.rate_hz
        self.gripper_open, self.gripper_closed = ArmKinematics().gripper_limits[::-1]
        self.latencies_ms: list[float] = []

    def agent_for(self, workcell):
        self.latencies_ms = []

        def act(observation):
            frame = workcell.render(depth=False)
            finger = self.gripper_closed if observation.gripper_closed else self.gripper_open
            proprio = np.array([*observation.joint_positions, finger], dtype=np.float32)
            selections = None
            if self.parser is not None:
                selections = [self.parser.parse(self.camera, frame.rgb, observation.instruction).selection]
            step = self.runtime.step([frame.rgb], proprio, observation.instruction, selections)
            self.latencies_ms.append(1000.0 * step.latency_s)
            return step.chunk, self.period_s

        return act


def twin_scene_parser(detector_weights: str | Path, config_dir: str | Path | None = None):
    """The twin profile's scene parser, ROS-free: the scene_parser node's parameters as the graph
    starts it (``parse_scene:=true``, its parameter file) on ``detector_weights``."""
    from fedvla.config import config_fields, from_mapping
    from fedvla.graph import Graph, find_config_dir
    from fedvla.iosp.runtime import SceneParserRuntime, SceneParserRuntimeConfig

    graph = Graph.load(config_dir or find_config_dir())
    overrides = {"parse_scene": "true", "detector_weights": str(detector_weights)}
    node = graph.resolve_node("twin", "scene_parser", overrides)
    fields = config_fields(SceneParserRuntimeConfig)
    parameters = {k: v for k, v in node.parameters().items() if k in fields}
    return SceneParserRuntime(from_mapping(SceneParserRuntimeConfig, parameters, where="scene_parser"))


def checkpoint_action_space(checkpoint: str | Path):
    """The action space training recorded in the checkpoint (ConfigError if it recorded none)."""
    from fedvla.model.checkpoint_meta import read_checkpoint_description
    from fedvla.robot.retarget import ActionSpace

    try:
        recorded = (read_checkpoint_description(checkpoint).get("metadata") or {}).get("action_space")
        if recorded is None:
            raise ValueError(f"{checkpoint} records no action space: train it on twin datasets (fedvla twin demos)")
        return ActionSpace.from_dict(recorded, str(checkpoint))
    except ValueError as err:
        raise ConfigError("checkpoint", str(err), "a checkpoint trained on twin demonstrations") from None


def checkpoint_detector(checkpoint: str | Path, detector: str | Path | None) -> Path | None:
    """The scene parser's detector weights the checkpoint needs: ``detector`` resolved
    (:func:`fedvla.twin.detector.detector_weights`) for a policy that uses IOSP, None for one that
    does not (the graph then runs no scene parser); a ConfigError for an IOSP policy without one."""
    from fedvla.model.checkpoint_meta import read_checkpoint_description
    from fedvla.twin.detector import detector_weights

    try:
        iosp = bool((read_checkpoint_description(checkpoint).get("policy") or {}).get("iosp", False))
    except ValueError as err:
        raise ConfigError("checkpoint", str(err), "a checkpoint directory") from None
    if not iosp:
        return None
    if not detector:
        raise ConfigError("detector", f"{checkpoint} uses IOSP and no detector was given for the scene parser",
                          "--detector: the fedvla twin detector output its demonstrations were parsed with")
    return detector_weights(detector)


def evaluate_in_process(checkpoint: str | Path, task: str, seeds: Sequence[int], max_steps: int,
                        show_progress: bool = True, detector_weights: str | Path | None = None) -> list[TwinTrial]:
    """Run ``checkpoint`` on ``task`` for each seed in :class:`InProcessTwin` (no ROS);
    ``detector_weights``: the scene parser's detector, for a policy that uses IOSP."""
    from fedvla.twin.inprocess import InProcessTwin
    from fedvla.twin.workcell import Workcell, WorkcellConfig

    import torch

    space = checkpoint_action_space(checkpoint)
    threads = torch.get_num_threads()
    agent = PolicyAgent(checkpoint, torch_threads=1,  # as the policy node (config/policy_robot.yaml)
                        detector_weights=detector_weights)
    workcell = Workcell(WorkcellConfig(task=task))
    twin = InProcessTwin(workcell, space)
    trials = []
    try:
        iterator: Iterable[int] = seeds
        if show_progress:
            from tqdm import tqdm

            iterator = tqdm(seeds, desc=f"in-process {task}", unit="trial")
        for seed in iterator:
            result = twin.run_trial(task, int(seed), agent.agent_for, 1.0 / agent.period_s, max_steps)
            trials.append(TwinTrial(task=task, seed=int(seed), success=result.success,
                                    time_to_success_s=result.time_to_success_s, steps=result.steps,
                                    latencies_ms=list(agent.latencies_ms), refused_chunks=result.refused_chunks,
                                    refused_reasons=dict(result.refused_reasons),
                                    protective_stops=result.protective_stops, detail=result.detail, fault=result.fault))
    finally:
        workcell.close_camera()
        torch.set_num_threads(threads)  # (training in this process after the evaluation keeps its threads)
    return trials
