"""The workcell twin's study (``fedvla twin study --scale smoke|cpu``): FedVLA §4.2's real-world
experiment on the twin, end to end and resumable, under one output directory:

1. ``detector/``: when a method uses IOSP (FedVLA), the scene parser's YOLOv8 trained on twin renders
   (``fedvla twin detector``, the scale's ``detector`` settings; ``--detector`` gives a trained one);
   ``demos/``: expert demonstrations through the graph (``fedvla twin demos``, the scene parser's
   parses recorded with them), one robot (client) per task; an output that has enough of a task's
   demonstrations keeps them;
2. per method (``config/study/methods/<name>.yaml``), federated training with the simulation
   study's code (:class:`fedvla.sim.study.Study`: :func:`fedvla.federation.simulation.run_simulation`,
   validation loss per round on held-out demonstrations);
3. every task's final checkpoint evaluated in closed loop through the graph and in-process on the
   same seeds (``fedvla twin evaluate``), under ``methods/<name>/evaluation/<task>``;
4. ``study.md`` (success per method and task with Wilson 95 % intervals, the graph/in-process
   agreement, the expert ceiling; with several methods the paper's Tables 2 and 3 from the graph's
   trials, paired by seed, and the validation loss per round), ``success.png`` and ``run.json``
   (command, scale, config hash, seeds, date, machine).

Scales: ``config/study/twin_scales/<scale>.yaml`` (``collect``: tasks and demonstrations per task;
``evaluate``: trials per task, the step limit, and ``in_process: false`` to leave out the
in-process cross-check).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from fedvla.config import ConfigError
from fedvla.graph import find_config_dir
from fedvla.sim.study import MethodConfig, Study, StudyScale, config_hash, load_method, load_scale
from fedvla.twin.evaluation import agreement_lines, plot_success, report_table
from fedvla.twin.results import expert_lines
from fedvla.twin.tasks import TASKS
from fedvla_ros.tools import twin_demos
from fedvla_ros.tools.twin_session import exit_with

log = logging.getLogger(__name__)


class TwinStudy(Study):
    """The simulation study's training on twin demonstrations, evaluated through the graph."""

    def __init__(self, config_dir: Path, scale: StudyScale, output: Path, *, demos: Path | None = None,
                 detector: Path | None = None, show_progress: bool = True) -> None:
        self.config_dir, self.scale, self.output = Path(config_dir), scale, Path(output)
        self.show_progress = show_progress
        self.methods = [load_method(self.config_dir, name) for name in scale.methods]
        tasks = tuple(scale.collect.get("tasks", TASKS))
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ConfigError("collect.tasks", f"unknown twin task {unknown[0]!r}", ", ".join(TASKS))
        self._tasks = tasks
        self.episodes_per_task = int(scale.collect.get("episodes_per_task", 50))
        self.image_size = int(scale.collect.get("image_size", 128))  # the datasets' policy images (px)
        self.trials = int(scale.evaluate.get("trials", 20))
        self.max_steps = int(scale.evaluate.get("max_steps", 100))
        self.in_process = bool(scale.evaluate.get("in_process", True))
        self.demos = Path(demos) if demos else self.output / "demos"
        self.detector_source = detector  # a trained detector to use instead of training the scale's
        self.detector: Path | None = None  # its weights, once ensure_detector ran

    @property
    def uses_iosp(self) -> bool:
        return any({**self.scale.model, **method.model}.get("iosp", False) for method in self.methods)

    def ensure_detector(self) -> Path | None:
        """The scene parser's detector when a method uses IOSP: the one given, or the scale's trained
        under ``detector/`` (resumable, kept once trained); None when no method uses IOSP."""
        from fedvla.config import from_mapping
        from fedvla.twin.detector import DetectorDataConfig, DetectorTrainConfig, build_detector, detector_weights

        if not self.uses_iosp:
            return None
        if self.detector_source is not None:
            return detector_weights(self.detector_source)
        settings = self.scale.detector
        data = from_mapping(DetectorDataConfig, settings.get("data", {}), where=f"{self.scale.name}.detector.data")
        train = from_mapping(DetectorTrainConfig, settings.get("train", {}), where=f"{self.scale.name}.detector.train")
        return build_detector(self.output / "detector", data, train, show_progress=self.show_progress).weights

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    @property
    def data_dir(self) -> Path:
        return self.demos / "datasets"

    def ensure_data(self) -> None:
        state = self.demos / twin_demos.DEMOS_FILE
        counts = json.loads(state.read_text())["summary"] if state.is_file() else {}
        missing = [t for t in self.tasks if counts.get(t, {}).get("episodes", 0) < self.episodes_per_task]
        if missing and self.scale.collect.get("in_process", False):
            self.record_in_process(missing)
        elif missing:
            args = twin_demos.parse_args(["--episodes", str(self.episodes_per_task), "--output", str(self.demos),
                                          "--image-size", str(self.image_size),
                                          *[a for t in missing for a in ("--task", t)],
                                          *(["--detector", str(self.detector)] if self.detector else [])])
            twin_demos.collect(args)
        self.check_demonstrations()

    def check_demonstrations(self) -> None:
        """Every task needs a successful demonstration to train on (failed ones are not imported)."""
        summary = json.loads((self.demos / twin_demos.DEMOS_FILE).read_text())["summary"]
        empty = [t for t in self.tasks if summary.get(t, {}).get("successes", 0) == 0]
        if empty:
            counts = ", ".join(f"{t} 0 of {summary.get(t, {}).get('episodes', 0)}" for t in empty)
            raise ConfigError("collect.episodes_per_task", f"the expert succeeded in no demonstration of {counts} "
                              f"({self.demos / twin_demos.DEMOS_FILE}), so there is nothing to train on; on a busy "
                              f"machine the arm may have lagged (stalls in {self.demos / 'graph.log'})",
                              "more episodes per task, or a quieter machine; collection resumes where it stopped")

    def record_in_process(self, tasks: list[str]) -> None:
        """The scale's ``collect.in_process``: the expert in process (:mod:`fedvla.twin.demonstrations`,
        no ROS, faster than through the graph) into the same datasets and ``demos.json``. For short
        runs (the main job's twin episode); IOSP datasets need the graph's scene parses."""
        from fedvla.twin.demonstrations import record_in_process

        if self.detector is not None:
            raise ConfigError("collect.in_process", "in-process demonstrations carry no scene parses, and a method "
                              "of this scale uses IOSP", "collect through the graph (in_process: false)")
        state = self.demos / twin_demos.DEMOS_FILE
        records = [r for r in (json.loads(state.read_text())["episodes"] if state.is_file() else [])
                   if r["task"] not in tasks]
        for task in tasks:
            shutil.rmtree(self.data_dir / task, ignore_errors=True)  # (a partial one from an interrupted run)
            recorded = record_in_process(task, range(self.episodes_per_task), self.data_dir / task,
                                         image_size=self.image_size,
                                         show_progress=self.show_progress)
            records += [{**e, "attempts": 1, "wall_s": e["seconds"], "collected": "in process"}
                        for e in recorded.episodes]
        twin_demos.write_state(state, records, None)

    def evaluate_task(self, checkpoint: Path, task: str, directory: Path, method: MethodConfig) -> dict:
        """Through the graph and in process (every IOSP method parses with the study's detector)."""
        from fedvla_ros.tools import twin_evaluate

        output = directory / "evaluation" / task
        args = twin_evaluate.parse_args(["--checkpoint", str(checkpoint), "--task", task, "--trials", str(self.trials),
                                         "--max-steps", str(self.max_steps), "--output", str(output),
                                         *([] if self.in_process else ["--no-in-process"]),
                                         *(["--detector", str(self.detector)] if self.detector else [])])
        twin_evaluate.evaluate(args)
        report = json.loads((output / "evaluation.json").read_text())
        graph = report["summary"]["graph"][task]
        return {**graph, "in_process": report["summary"].get("in-process", {}).get(task), "report": str(output)}

    def check_iosp_grid(self) -> None:
        """Before anything runs: an IOSP policy at the datasets' image size must have the scene
        parser's patch grid (the parses are recorded with the demonstrations on that grid)."""
        from fedvla.graph import Graph
        from fedvla.model.config import PolicyConfig

        if not self.uses_iosp:
            return
        parser = Graph.load(self.config_dir).resolve_node("twin", "scene_parser",
                                                          {"parse_scene": "true"}).parameters()
        grid = (int(parser["patch_rows"]), int(parser["patch_cols"]))
        model = PolicyConfig.from_yaml(self.config_dir / "model" / self.scale.model_config,
                                       **{**self.scale.model, "image_size": self.image_size, "proprio_dim": 1,
                                          "action_dim": 1})
        if model.patch_grid != grid:
            raise ConfigError("collect.image_size", f"at {self.image_size} px the policy's patch grid is "
                              f"{model.patch_grid[0]} x {model.patch_grid[1]}, the twin's scene parser selects IOSP "
                              f"tokens on {grid[0]} x {grid[1]}", f"the image size whose patch grid is {grid[0]} x {grid[1]}")

    def run(self, command: str = "") -> dict[str, list[dict]]:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.command = command
        self.check_iosp_grid()
        self.detector = self.ensure_detector()
        self.ensure_data()
        results = {method.name: [self.run_method(method, seed) for seed in self.scale.training_seeds(method)]
                   for method in self.methods}
        self.write_report(results, command, started)
        return results

    def write_report(self, results: dict[str, list[dict]], command: str, started: str) -> None:
        from fedvla.paths import working_tree_commit
        from fedvla.sim.report import PAPER_TABLE2, machine, paper_sections, plot_validation, validation_table
        from fedvla.twin.evaluation import trial_outcomes

        graph: dict[str, dict] = {}
        lines = ["# The workcell twin study", "",
                 f"Scale `{self.scale.name}`: {', '.join(self.tasks)}; {self.episodes_per_task} demonstrations per "
                 f"task; {self.trials} closed-loop trials per task through the graph"
                 f"{' (and in-process, same seeds)' if self.in_process else ''}.", ""]
        for method in self.methods:
            runs = results[method.name]
            for run in runs:
                label = method.label if len(runs) == 1 else f"{method.label}, training seed {run['seed']}"
                evaluations = run["evaluation"]  # (evaluate_task: the graph's summary per task)
                graph[label] = {task: evaluations[task] for task in self.tasks}
                in_process = {task: evaluations[task]["in_process"] for task in self.tasks
                              if evaluations[task]["in_process"]}
                lines += [f"## {label}", "", *report_table({"graph": graph[label], "in-process": in_process}), ""]
                lines += [f"* {line}" for line in agreement_lines(graph[label], in_process)] + [""]
        tasks = list(self.tasks)
        if len(self.methods) > 1:  # the paper's Tables 2 and 3, from the graph's trials
            lines += ["# Through the graph, in the paper's layout", "",
                      *paper_sections(trial_outcomes(results, tasks), self.methods, tasks, PAPER_TABLE2,
                                      trials="same seed: layout and start"),
                      "## Validation loss (initial model → last round, mean over training seeds)", "",
                      *validation_table(results, self.methods, tasks), "", "![validation loss](validation_loss.png)", ""]
            plot_validation(self.output / "validation_loss.png", results, self.methods, tasks)
        demos = json.loads((self.demos / twin_demos.DEMOS_FILE).read_text())
        demos["summary"] = {task: s for task, s in demos["summary"].items() if task in self.tasks}
        where = ("in process" if all(e.get("collected") == "in process" for e in demos["episodes"])
                 else "through the graph")
        lines += [f"## Expert ceiling (demonstrations {where})", "", *expert_lines(demos), "",
                  "![success per task](success.png)", ""]
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "study.md").write_text("\n".join(lines))
        plot_success(self.output / "success.png", graph)
        (self.output / "run.json").write_text(json.dumps({
            "command": command, "commit": working_tree_commit(), "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "scale": dataclasses.asdict(self.scale), "config_hash": config_hash(self.scale, self.methods),
            "demos": str(self.demos), "detector": str(self.detector or ""), "machine": machine()}, indent=1, default=str))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvla twin study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="smoke", help="config/study/twin_scales/<scale>.yaml: smoke or cpu")
    parser.add_argument("--output", default="", help="study directory (default runs/twin_study_<scale>)")
    parser.add_argument("--demos", default="", help="a fedvla twin demos output to train on (default <output>/demos)")
    parser.add_argument("--detector", default="", help="a trained fedvla twin detector output (or .pt) for the scene "
                        "parser (default: train the scale's under <output>/detector)")
    parser.add_argument("--methods", nargs="+", help="only these methods (config/study/methods/<name>.yaml)")
    parser.add_argument("--rounds", type=int, help="override the scale's rounds")
    return parser.parse_args(argv)


def run_study(args: argparse.Namespace) -> int:
    config_dir = find_config_dir()
    scale = load_scale(config_dir, args.scale, folder="twin_scales", rounds=args.rounds,
                       methods=tuple(args.methods) if args.methods else None)
    output = Path(args.output or Path("runs") / f"twin_study_{args.scale}").resolve()
    study = TwinStudy(config_dir, scale, output, demos=Path(args.demos).resolve() if args.demos else None,
                      detector=Path(args.detector).resolve() if args.detector else None)
    study.run(command="fedvla twin study " + " ".join(sys.argv[1:]))
    print((output / "study.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    exit_with(lambda: run_study(args))

