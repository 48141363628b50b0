"""``fedvla twin results``: the twin's recorded runs summarised for ``results/twin_cpu/`` - every
number in it is read from the runs' own records:

* the expert ceiling (``fedvla twin demos``' ``demos.json``): success per task with its Wilson 95 %
  interval, attempts repeated after the driver stopped, steps per demonstration and the steps the
  bag import kept, demonstrations per minute;
* the detector's validation mAP50 and mAP50-95 (``fedvla twin detector``'s ``detector.json``);
* each twin study's graph-evaluated success (``fedvla twin study``'s ``study.md`` and ``run.json``,
  copied under ``study_<scale>/``: the cpu scale's FedVLA with its in-process cross-check, the
  evidence scale's Tables 2 and 3);
* the benchmarks (``fedvla bench twin``'s ``bench.json``): real-time factor, camera rate, end-to-end latency.

Each run's ``run.json`` (the commit it ran at, the command, the machine) is copied next to its
summary as its provenance.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedvla.iosp.detector_training import detector_training_seconds
from fedvla.sim.report import compute_table
from fedvla.statistics import wilson_interval


def expert_lines(demos: dict) -> list[str]:
    lines = ["| task | expert success | Wilson 95 % | repeated after a driver stop | steps (median) | steps imported |",
             "|---|---|---|---|---|---|"]
    for task, summary in demos["summary"].items():
        episodes = [e for e in demos["episodes"] if e["task"] == task]
        low, high = wilson_interval(summary["successes"], summary["episodes"])
        steps = int(np.median([e["steps"] for e in episodes]))
        kept = [(e.get("imported_steps", 0), e["steps"]) for e in episodes if e["success"] and "imported_steps" in e]
        imported = f"{100 * sum(k for k, _ in kept) / max(1, sum(s for _, s in kept)):.0f} %" if kept else "-"
        lines.append(f"| {task} | {summary['successes']}/{summary['episodes']} ({100 * summary['success_rate']:.0f} %) "
                     f"| {100 * low:.0f}-{100 * high:.0f} % | {summary['repeated_after_driver_stop']} | {steps} "
                     f"| {imported} |")
    return lines


# The latency figures of ``fedvla bench twin`` (its latency.json keys), as its table and the results
# name them, with the goal.
LATENCY_FIGURES = (("end to end: frame stamp to first servo setpoint", "end_to_end_ms", "p95 <= 150"),
                   ("of which: frame age when the chunk arrives", "frame_age_on_arrival_ms", "-"),
                   ("of which: policy compute per chunk", "policy_compute_ms", "-"))


def detector_sentence(detector_dir: Path) -> str:
    detector = json.loads((detector_dir / "detector.json").read_text())
    return (f"mAP50 {detector['map50']:.3f}, mAP50-95 {detector['map50_95']:.3f} on "
            f"{detector['data']['val_images_per_task']} validation renders per task (layouts never trained on); "
            f"{detector['train']['epochs']} epochs at {detector['train']['image_size']} px, "
            f"{detector_training_seconds(detector_dir, detector) / 60:.0f} min of training.")


def bench_lines(bench: dict) -> list[str]:
    """``fedvla bench twin``'s figures (its ``bench.json``) against the issue's goals."""
    lines = ["## Benchmarks (`fedvla bench twin`)", "",
             f"`{bench['command']}` at commit {bench.get('commit') or 'unknown'}, {bench['date']}, "
             f"{bench['machine'].get('cpus')} CPUs.", "", "| figure | value | goal |", "|---|---|---|",
             f"| real-time factor, physics with the camera rendering at {bench['target_fps']:g} fps | "
             f"{bench['real_time_factor']:.2f} | >= 1.0 |",
             f"| camera frames per second reached | {bench['camera_fps']:.1f} | {bench['target_fps']:g} |"]
    if "demonstrations_per_minute" in bench:
        lines.append(f"| expert demonstrations per minute | {bench['demonstrations_per_minute']['value']:.2f} | - |")
    for name, key, goal in LATENCY_FIGURES if bench.get("latency") else ():
        part = bench["latency"][key]
        lines.append(f"| {name}, p50 / p95 (ms) | {part['p50']:.1f} / {part['p95']:.1f} | {goal} |")
    return lines + [""]


def _copy(source: Path, destination: Path, names: tuple[str, ...]) -> None:
    """A run's records (those it has) into ``destination``; records already there (a results
    directory rewritten from its own copies, e.g. an earlier study beside a new one) stay."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        record, copy = source / name, destination / name
        if record.is_file() and not (copy.is_file() and copy.samefile(record)):
            shutil.copy(record, copy)


def write_twin_results(output: Path, demos_dir: Path, detector_dir: Path | None = None,
                       study_dirs: Sequence[Path] = (), bench_dir: Path | None = None) -> Path:
    """Write ``output/README.md`` (and copy each run's records); returns the README's path."""
    output.mkdir(parents=True, exist_ok=True)
    demos = json.loads((demos_dir / "demos.json").read_text())
    lines = ["# The workcell twin on 2 CPU cores", "",
             "Generated by `fedvla twin results` from the runs' own records (copied here); each run's "
             "`run.json` says at which commit and how it ran.", "",
             "## Expert demonstrations through the graph (the ceiling of every learned policy)", "",
             f"`fedvla twin demos`: {len(demos['episodes'])} demonstrations, "
             f"{demos['demonstrations_per_minute']:.2f} per minute (reset to import, repeats included; other work "
             "shared the two cores during the run).", "", *expert_lines(demos), ""]
    _copy(demos_dir, output / "demos", ("demos.json", "run.json"))
    if detector_dir is not None:
        lines += ["## Detector (YOLOv8 from scratch on twin renders)", "",
                  f"`fedvla twin detector`: {detector_sentence(detector_dir)}", ""]
        _copy(detector_dir, output / "detector", ("detector.json", "run.json"))
    for study_dir in study_dirs:
        scale_config = json.loads((study_dir / "run.json").read_text())["scale"]
        scale = scale_config["name"]
        copied = output / f"study_{scale}"
        # (its pictures are linked from study.md, which sits in study_<scale>/)
        report = (study_dir / "study.md").read_text().replace("](", f"](study_{scale}/")
        lines += [f"## Twin study, scale `{scale}` (graph-evaluated)", ""]
        if (study_dir / "detector" / "detector.json").is_file():  # the detector it trained for its scene parser
            lines += [f"Its scene parser's detector: {detector_sentence(study_dir / 'detector')}", ""]
            _copy(study_dir / "detector", copied / "detector", ("detector.json", "run.json"))
        lines += [report, ""]
        order = {name: rank for rank, name in enumerate(scale_config.get("methods") or ())}  # (the study's own order)
        results = sorted(study_dir.glob("methods/*/result.json"),
                         key=lambda path: (order.get(path.parent.name, len(order)), path))
        runs = {path.parent.name: json.loads(path.read_text()) for path in results}
        if runs:
            lines += [f"### Compute, scale `{scale}`", "", "Wall-clock hours as each run recorded them (training: "
                      "its rounds' own durations; evaluation: through the graph).", "",
                      *compute_table({name: [run] for name, run in runs.items()},
                                     {name: run["method"]["label"] for name, run in runs.items()},
                                     study_dir / "detector"), ""]
        _copy(study_dir, copied, ("study.md", "run.json", "success.png", "validation_loss.png"))
        for path in results:  # each run: training record, provenance
            _copy(path.parent, copied / path.parent.relative_to(study_dir), ("result.json", "run.json"))
        for evaluation in sorted(study_dir.glob("methods/*/evaluation/*/evaluation.json")):  # every trial's record
            relative = evaluation.parent.relative_to(study_dir)
            _copy(evaluation.parent, copied / relative, ("evaluation.json",))
    if bench_dir is not None:
        lines += bench_lines(json.loads((bench_dir / "bench.json").read_text()))
        _copy(bench_dir, output / "bench", ("bench.json",))
    readme = output / "README.md"
    readme.write_text("\n".join(lines))
    return readme
