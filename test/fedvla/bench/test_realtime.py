"""``fedvla bench realtime``'s bookkeeping, ROS-free: which aggregator the closed-loop trials
choose (and the paired test behind it), resuming a finished condition, and the shipped default
agreeing with the recorded measurements (results/realtime)."""
import json
from pathlib import Path

import pytest

from fedvla.bench.realtime import RealtimeRow, chosen_aggregator, complete_run, goal_lines, report_markdown

RESULTS = Path(__file__).resolve().parents[3] / "results" / "realtime" / "bench.json"


def _row(condition: str, latency_s: float, outcomes: list[bool]) -> RealtimeRow:
    return RealtimeRow(condition=condition, latency_s=latency_s, successes=sum(outcomes), trials=len(outcomes),
                       wilson95=(0.0, 1.0), time_to_success_s=None, setpoint_jerk_rms=1.0,
                       largest_reference_jump_mrad=1.0, queue_ran_dry=0, late_actions=0,
                       outcomes=tuple((1000 + i, o) for i, o in enumerate(outcomes)))


def test_the_most_successful_aggregator_over_every_latency_is_chosen_and_tested_paired() -> None:
    rows = [_row("sync", 0.0, [True] * 10),  # sync is not an aggregator: never chosen
            _row("async-latest", 0.0, [True] * 5 + [False] * 5), _row("async-latest", 0.1, [True] * 4 + [False] * 6),
            _row("async-crossfade", 0.0, [False] * 2 + [True] * 8), _row("async-crossfade", 0.1, [True] * 3 + [False] * 7),
            _row("async-ensemble", 0.0, [False] * 10), _row("async-ensemble", 0.1, [False] * 10)]
    choice = chosen_aggregator(rows)
    assert choice.chosen == "crossfade" and choice.runner_up == "latest"
    assert choice.successes == {"latest": (9, 20), "crossfade": (11, 20), "ensemble": (0, 20)}
    # paired by (latency, layout): at 0 ms crossfade alone won layouts 1005-1009, latest alone 1000-1001;
    # at 100 ms latest alone won 1003
    assert (choice.only_chosen, choice.only_runner_up) == (5, 3)
    assert 0.05 < choice.paired_p_value <= 1.0


def test_a_tie_goes_to_latest_and_no_async_row_chooses_nothing() -> None:
    tie = [_row("async-ensemble", 0.0, [True, False]), _row("async-latest", 0.0, [False, True])]
    assert chosen_aggregator(tie).chosen == "latest"
    assert chosen_aggregator([_row("sync", 0.0, [True])]) is None


def test_a_condition_whose_trials_are_all_recorded_is_read_back(tmp_path) -> None:
    report = tmp_path / "evaluation.json"
    assert not complete_run(report, "open_drawer", 20)  # no run yet
    report.write_text(json.dumps({"summary": {"graph": {"open_drawer": {"trials": 12}}}}))
    assert not complete_run(report, "open_drawer", 20)  # interrupted: it resumes
    assert not complete_run(report, "clean_up", 12)
    report.write_text(json.dumps({"summary": {"graph": {"open_drawer": {"trials": 20}}}}))
    assert complete_run(report, "open_drawer", 20)


def test_shared_launch_arguments_reach_every_condition_and_a_resume_must_match(tmp_path) -> None:
    """--launch-argument (the robot's 100 ms watchdog, say) for every condition; never one a condition
    sets; an output run with other arguments is refused, not mixed into."""
    from fedvla.bench.realtime import launch_arguments, shared_launch_arguments
    from fedvla.config import ConfigError

    assert shared_launch_arguments(["rtde_watchdog_hz:=10"]) == {"rtde_watchdog_hz": "10"}
    with pytest.raises(ConfigError, match="chunk_aggregator is set by each condition"):
        shared_launch_arguments(["chunk_aggregator:=ensemble"])
    with pytest.raises(ConfigError, match="name:=value"):
        shared_launch_arguments(["rtde_watchdog_hz=10"])
    report = tmp_path / "evaluation.json"
    ran = launch_arguments("sync", 0.1)
    report.write_text(json.dumps({"summary": {"graph": {"open_drawer": {"trials": 20}}},
                                  "provenance": {"launch_arguments": ran}}))
    assert complete_run(report, "open_drawer", 20, ran)
    with pytest.raises(ConfigError, match="ran with launch arguments"):
        complete_run(report, "open_drawer", 20, {"rtde_watchdog_hz": "10", **ran})
    record = {"command": "c", "commit": "x", "date": "d", "machine": {}, "task": "open_drawer", "trials": 1,
              "checkpoint": "k", "rows": [], "launch_arguments": {"rtde_watchdog_hz": "10"}}
    assert "Every condition also with `rtde_watchdog_hz:=10`." in report_markdown(record)


def test_the_shipped_default_aggregator_is_the_one_the_measurements_chose() -> None:
    """config/graph.yaml's launch default and ControllerConfig's default are the aggregator
    results/realtime chose: a new measurement that chooses differently fails here until they move."""
    from fedvla.graph import Graph, find_config_dir
    from fedvla.robot.controller import ControllerConfig

    if not RESULTS.is_file():
        pytest.skip("no results/realtime/bench.json (an installed copy without the repository's results)")
    record = json.loads(RESULTS.read_text())
    chosen = record["choice"]["chosen"]
    assert ControllerConfig().chunk_aggregator.value == chosen
    assert Graph.load(find_config_dir()).arguments["chunk_aggregator"].default == chosen
    assert f"**{chosen}**" in report_markdown(record)


def test_the_goals_are_judged_from_the_records_figures() -> None:
    def row(condition, latency, successes, time_s):
        return {"condition": condition, "latency_s": latency, "successes": successes, "trials": 20,
                "time_to_success_s": time_s}

    def replayed(latency, aggregator, jump, jerk, overlaps=10):
        return {"latency_s": latency, "aggregator": aggregator, "overlapping_hand_overs": overlaps,
                "largest_reference_jump_mrad": jump, "setpoint_jerk_rms": jerk}

    record = {"rows": [row("sync", 0.0, 10, 3.0), row("async-latest", 0.0, 12, 2.5),
                       row("sync", 0.3, 0, None), row("async-latest", 0.3, 7, 4.0)],
              "choice": {"chosen": "latest"},
              "replays": {"summaries": [replayed(0.0, "latest", 90.0, 100.0), replayed(0.0, "crossfade", 20.0, 120.0),
                                        replayed(0.0, "ensemble", 60.0, 20.0),
                                        *(replayed(0.3, a, 5.0, 5.0, overlaps=0) for a in ("latest", "crossfade"))]}}
    lines = "\n".join(goal_lines(record))
    # 7/20 at 300 ms against 10/20 at 0 ms: within noise
    assert "async-latest 7/20 against sync 10/20: holds" in lines
    assert "2.50 s against sync 3.00 s, 16.7 % faster (means over the successful trials only): does not hold" in lines
    assert "Completion time at 300 ms** (async at least 20 % faster): cannot be compared: sync had no successful" in lines
    assert "crossfade** (at least 3x lower than latest): largest jump 4.5x lower, setpoint jerk 0.83x lower: " \
           "holds for the jump, not for the jerk." in lines
    assert "ensemble** (at least 3x lower than latest): largest jump 1.5x lower, setpoint jerk 5.00x lower: holds." in lines
    assert "Smoothness at 300 ms**: no chunk overlapped" in lines
