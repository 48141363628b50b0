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

The chunks every async trial recorded are then replayed through the driver's controller once per
aggregator (:mod:`fedvla.bench.chunk_replay`): the same chunks for all three, so the smoothness
figures differ by the aggregator alone. The default aggregator is chosen from the closed-loop
trials (:func:`chosen_aggregator`): the one with most successes over every latency, the trials
paired by layout for McNemar's test against the runner-up.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from fedvla.config import ConfigError
from fedvla.robot.controller import ChunkAggregator
from fedvla.statistics import agree_within_noise, mcnemar

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
    outcomes: tuple[tuple[int, bool], ...] = ()  # (layout seed, success) per trial

    @property
    def success_rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


def read_run(evaluation_json: Path, condition: str, latency_s: float, task: str) -> RealtimeRow:
    """A condition's figures from its ``fedvla twin evaluate`` report."""
    report = json.loads(Path(evaluation_json).read_text())
    summary = report["summary"]["graph"][task]
    driver = report["provenance"].get("driver_diagnostics", {})
    trials = json.loads((Path(evaluation_json).parent / "trials.json").read_text())
    outcomes = tuple(sorted((int(t["seed"]), bool(t["success"])) for t in trials if t["task"] == task))
    return RealtimeRow(condition=condition, latency_s=latency_s, successes=summary["successes"],
                       trials=summary["trials"], wilson95=tuple(summary["wilson95"]),
                       time_to_success_s=summary["time_to_success_s"],
                       setpoint_jerk_rms=float(driver.get("setpoint_jerk_rms", "nan")),
                       largest_reference_jump_mrad=float(driver.get("largest_reference_jump_mrad", "nan")),
                       queue_ran_dry=int(driver.get("queue_ran_dry", 0)), late_actions=int(driver.get("late_actions", 0)),
                       outcomes=outcomes)


def shared_launch_arguments(items: list[str]) -> dict[str, str]:
    """``--launch-argument`` values for every condition (``name:=value``); ConfigError for one that
    a condition sets itself (the comparison would no longer be between the conditions)."""
    from fedvla.graph import parse_overrides

    arguments = parse_overrides(items)
    own = sorted(set(arguments) & set(launch_arguments(SYNC, 0.0)))
    if own:
        raise ConfigError("--launch-argument", f"{own[0]} is set by each condition", "another twin launch argument "
                          "(e.g. rtde_watchdog_hz:=10), or --conditions to choose the conditions")
    return arguments


def complete_run(evaluation_json: Path, task: str, trials: int, arguments: Mapping[str, str] | None = None) -> bool:
    """Whether a condition's earlier run already holds ``trials`` graph trials of ``task`` (the
    bench resumes: a finished condition is read back, not run again). ConfigError when it ran with
    other launch arguments than ``arguments`` (resuming would mix the two)."""
    try:
        report = json.loads(Path(evaluation_json).read_text())
        summary = report["summary"]["graph"][task]
    except (OSError, ValueError, KeyError):
        return False
    earlier = report.get("provenance", {}).get("launch_arguments")
    if arguments is not None and earlier is not None and earlier != dict(arguments):
        raise ConfigError("--output", f"{Path(evaluation_json).parent} ran with launch arguments {earlier}, this bench "
                          f"asks {dict(arguments)}", "a new --output directory, or the same --launch-argument values")
    return summary["trials"] == trials


@dataclasses.dataclass(frozen=True)
class AggregatorChoice:
    """The default aggregator, from the closed-loop trials of every async condition."""

    chosen: str
    successes: dict[str, tuple[int, int]]  # aggregator -> (successes, trials) over every latency
    runner_up: str | None
    paired_p_value: float | None  # McNemar, chosen against runner-up, trials paired by (latency, layout)
    only_chosen: int = 0  # paired trials only the chosen one succeeded in
    only_runner_up: int = 0


def chosen_aggregator(rows: list[RealtimeRow]) -> AggregatorChoice | None:
    """The aggregator whose async condition succeeded most often, pooled over the latencies; a tie
    goes to the earlier one in :class:`ChunkAggregator` (``latest`` first: it merges nothing, so a
    blend has to earn its place). None without an async row."""
    asynchronous = [r for r in rows if r.condition.startswith("async-")]
    if not asynchronous:
        return None
    successes = {a: (sum(r.successes for r in asynchronous if r.condition == f"async-{a}"),
                     sum(r.trials for r in asynchronous if r.condition == f"async-{a}")) for a in AGGREGATORS}
    successes = {a: counts for a, counts in successes.items() if counts[1]}
    ranked = sorted(successes, key=lambda a: (-successes[a][0] / successes[a][1], AGGREGATORS.index(a)))
    chosen, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    if runner_up is None:
        return AggregatorChoice(chosen, successes, None, None)

    def outcomes(aggregator: str) -> dict[tuple[float, int], bool]:
        return {(r.latency_s, seed): success for r in asynchronous if r.condition == f"async-{aggregator}"
                for seed, success in r.outcomes}

    mine, theirs = outcomes(chosen), outcomes(runner_up)
    paired = sorted(set(mine) & set(theirs))
    if not paired:
        return AggregatorChoice(chosen, successes, runner_up, None)
    test = mcnemar([mine[k] for k in paired], [theirs[k] for k in paired])
    return AggregatorChoice(chosen, successes, runner_up, test.p_value, test.only_a, test.only_b)


@dataclasses.dataclass(frozen=True)
class ReplayedRuns:
    """:func:`replay_runs`' figures (``summaries``, ``plotted``: JSON for ``bench.json``) and the
    plotted trial's replays, one per aggregator."""

    summaries: list[dict]
    plotted: dict
    plotted_replays: list


def replay_runs(output: Path, rows: list[RealtimeRow], task: str, action_space,
                progress: Callable[[str], None] = lambda message: None) -> ReplayedRuns | None:
    """Every async trial's recorded chunks replayed with each aggregator (simulated time): per
    latency and aggregator, the trials replayed, their chunks and overlapping hand-overs, the
    merges taken, the mean setpoint jerk RMS, the median of each trial's largest reference jump and
    the chunks refused by reason. The plotted trial is the first at the largest latency with an
    overlapping hand-over (an async-latest one when there is one). None when no async trial's bag
    holds chunks."""
    from fedvla.bench.chunk_replay import read_recorded_chunks, replay

    figures: dict[tuple[float, str], list] = {}  # (latency, aggregator) -> [(recorded, replayed)]
    trials = []  # (latency, condition, bag, recorded, {aggregator: replayed})
    for row in rows:
        if not row.condition.startswith("async-"):
            continue
        for bag in sorted((output / run_name(row.condition, row.latency_s) / "bags").glob(f"{task}_*")):
            try:
                recorded = read_recorded_chunks(bag)
            except ValueError as err:
                progress(f"not replayed: {err}")
                continue
            if recorded.skipped_chunks:
                progress(f"{bag.name}: {recorded.skipped_chunks} chunks recorded before the arm's joints left out")
            replays = {a.value: replay(recorded, action_space, a) for a in ChunkAggregator}
            for aggregator, replayed in replays.items():
                figures.setdefault((row.latency_s, aggregator), []).append((recorded, replayed))
            trials.append((row.latency_s, row.condition, bag, recorded, replays))
        progress(f"replayed the chunks of {row.condition} at {1000 * row.latency_s:g} ms")
    if not trials:
        return None
    overlapping = [t for t in trials if t[3].overlapping_hand_overs] or trials
    latency, condition = max((t[:2] for t in overlapping), key=lambda c: (c[0], c[1] == "async-latest"))
    plotted = next(t for t in overlapping if t[:2] == (latency, condition))
    summaries = []
    for (latency_s, aggregator), pairs in sorted(figures.items(),
                                                 key=lambda item: (item[0][0], AGGREGATORS.index(item[0][1]))):
        refused: Counter[str] = Counter()
        for _, replayed in pairs:
            refused.update(replayed.refused)
        summaries.append({"latency_s": latency_s, "aggregator": aggregator, "trials": len(pairs),
                          "chunks": sum(len(recorded.chunks) for recorded, _ in pairs),
                          "overlapping_hand_overs": sum(recorded.overlapping_hand_overs for recorded, _ in pairs),
                          "merges": sum(replayed.merges for _, replayed in pairs),
                          "setpoint_jerk_rms": statistics.fmean(replayed.rms_jerk for _, replayed in pairs),
                          "largest_reference_jump_mrad": 1000 * statistics.median(
                              replayed.largest_reference_jump for _, replayed in pairs),
                          "refused": dict(refused)})
    return ReplayedRuns(summaries, {"bag": str(plotted[2]), "condition": plotted[1], "latency_s": plotted[0],
                                    "chunks": len(plotted[3].chunks),
                                    "overlapping_hand_overs": plotted[3].overlapping_hand_overs},
                        list(plotted[4].values()))


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


COMPLETION_SPEEDUP_GOAL = 0.20  # async at least 20 % faster than sync at the same latency (issue 22)
SMOOTHNESS_GOAL = 3.0  # a blend's jump or jerk at least 3x lower than latest's


def goal_lines(record: dict) -> list[str]:
    """The issue's three twin goals, each with its figures and whether it holds: success of async at
    the largest latency against sync at none, completion time of async against sync per latency,
    and the blends' smoothness against latest's on the same replayed chunks."""
    rows = {(r["condition"], r["latency_s"]): r for r in record["rows"]}
    choice = record.get("choice")
    if not choice:
        return []
    chosen = f"async-{choice['chosen']}"
    latencies = sorted({latency for _, latency in rows})
    lines = []
    sync0, slowest = rows.get((SYNC, 0.0)), rows.get((chosen, latencies[-1]))
    if sync0 and slowest:
        holds = (slowest["successes"] / slowest["trials"] >= sync0["successes"] / sync0["trials"]
                 or agree_within_noise(slowest["successes"], slowest["trials"], sync0["successes"], sync0["trials"]))
        lines.append(f"- **Success under latency** (async at {1000 * latencies[-1]:g} ms within noise of sync at 0 ms, "
                     f"or better): {chosen} {slowest['successes']}/{slowest['trials']} against sync "
                     f"{sync0['successes']}/{sync0['trials']}: {'holds' if holds else 'does not hold'}.")
    for latency in latencies:
        sync, fast = rows.get((SYNC, latency)), rows.get((chosen, latency))
        if not (sync and fast):
            continue
        head = f"- **Completion time at {1000 * latency:g} ms** (async at least {100 * COMPLETION_SPEEDUP_GOAL:.0f} % faster): "
        if sync["time_to_success_s"] is None or fast["time_to_success_s"] is None:
            lines.append(head + "cannot be compared: " + ("sync" if sync["time_to_success_s"] is None else chosen)
                         + " had no successful trial.")
            continue
        faster = 1 - fast["time_to_success_s"] / sync["time_to_success_s"]
        holds = faster >= COMPLETION_SPEEDUP_GOAL
        lines.append(head + f"{chosen} {fast['time_to_success_s']:.2f} s against sync {sync['time_to_success_s']:.2f} s, "
                     f"{100 * faster:.1f} % faster (means over the successful trials only): {'holds' if holds else 'does not hold'}.")
    replays = (record.get("replays") or {}).get("summaries") or []
    for latency in sorted({r["latency_s"] for r in replays}):
        mine = {r["aggregator"]: r for r in replays if r["latency_s"] == latency}
        latest = mine.get(ChunkAggregator.LATEST.value)
        if latest is None or not latest["overlapping_hand_overs"]:
            lines.append(f"- **Smoothness at {1000 * latency:g} ms**: no chunk overlapped the one before, so the "
                         "aggregators have nothing to merge and cannot differ.")
            continue
        for blend in (ChunkAggregator.CROSSFADE.value, ChunkAggregator.ENSEMBLE.value):
            other = mine.get(blend)
            if other is None:
                continue
            jump = latest["largest_reference_jump_mrad"] / max(other["largest_reference_jump_mrad"], 1e-9)
            jerk = latest["setpoint_jerk_rms"] / max(other["setpoint_jerk_rms"], 1e-9)
            verdict = ("holds" if max(jump, jerk) >= SMOOTHNESS_GOAL else "does not hold")
            lines.append(f"- **Smoothness at {1000 * latency:g} ms, {blend}** (at least {SMOOTHNESS_GOAL:g}x lower than "
                         f"latest): largest jump {jump:.1f}x lower, setpoint jerk {jerk:.2f}x lower: {verdict}"
                         + (" for the jump, not for the jerk." if jump >= SMOOTHNESS_GOAL > jerk else "."))
    return lines


def _shared_arguments_sentence(record: dict) -> str:
    """What every condition ran with besides its own launch arguments (records before the bench
    took --launch-argument say nothing)."""
    if "launch_arguments" not in record:
        return ""
    shared = record["launch_arguments"]
    if not shared:
        return " Besides each condition's own, the twin profile's default launch arguments."
    return " Every condition also with " + ", ".join(f"`{k}:={v}`" for k, v in shared.items()) + "."


def report_markdown(record: dict) -> str:
    """``realtime.md``: the bench's table and plot with their provenance, from ``bench.json``."""
    lines = ["# Chunk execution in the workcell twin: sync against async", "",
             f"Generated by `fedvla bench realtime` from its own records (`bench.json`): `{record['command']}` at "
             f"commit `{record['commit']}`, {record['date']}, on {record['machine'].get('cpus')} CPUs "
             f"({record['machine'].get('platform')}).", "",
             f"Task `{record['task']}`, {record['trials']} trials per row through the graph, checkpoint "
             f"`{record['checkpoint']}`. The driver's figures (jerk, jump, queue, late actions) cover each row's whole run."
             + _shared_arguments_sentence(record),
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
    reused = record.get("reused_runs") or {}
    if reused:
        by_commit: dict[str, list[str]] = {}
        for name, commit in reused.items():
            by_commit.setdefault(commit or "not recorded", []).append(f"`{name}`")
        lines += ["Trials read back from earlier runs of this bench, not repeated: " + "; ".join(
            f"{', '.join(names)} at commit `{commit}`" for commit, names in by_commit.items()) + ".", ""]
    replays = record.get("replays")
    if replays:
        plotted = replays["plotted"]
        lines += ["## The same chunks through each aggregator", "",
                  "Every async trial's chunks, as its bag recorded them (each at the instant it reached the driver), "
                  "replayed through the twin driver's controller once per aggregator in simulated time "
                  "(`fedvla.bench.chunk_replay`): within a row group the aggregators meet exactly the same chunks. "
                  "The arm follows its setpoints and the chunks are not fed back, so this shows the hand-overs, "
                  "not how a trial would have ended. An overlapping hand-over is a chunk arriving while the one "
                  "before still had actions to come: only there do the aggregators differ.", "",
                  "| injected latency (ms) | aggregator | trials | chunks | overlapping hand-overs | merges taken | "
                  "setpoint jerk RMS (rad/s^3, mean) | largest reference jump (mrad, median) | chunks refused |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in replays["summaries"]:
            refused = ", ".join(f"{n} {why}" for why, n in sorted(r["refused"].items())) or "0"
            lines.append(f"| {1000 * r['latency_s']:g} | {r['aggregator']} | {r['trials']} | {r['chunks']} | "
                         f"{r['overlapping_hand_overs']} | {r['merges']} | {r['setpoint_jerk_rms']:.1f} | "
                         f"{r['largest_reference_jump_mrad']:.1f} | {refused} |")
        lines += ["", f"The plot: `{Path(plotted['bag']).name}` ({plotted['condition']}, "
                      f"{1000 * plotted['latency_s']:g} ms), {plotted['chunks']} chunks, "
                      f"{plotted['overlapping_hand_overs']} overlapping hand-overs.", "",
                  "![setpoints around chunk boundaries](boundaries.png)", ""]
    choice = record.get("choice")
    if choice:
        pooled = ", ".join(f"{a} {n}/{t}" for a, (n, t) in choice["successes"].items())
        lines += ["## The default aggregator", "",
                  f"Closed-loop successes of the async conditions, pooled over the latencies: {pooled}. "
                  f"The default is the most successful: **{choice['chosen']}** (a tie goes to `latest`, which merges nothing)."]
        if choice["paired_p_value"] is not None:
            significant = "a significant" if choice["paired_p_value"] < 0.05 else "not a significant"
            lines[-1] += (f" Against the runner-up, {choice['runner_up']}, on the same layouts and latencies: "
                          f"{choice['only_chosen']} trials only {choice['chosen']} succeeded in, "
                          f"{choice['only_runner_up']} only {choice['runner_up']}; McNemar p = "
                          f"{choice['paired_p_value']:.3g}, {significant} difference at this sample size.")
        lines.append("")
        goals = goal_lines(record)
        if goals:
            lines += ["## The issue's goals", "", *goals, ""]
    return "\n".join(lines)

