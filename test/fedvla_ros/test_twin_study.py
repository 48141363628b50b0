"""The twin study end to end at smoke size (``fedvla twin study --scale smoke``): demonstrations
through the graph, federated training with one robot per task, every task's checkpoint evaluated
in closed loop through the graph (recorded) and in-process, and the report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

pytestmark = pytest.mark.ros


@pytest.mark.timeout(1500)  # demos, training and two graph evaluations on 2 cores: minutes
def test_the_smoke_twin_study_runs_end_to_end(tmp_path) -> None:
    output = tmp_path / "study"
    fedvla = Path(sys.executable).with_name("fedvla")
    run = subprocess.run([str(fedvla), "twin", "study", "--scale", "smoke", "--output", str(output)],
                         capture_output=True, text=True, timeout=1450)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (output / "study.md").read_text()
    for task in ("open_drawer", "clean_up"):
        assert f"| graph | {task} |" in report and f"| in-process | {task} |" in report
        evaluation = json.loads((output / "methods" / "wo_iosp" / "evaluation" / task / "evaluation.json").read_text())
        (trial,) = evaluation["trials"]["graph"]
        assert trial["steps"] >= 1 and Path(trial["bag"], "metadata.yaml").is_file()  # recorded
        assert evaluation["provenance"]["seeds"] == [1000]
    demos = json.loads((output / "demos" / "demos.json").read_text())
    assert {t: s["episodes"] for t, s in demos["summary"].items()} == {"open_drawer": 3, "clean_up": 3}
    assert json.loads((output / "run.json").read_text())["scale"]["name"] == "smoke"
