"""The replay profile end to end: a bag recorded from a policy's closed loop in Meta-World plays
on the bag's clock through the policy node; the evaluator writes the report and ends the launch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("metaworld")

from support.replay import closed_loop_bag  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return closed_loop_bag(tmp_path_factory.mktemp("replay"))


def replay_arguments(checkpoint: Path, bag: Path, output: Path) -> list[str]:
    # Meta-World runs at 80 Hz: the policy at that rate, the bag at a tenth of real time so that a
    # busy 2-core machine keeps up.
    return [f"bag:={bag}", f"checkpoint:={checkpoint}", f"replay_output:={output}", "policy_rate:=80.0",
            "replay_rate:=0.1"]


def check_report(output: Path) -> dict:
    saved = json.loads((output / "replay.json").read_text())
    metrics = saved["metrics"]
    # 40 steps of 12.5 ms: 0.5 s of bag, so ~40 policy ticks at 80 Hz on the bag's clock
    assert metrics["steps"] >= 10, metrics
    assert metrics["horizon"] == 4 and metrics["action_dim"] == 4
    assert metrics["latency_ms"]["median"] > 0  # the policy node's compute time, carried by ActionChunk
    assert all(v >= 0 for v in metrics["first_action_mae"])
    assert saved["details"]["through"] == "ROS graph (replay profile)"
    assert (output / "replay.png").stat().st_size > 10_000 and "| action_3 |" in (output / "replay.md").read_text()
    return saved


@pytest.mark.timeout(480)  # its subprocess may take 380 s; pytest.ini's 300 s would cut it short
def test_fedvla_launch_replay_writes_the_report_and_ends(recording, tmp_path) -> None:
    checkpoint, bag = recording
    cli = Path(sys.prefix) / "bin" / "fedvla"
    result = subprocess.run([str(cli), "launch", "replay", *replay_arguments(checkpoint, bag, tmp_path / "report")],
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "predictions compared" in output and "played 141 messages" in output
    per_step = check_report(tmp_path / "report")["per_step"]
    # The checkpoint that drove the closed loop sees, on the bag's clock, the inputs it saw then: at
    # the ticks that fall on a replanning step its first action is the one it issued and executed.
    same = [abs(p[0][0] - r[0][0]) < 1e-4 for p, r in zip(per_step["predicted"], per_step["recorded"])]
    assert sum(same) >= 3, same
