"""`fedvla launch`: the command lines it builds and how it runs and stops processes."""
import io
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedvla.graph import Graph, GraphError, NodeSpec, ResolvedNode
from fedvla.runner import ProfileRunner, RunnerError, find_executable, node_command, parameter_literal

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("value", ["123456", "", "it's", "true", "1.5", True, False, 3, 2.5, "a b", ["corner", "it's"], [1.5, 2.0], []])
def test_parameter_literals_keep_their_type_through_yaml(value) -> None:
    # rcl parses `-p name:=value` with YAML: a serial number must stay a string.
    assert yaml.safe_load(parameter_literal(value)) == value
    assert type(yaml.safe_load(parameter_literal(value))) is type(value)


def test_node_command_matches_ros2_run_conventions() -> None:
    spec = NodeSpec(key="k", package="fedvla_ros", executable="camera_node", name="corner", namespace="camera",
                    remappings=(("~/color/image_raw", "/rgb"),))
    node = ResolvedNode(spec=spec, parameter_files=(Path("/cfg/a.yaml"),), parameter_values={"serial": "0042"},
                        arguments=("-x",))
    assert node_command(Path("/p/lib/fedvla_ros/camera_node"), node) == [
        "/p/lib/fedvla_ros/camera_node", "-x", "--ros-args", "-r", "__node:=corner", "-r", "__ns:=/camera",
        "--params-file", "/cfg/a.yaml", "-p", "serial:='0042'", "-r", "~/color/image_raw:=/rgb"]


def _fake_install(tmp_path: Path, package: str, executable: str, script: str) -> Path:
    path = tmp_path / "lib" / package / executable
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_find_executable_searches_ament_prefixes(tmp_path) -> None:
    exe = _fake_install(tmp_path, "pkg", "tool", "print('hi')")
    assert find_executable("pkg", "tool", [str(tmp_path)]) == exe
    assert find_executable("pkg", "other", [str(tmp_path)]) is None


def _graph(tmp_path: Path, script: str) -> Graph:
    return Graph(_raw_graph(tmp_path, script), tmp_path)


def _raw_graph(tmp_path: Path, script: str) -> dict:
    _fake_install(tmp_path, "demo_pkg", "talker", script)
    return {
        "arguments": {"launch_rviz": {"type": "bool", "default": True, "description": "rviz"}},
        "nodes": {
            "talker": {"package": "demo_pkg", "executable": "talker", "name": "talker"},
            "rviz": {"package": "rviz2", "executable": "rviz2_not_installed", "name": "rviz2", "if": "launch_rviz"},
        },
        "profiles": {"demo": {"description": "d", "nodes": ["talker", "rviz"]}},
    }


# What a node's main() does once constructed (fedvla_ros.node_main): tell the runner it is up.
REPORT_UP = "from fedvla.readiness import report_ready; report_ready('/talker')\n"


def test_runner_prefixes_output_skips_optional_nodes_and_stops_on_sigint(tmp_path) -> None:
    script = ("import signal, sys, time\n" + REPORT_UP +
              "print('up', sys.argv[1:4], flush=True)\n"
              "signal.signal(signal.SIGINT, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
              "time.sleep(60)\n")
    out = io.StringIO()
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    with ProfileRunner(_graph(tmp_path, script), "demo", env=env, output=out) as runner:
        assert len(runner.running) == 1 and "rviz2" in runner.skipped[0]
        runner.wait(duration_s=1.0)
    assert runner.running[0].process.returncode == 0
    assert "[/talker] up ['--ros-args', '-r', '__node:=talker']" in out.getvalue()
    assert "[/talker] bye" in out.getvalue()


def _fedvla_launch_until_up(tmp_path: Path, script: str):
    """``fedvla launch demo`` in a process of its own, its node running ``script``; returns once
    the node printed 'up' (with the lines read so far)."""
    import subprocess

    (tmp_path / "graph.yaml").write_text(yaml.safe_dump(_raw_graph(tmp_path, script)))
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    launch = subprocess.Popen([sys.executable, "-m", "fedvla.cli", "--config-dir", str(tmp_path), "launch", "demo",
                               "--duration", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    lines = []
    # (the node's own line, "[/talker] up": the runner's status lines may say "up" before it is)
    while time.monotonic() < deadline and not any(line.rstrip().endswith("] up") for line in lines):
        lines.append(launch.stdout.readline())
    return launch, lines


def test_fedvla_launch_stops_its_nodes_on_sigterm(tmp_path) -> None:
    """``timeout``, systemd and ``docker stop`` send SIGTERM: the nodes must not be orphaned."""
    import signal

    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGINT, lambda *a: (print('bye', flush=True), sys.exit(0)))\n" + REPORT_UP +
              "print('up', flush=True)\n"  # only once it handles SIGINT: the test signals right after
              "time.sleep(60)\n")
    launch, lines = _fedvla_launch_until_up(tmp_path, script)
    launch.send_signal(signal.SIGTERM)
    out, _ = launch.communicate(timeout=30)
    assert "[/talker] bye" in "".join(lines) + out  # the node got its SIGINT and exited cleanly


def test_nodes_end_when_fedvla_launch_dies(tmp_path) -> None:
    """SIGKILL leaves the runner no chance to stop its nodes: each node asked the kernel for a
    SIGTERM when its parent dies (what fedvla_ros.node_main does), and handles it."""
    import signal

    marker = tmp_path / "node_stopped"
    script = ("import signal, sys, time\n"
              "from fedvla.supervision import exit_with_parent\n"
              f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').write('bye'), sys.exit(0)))\n"
              "assert exit_with_parent()\n" + REPORT_UP +
              "print('up', flush=True)\n"
              "time.sleep(60)\n")
    launch, lines = _fedvla_launch_until_up(tmp_path, script)
    launch.send_signal(signal.SIGKILL)
    launch.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "".join(lines)


def test_a_node_whose_launch_is_already_gone_does_not_start() -> None:
    import subprocess

    from fedvla.supervision import PARENT_PID_ENV, with_parent_pid

    assert with_parent_pid({})[PARENT_PID_ENV] == str(os.getpid())
    # In a child of its own: the death signal it asks for is a setting of the process that asks.
    check = ("import os; from fedvla.supervision import PARENT_PID_ENV as K, exit_with_parent as e\n"
             "print(e({K: str(os.getppid())}), e({K: str(os.getpid())}), e({}))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    # its parent; a pid that is not its parent (that parent has died since); not said (ros2 run)
    assert result.stdout.split() == ["True", "False", "True"], result.stderr


def test_duration_counts_from_the_moment_every_node_is_up(tmp_path) -> None:
    """A node that takes a while to load its models still runs for the whole duration."""
    script = ("import signal, sys, time\n"
              "time.sleep(2.0)\n" + REPORT_UP +
              "up = time.monotonic()\n"
              "signal.signal(signal.SIGINT, lambda *a: (print(f'ran {time.monotonic() - up:.2f} s', flush=True), "
              "sys.exit(0)))\n"
              "time.sleep(60)\n")
    out = io.StringIO()
    ticks: list[float] = []
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    with ProfileRunner(_graph(tmp_path, script), "demo", env=env, output=out) as runner:
        assert runner.not_up() == ["/talker"]
        runner.wait(duration_s=1.0, on_tick=ticks.append, tick_s=0.05)
        assert runner.not_up() == []
    ran_s = float(out.getvalue().split("ran ")[1].split(" s")[0])
    assert ran_s >= 1.0  # counted from "up", not from the start of the process (2 s earlier)
    assert ticks[0] == 0.0 and ticks[-1] >= 1.0


def test_a_node_marked_ends_launch_ends_the_run_when_it_exits(tmp_path) -> None:
    """Like launch's on_exit=Shutdown(): the replay evaluator finishes, the replay is over."""
    raw = _raw_graph(tmp_path, "import time\n" + REPORT_UP + "time.sleep(60)\n")
    _fake_install(tmp_path, "demo_pkg", "reporter", "import time\nfrom fedvla.readiness import report_ready\n"
                  "report_ready('/reporter')\ntime.sleep(1.0)\nprint('report written', flush=True)\n")
    raw["nodes"]["reporter"] = {"package": "demo_pkg", "executable": "reporter", "name": "reporter",
                                "ends_launch": True}
    raw["profiles"]["demo"]["nodes"].append("reporter")
    out = io.StringIO()
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    started = time.monotonic()
    with ProfileRunner(Graph(raw, tmp_path), "demo", env=env, output=out) as runner:
        assert runner.wait(duration_s=30.0) is False
        assert runner.finished() == ["/reporter"]
    assert time.monotonic() - started < 20.0 and "[/reporter] report written" in out.getvalue()
    with pytest.raises(GraphError, match="ends_launch: 'soon' is not a boolean"):
        raw["nodes"]["reporter"]["ends_launch"] = "soon"
        Graph(raw, tmp_path)


def test_runner_names_the_nodes_that_never_come_up(tmp_path) -> None:
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    with ProfileRunner(_graph(tmp_path, "import time; time.sleep(60)"), "demo", env=env,
                       output=io.StringIO()) as runner:
        with pytest.raises(RunnerError, match=r"^/talker not up after 0.5 s"):
            runner.wait(duration_s=1.0, startup_timeout_s=0.5)


def test_runner_reports_a_failing_node(tmp_path) -> None:
    env = dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))
    with ProfileRunner(_graph(tmp_path, "import sys; sys.exit(3)"), "demo", env=env, output=io.StringIO()) as runner:
        with pytest.raises(RunnerError, match="node /talker exited with status 3"):
            runner.wait(duration_s=20.0)


def test_runner_refuses_a_missing_executable(tmp_path) -> None:
    graph = _graph(tmp_path, "")
    (tmp_path / "lib" / "demo_pkg" / "talker").unlink()
    with pytest.raises(RunnerError, match="demo_pkg/talker is not installed: run .ci/setup"):
        ProfileRunner(graph, "demo", env=dict(os.environ, AMENT_PREFIX_PATH=str(tmp_path))).start()
