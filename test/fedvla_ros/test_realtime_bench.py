"""``fedvla bench realtime`` end to end: each condition is a twin evaluation through the graph with
its own launch arguments (sync: the arm waits, chunks from where it is; async: time-aligned and
merged), its driver's figures read back into ``bench.json`` and plotted. Figures only: nothing
here asserts a speed or a success rate."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

pytestmark = pytest.mark.ros


def test_the_conditions_set_the_policy_schedule_and_the_drivers_execution() -> None:
    from fedvla.bench.realtime import condition_names, launch_arguments

    assert condition_names() == ["sync", "async-latest", "async-crossfade", "async-ensemble"]
    assert launch_arguments("sync", 0.3) == {"inference_mode": "sync", "time_aligned": "false",
                                             "chunk_aggregator": "latest", "injected_latency": "0.3"}
    assert launch_arguments("async-crossfade", 0.0)["chunk_aggregator"] == "crossfade"
    with pytest.raises(ValueError, match="unknown condition"):
        launch_arguments("async-median", 0.1)


@pytest.mark.timeout(600)  # two cold twins and policies start slowly on 2 cores
def test_bench_realtime_runs_each_condition_through_the_graph(tmp_path) -> None:
    from support.twin import failure_report, graph_log_digest, train_small_twin_checkpoint

    checkpoint = train_small_twin_checkpoint(tmp_path / "policy")
    output = tmp_path / "bench"
    fedvla = Path(sys.executable).with_name("fedvla")
    run = subprocess.run([str(fedvla), "bench", "realtime", "--checkpoint", str(checkpoint), "--trials", "1",
                          "--max-steps", "10", "--latencies", "0.1", "--conditions", "sync", "async-crossfade",
                          "--output", str(output)], capture_output=True, text=True, timeout=560)
    assert run.returncode == 0, failure_report(run, output)
    bench = json.loads((output / "bench.json").read_text())
    assert [(r["condition"], r["latency_s"], r["trials"]) for r in bench["rows"]] == [
        ("sync", 0.1, 1), ("async-crossfade", 0.1, 1)]
    for condition, merges in (("sync_100ms", "0"), ("async-crossfade_100ms", None)):
        provenance = json.loads((output / condition / "evaluation.json").read_text())["provenance"]
        assert provenance["launch_arguments"]["injected_latency"] == "0.1"
        driver = provenance["driver_diagnostics"]
        # the arm moved under the policy
        assert float(driver["setpoint_jerk_rms"]) > 0, f"{driver}\n{graph_log_digest(output / condition)}"
        if merges is not None:
            assert driver["chunk_merges"] == merges, driver  # sync never merges
    assert (output / "realtime.png").stat().st_size > 0
    report = (output / "realtime.md").read_text()
    assert f"`{bench['command']}` at commit `{bench['commit']}`" in report
    assert "| sync | 100 | " in report and "| async-crossfade | 100 | " in report
    # the async trial's recorded chunks, replayed with each aggregator around its chunk boundaries
    replays = bench["replays"]
    assert replays["plotted"]["condition"] == "async-crossfade" and replays["plotted"]["chunks"] >= 1
    assert [(r["latency_s"], r["aggregator"]) for r in replays["summaries"]] == [
        (0.1, "latest"), (0.1, "crossfade"), (0.1, "ensemble")]
    assert all(r["trials"] == 1 for r in replays["summaries"])
    assert (output / "boundaries.png").stat().st_size > 0 and "## The same chunks through each aggregator" in report
    assert bench["choice"]["chosen"] == "crossfade" and "## The default aggregator" in report  # the only async row
    # run again: the finished conditions are read back, not run again, and their commit kept
    reports = {path: path.stat().st_mtime_ns for path in output.glob("*/evaluation.json")}
    again = subprocess.run([str(fedvla), "bench", "realtime", "--checkpoint", str(checkpoint), "--trials", "1",
                            "--max-steps", "10", "--latencies", "0.1", "--conditions", "sync", "async-crossfade",
                            "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, failure_report(again, output)
    assert {path: path.stat().st_mtime_ns for path in output.glob("*/evaluation.json")} == reports
    assert "read back, not run again" in again.stdout
    assert json.loads((output / "bench.json").read_text())["reused_runs"] == {
        "sync_100ms": bench["commit"], "async-crossfade_100ms": bench["commit"]}
