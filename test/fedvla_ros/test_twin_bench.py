"""``fedvla bench twin`` end to end: the real-time factor with rendering, and the loop's latency
measured through the graph (a small policy drives the twin), written to ``bench.json`` and summarised
by ``fedvla twin results``. Figures only: nothing here asserts a speed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

pytestmark = pytest.mark.ros


@pytest.mark.timeout(600)  # a cold twin and policy start slowly on 2 cores
def test_bench_twin_measures_the_loop_from_frame_stamp_to_setpoint(tmp_path) -> None:
    from support.twin import train_small_twin_checkpoint

    from fedvla.twin.results import write_twin_results

    checkpoint = train_small_twin_checkpoint(tmp_path / "policy")
    output = tmp_path / "bench"
    fedvla = Path(sys.executable).with_name("fedvla")
    run = subprocess.run([str(fedvla), "bench", "twin", "--seconds", "1", "--fps", "10", "--task", "open_drawer",
                          "--checkpoint", str(checkpoint), "--latency-seconds", "4", "--output", str(output)],
                         capture_output=True, text=True, timeout=560)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    bench = json.loads((output / "bench.json").read_text())
    end_to_end = bench["latency"]["end_to_end_ms"]
    assert end_to_end["chunks"] >= 5 and 0 < end_to_end["p50"] <= end_to_end["p95"], bench["latency"]
    assert bench["latency"]["policy_compute_ms"]["n"] >= 5 and bench["real_time_factor"] > 0
    demos = tmp_path / "demos"
    demos.mkdir()
    (demos / "demos.json").write_text(json.dumps({"episodes": [], "summary": {}, "demonstrations_per_minute": 0.0}))
    text = write_twin_results(tmp_path / "results", demos, bench_dir=output).read_text()
    assert f"{end_to_end['p50']:.1f} / {end_to_end['p95']:.1f} | p95 <= 150" in text
