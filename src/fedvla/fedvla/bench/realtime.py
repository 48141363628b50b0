"""``fedvla bench realtime``: synchronous against asynchronous chunk execution in the workcell twin,
under injected policy latency (issue 22). Figures, printed, never asserted.

Each condition is one ``fedvla twin evaluate`` run (graph trials only) with its own launch arguments:

* ``sync``: the policy observes once the last chunk's executed actions have all run
  (``inference_mode:=sync``), and the driver runs each chunk from where the arm is on arrival
  (``time_aligned:=false``): the arm waits for the policy at every chunk;
* ``async-<aggregator>``: the next chunk is computed while the current one runs
  (``inference_mode:=async``), chunks run on their observation's clock (``time_aligned:=true``)
  and overlapping chunks merge by ``chunk_aggregator``.

Every condition runs at each injected latency (``injected_latency:=``, the policy holding each
chunk back). Per run: success with its Wilson interval, the mean time to success, and the driver's
smoothness figures over the run (RMS jerk of the setpoints, the largest reference jump at a hand-over)
and its queue (times it ran dry, actions dropped as late).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedvla.robot.controller import ChunkAggregator

AGGREGATORS = tuple(a.value for a in ChunkAggregator)
SYNC = "sync"


def condition_names() -> list[str]:
    return [SYNC, *(f"async-{a}" for a in AGGREGATORS)]


def launch_arguments(condition: str, latency_s: float) -> dict[str, str]:
    """The twin profile's arguments for ``condition`` at ``latency_s`` of injected latency."""
    if condition == SYNC:
        arguments = {"inference_mode": "sync", "time_aligned": "false", "chunk_aggregator": "latest"}
    else:
        aggregator = condition.removeprefix("async-")
        if aggregator not in AGGREGATORS:
            raise ValueError(f"unknown condition {condition!r} (allowed: {', '.join(condition_names())})")
        arguments = {"inference_mode": "async", "time_aligned": "true", "chunk_aggregator": aggregator}
    return {**arguments, "injected_latency": f"{latency_s:g}"}


def run_name(condition: str, latency_s: float) -> str:
    return f"{condition}_{round(1000 * latency_s)}ms"


@dataclasses.dataclass(frozen=True)
class RealtimeRow:
    condition: str
    latency_s: float
    successes: int
    trials: int
    wilson95: tuple[float, float]
    time_to_success_s: float | None  # mean over the successful trials
    setpoint_jerk_rms: float  # rad/s^3, the largest joint's
    largest_reference_jump_mrad: float
    queue_ran_dry: int
    late_actions: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


def read_run(evaluation_json: Path, condition: str, latency_s: float, task: str) -> RealtimeRow:
    """A condition's figures from its ``fedvla twin evaluate`` report."""
    report = json.loads(Path(evaluation_json).read_text())
    summary = report["summary"]["graph"][task]
    driver = report["provenance"].get("driver_diagnostics", {})
    return RealtimeRow(condition=condition, latency_s=latency_s, successes=summary["successes"],
                       trials=summary["trials"], wilson95=tuple(summary["wilson95"]),
                       time_to_success_s=summary["time_to_success_s"],
                       setpoint_jerk_rms=float(driver.get("setpoint_jerk_rms", "nan")),
                       largest_reference_jump_mrad=float(driver.get("largest_reference_jump_mrad", "nan")),
                       queue_ran_dry=int(driver.get("queue_ran_dry", 0)), late_actions=int(driver.get("late_actions", 0)))


def plot(rows: list[RealtimeRow], path: Path) -> None:
    """Success rate (Wilson 95 % bars) and mean time to success against the injected latency, one
    line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (success_axes, time_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for condition in dict.fromkeys(r.condition for r in rows):
        mine = sorted((r for r in rows if r.condition == condition), key=lambda r: r.latency_s)
        latency_ms = [1000 * r.latency_s for r in mine]
        rates = [100 * r.success_rate for r in mine]
        errors = [[100 * (r.success_rate - r.wilson95[0]) for r in mine], [100 * (r.wilson95[1] - r.success_rate) for r in mine]]
        success_axes.errorbar(latency_ms, rates, yerr=errors, marker="o", capsize=3, label=condition)
        timed = [(ms, r.time_to_success_s) for ms, r in zip(latency_ms, mine) if r.time_to_success_s is not None]
        if timed:
            time_axes.plot(*zip(*timed), marker="o", label=condition)
    success_axes.set(xlabel="injected policy latency (ms)", ylabel="success (%)", ylim=(-5, 105),
                     title="closed-loop success (Wilson 95 %)")
    time_axes.set(xlabel="injected policy latency (ms)", ylabel="mean time to success (s)", title="task completion time")
    if not time_axes.lines:  # no condition succeeded: say so instead of an empty legend
        time_axes.text(0.5, 0.5, "no successful trial", ha="center", va="center", transform=time_axes.transAxes)
    for axes in (success_axes, time_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_markdown(record: dict) -> str:
    """``realtime.md``: the bench's table and plot with their provenance, from ``bench.json``."""
    lines = ["# Chunk execution in the workcell twin: sync against async", "",
             f"Generated by `fedvla bench realtime` from its own records (`bench.json`): `{record['command']}` at "
             f"commit `{record['commit']}`, {record['date']}, on {record['machine'].get('cpus')} CPUs "
             f"({record['machine'].get('platform')}).", "",
             f"Task `{record['task']}`, {record['trials']} trials per row through the graph, checkpoint "
             f"`{record['checkpoint']}`. The driver's figures (jerk, jump, queue, late actions) cover each row's whole run.",
             "", "| condition | injected latency (ms) | success | Wilson 95 % | mean time to success (s) | setpoint jerk RMS "
             "(rad/s^3) | largest reference jump (mrad) | queue ran dry | late actions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        low, high = row["wilson95"]
        time_s = "-" if row["time_to_success_s"] is None else f"{row['time_to_success_s']:.2f}"
        lines.append(f"| {row['condition']} | {1000 * row['latency_s']:g} | {row['successes']}/{row['trials']} | "
                     f"{100 * low:.0f}-{100 * high:.0f} % | {time_s} | {row['setpoint_jerk_rms']:.1f} | "
                     f"{row['largest_reference_jump_mrad']:.2f} | {row['queue_ran_dry']} | {row['late_actions']} |")
    lines += ["", "![success and completion time against latency](realtime.png)", ""]
    boundaries = record.get("boundaries")
    if boundaries:
        lines += ["## Setpoints around chunk boundaries", "",
                  f"The {boundaries['chunks']} chunks of `{Path(boundaries['bag']).name}` ({boundaries['condition']}, "
                  f"{1000 * boundaries['latency_s']:g} ms injected latency), each at the instant it reached the driver, "
                  "replayed through the twin driver's controller once per aggregator (simulated time, "
                  "`fedvla.bench.chunk_replay`): the same chunks for all three.", "",
                  "| aggregator | setpoint jerk RMS (rad/s^3) | largest reference jump (mrad) | chunks refused |",
                  "|---|---|---|---|"]
        lines += [f"| {r['aggregator']} | {r['setpoint_jerk_rms']:.1f} | {r['largest_reference_jump_mrad']:.2f} | "
                  f"{sum(r['refused'].values())} |" for r in boundaries["replays"]]
        lines += ["", "![setpoints around chunk boundaries](boundaries.png)", ""]
    return "\n".join(lines)

