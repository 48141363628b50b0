"""Expert demonstrations through the graph (``fedvla twin demos``): the twin profile runs, the
expert's chunks go through the driver, the recorder node writes a rosbag2 episode, and the bag is
imported into a dataset that records the expert's action space."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

pytestmark = pytest.mark.ros


@pytest.mark.timeout(400)
def test_one_demonstration_is_recorded_and_imported(tmp_path) -> None:
    from fedvla.data.episodes import load_meta
    from fedvla.twin.expert import EXPERT_ACTION_SPACE

    output = tmp_path / "demos"
    fedvla = Path(sys.executable).with_name("fedvla")  # the console script beside this interpreter
    run = subprocess.run([str(fedvla), "twin", "demos", "--task", "open_drawer", "--episodes", "1",
                          "--first-seed", "3", "--output", str(output)], capture_output=True, text=True, timeout=380)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((output / "demos.json").read_text())
    (episode,) = record["episodes"]
    assert episode["success"], (episode, (output / "graph.log").read_text()[-4000:])
    assert 20 <= episode["steps"] <= 80
    assert len(episode["commit"]) == 40 and record["commits"] == [episode["commit"]]  # the code it ran
    assert "expert ceiling open_drawer: 1/1" in run.stdout
    meta = load_meta(output / "datasets" / "open_drawer")
    assert meta.action_space == EXPERT_ACTION_SPACE.to_dict()
    assert meta.camera_names == ["camera"] and meta.proprio_dim == 7
    assert (output / "bags" / "open_drawer_003" / "metadata.yaml").is_file()  # the first bag of a task is kept


@pytest.mark.timeout(120)
def test_a_recorder_that_misses_a_topic_is_started_again(tmp_path, monkeypatch, capsys) -> None:
    """A recorder that has not subscribed to every required topic in time is stopped, its partial
    bag removed, and a new one started; after RECORDER_STARTS tries the episode fails, clearly."""
    from fedvla.graph import Graph, find_config_dir
    from fedvla.runner import RunnerError
    from fedvla_ros.tools import twin_session

    monkeypatch.setattr(twin_session, "RECORDER_TIMEOUT_S", 0.1)

    class Ros:  # the graph as the recorder sees it: /joint_states missing for the first `misses` starts
        def __init__(self, misses: int) -> None:
            self.misses, self.waits = misses, 0

        def wait_for_subscriber(self, node, topics, timeout_s):
            self.waits += 1
            return ["/joint_states"] if self.waits <= self.misses else []

        def spin_for(self, seconds) -> None:
            pass

    graph = Graph.load(find_config_dir())
    with open(tmp_path / "graph.log", "w") as log:
        ros = Ros(misses=1)
        with twin_session.EpisodeRecorder(ros, graph, tmp_path / "bag", log) as recorder:
            assert ros.waits == 2 and recorder.process.poll() is None
        assert "starting it again" in capsys.readouterr().out
        ros = Ros(misses=twin_session.RECORDER_STARTS)
        with pytest.raises(RunnerError, match=rf"did not subscribe to /joint_states within 0.1 s, "
                                              rf"{twin_session.RECORDER_STARTS} times"):
            with twin_session.EpisodeRecorder(ros, graph, tmp_path / "bag2", log):
                pass
    assert not (tmp_path / "bag2").exists()
