"""The launch files in launch/, started through launch_ros by launch_pytest, and the installed
``ros2 launch fedvla_bringup sim.launch.py`` seen from ``ros2 topic``.

launch_pytest, launch_ros and the ros2 CLI are not on PyPI: .ci/setup installs them from
../shared/vendor when it exists; without them these tests skip.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.ros import wait_for_messages

VENDOR_REASON = "launch_pytest/launch_ros are not installed: they come from ../shared/vendor (or a ROS 2 install)"
launch_pytest = pytest.importorskip("launch_pytest", reason=VENDOR_REASON)
pytest.importorskip("launch_ros", reason=VENDOR_REASON)

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from fedvla import topics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros


def include(launch_file: str, **arguments: str) -> LaunchDescription:
    source = PythonLaunchDescriptionSource(str(REPO / "launch" / launch_file))
    return LaunchDescription([IncludeLaunchDescription(source, launch_arguments=arguments.items()),
                              launch_pytest.actions.ReadyToTest()])


@launch_pytest.fixture
def sim_launch():
    return include("sim.launch.py", launch_rviz="false")


@pytest.mark.launch(fixture=sim_launch)
def test_sim_launch_publishes_all_three_cameras(rclpy_context) -> None:
    for camera in ("/camera/corner", "/camera/top", "/camera/shoulder"):
        image = wait_for_messages(rclpy_context, topics.node_topic(camera, topics.COLOR_IMAGE), Image, count=2)[-1]
        assert (image.width, image.height, image.encoding) == (128, 128, "rgb8")
        info = wait_for_messages(rclpy_context, topics.node_topic(camera, topics.ALIGNED_DEPTH_INFO), CameraInfo)[0]
        assert info.k[0] > 0


@launch_pytest.fixture
def mock_robot_launch():
    return include("real_robot.launch.py", use_mock_hardware="true", launch_rviz="false")


@pytest.mark.launch(fixture=mock_robot_launch)
def test_real_robot_launch_with_mock_hardware_simulates_the_d435(rclpy_context) -> None:
    image = wait_for_messages(rclpy_context, "/camera/camera/" + topics.COLOR_IMAGE, Image)[0]
    assert (image.width, image.height) == (640, 480)


@pytest.fixture(scope="module")
def realsense_recording(tmp_path_factory):
    from support.realsense_software_device import SoftwareCamera, make_frames

    frames = make_frames(8, seed=9)
    return SoftwareCamera().record(tmp_path_factory.mktemp("replay") / "d435.db3", frames), frames


@launch_pytest.fixture
def camera_replay_launch(realsense_recording):
    return include("camera_replay.launch.py", bag=str(realsense_recording[0]), launch_rviz="false")


@pytest.mark.launch(fixture=camera_replay_launch)
def test_camera_replay_launch_plays_the_recording(rclpy_context, realsense_recording) -> None:
    images = wait_for_messages(rclpy_context, "/camera/camera/" + topics.COLOR_IMAGE, Image, count=3)
    injected = {f.rgb.tobytes() for f in realsense_recording[1]}
    assert all(bytes(m.data) in injected for m in images)


def ros2(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    ros2_cli = Path(sys.prefix) / "bin" / "ros2"
    if not ros2_cli.exists():
        pytest.skip(f"the ros2 CLI is not installed: {VENDOR_REASON}")
    return subprocess.run([str(ros2_cli), *args], capture_output=True, text=True, timeout=timeout_s)


def test_ros2_launch_sim_is_seen_by_ros2_topic() -> None:
    ros2_cli = Path(sys.prefix) / "bin" / "ros2"
    if not ros2_cli.exists():
        pytest.skip(f"the ros2 CLI is not installed: {VENDOR_REASON}")
    launch = subprocess.Popen([str(ros2_cli), "launch", "fedvla_bringup", "sim.launch.py"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        expected = {topics.node_topic(c, rel) for c in ("/camera/corner", "/camera/top", "/camera/shoulder")
                    for rel in topics.CAMERA_TOPICS}
        expected |= {topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE), topics.JOINT_STATES,
                     topics.TF, topics.ROBOT_DESCRIPTION}
        deadline, listed = time.monotonic() + 120, set()  # the scene parser loads its models: slow on a busy machine
        while not expected <= listed and time.monotonic() < deadline:
            # --no-daemon: a test must not leave a ros2 daemon running behind it. Each listing is a
            # fresh node's discovery over its spin time, which can miss a publisher on a busy
            # machine (CI missed one of 22): a topic seen once was advertised, so listings add up.
            listed |= set(ros2("topic", "list", "--no-daemon", "--spin-time", "2").stdout.split())
            time.sleep(0.5)
        assert expected <= listed, f"missing topics: {sorted(expected - listed)}"
        for camera in ("/camera/corner", "/camera/top", "/camera/shoulder"):
            # The type is given: without a daemon, a fresh echo node may not have discovered it yet.
            echo = ros2("topic", "echo", "--once", "--no-daemon", topics.node_topic(camera, topics.COLOR_INFO),
                        "sensor_msgs/msg/CameraInfo", "--field", "width")
            assert echo.returncode == 0, echo.stderr
            assert echo.stdout.split()[0] == "128"
    finally:
        # Like Ctrl-C in a terminal: SIGINT reaches ros2 launch and every node (the process
        # group), and launch forwards it to the nodes once more.
        os.killpg(launch.pid, signal.SIGINT)
        out, _ = launch.communicate(timeout=60)
    assert launch.returncode == 0, out
    from fedvla.graph import Graph, find_config_dir

    started = len(Graph.load(find_config_dir()).resolve("sim"))  # cameras, scene parser, arm driver, pattern
    assert started == 6 and out.count("process has finished cleanly") == started, out


@pytest.mark.timeout(400)  # training the checkpoint, then a launch of up to 240 s
def test_ros2_launch_replay_reports_and_ends_by_itself(tmp_path) -> None:
    """The README's offline evaluation: ros2 launch fedvla_bringup replay.launch.py bag:=... checkpoint:=..."""
    import json

    pytest.importorskip("metaworld")
    from support.replay import closed_loop_bag

    checkpoint, bag = closed_loop_bag(tmp_path, steps=24)
    report = tmp_path / "report"
    result = ros2("launch", "fedvla_bringup", "replay.launch.py", f"bag:={bag}", f"checkpoint:={checkpoint}",
                  f"replay_output:={report}", "policy_rate:=80.0", "replay_rate:=0.1", timeout_s=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "predictions compared" in output  # the evaluator finished; its exit ended the launch
    metrics = json.loads((report / "replay.json").read_text())["metrics"]
    assert metrics["steps"] >= 5 and metrics["latency_ms"]["median"] > 0


def _node_processes() -> list:
    """This test run's node processes (our executables, in this run's ROS domain)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if ("/lib/fedvla_ros/" in cmdline and process.status() != psutil.STATUS_ZOMBIE  # exited, not reaped
                    and process.environ().get("ROS_DOMAIN_ID") == os.environ["ROS_DOMAIN_ID"]):
                found.append((process, cmdline))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _gone_within(timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while (left := _node_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.timeout(400)
def test_a_launch_that_fails_part_way_leaves_no_node_behind(tmp_path) -> None:
    """The real-robot profile (mock hardware) plus a node whose package does not exist: launch
    raises while the camera and the arm driver are starting. Whether launch then ends by itself or
    is sent SIGTERM, no node of it survives; the arm driver least of all."""
    ros2_cli = Path(sys.prefix) / "bin" / "ros2"
    if not ros2_cli.exists():
        pytest.skip(f"the ros2 CLI is not installed: {VENDOR_REASON}")
    assert _node_processes() == []
    broken = tmp_path / "broken.launch.py"
    broken.write_text(
        "from launch_ros.actions import Node\n"
        "from fedvla_bringup.graph_launch import profile_launch_description\n\n\n"
        "def generate_launch_description():\n"
        "    description = profile_launch_description('real_robot')\n"
        "    description.add_action(Node(package='fedvla_no_such_package', executable='nothing', name='broken'))\n"
        "    return description\n")
    launch = subprocess.Popen([str(ros2_cli), "launch", str(broken), "use_mock_hardware:=true", "launch_rviz:=false"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # a loaded machine takes a while to start launch_ros
        while time.monotonic() < deadline and launch.poll() is None and len(_node_processes()) < 2:
            time.sleep(0.2)
        if launch.poll() is None:
            time.sleep(2.0)  # let launch reach the broken node after starting the others
            launch.send_signal(signal.SIGTERM)  # as a timeout or systemd would end it
        output, _ = launch.communicate(timeout=60)
        left = _gone_within(30.0)
    finally:
        for process, _ in _node_processes():
            process.kill()
    assert "fedvla_no_such_package" in output, output[-3000:]  # the launch did hit the error
    assert left == [], f"nodes outlived their launch: {[cmdline[:120] for _, cmdline in left]}\n{output[-3000:]}"


@pytest.mark.timeout(200)
def test_ros2_launch_refuses_an_argument_its_profile_does_not_use() -> None:
    result = ros2("launch", "fedvla_bringup", "replay.launch.py", "record:=true", "bag:=/nope", timeout_s=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "fedvla replay: record: the replay profile does not use this argument" in output, output[-3000:]
    assert "process started" not in output  # refused before any node started


@pytest.mark.timeout(400)
def test_a_missing_rviz_is_one_warning_and_the_robot_runs(tmp_path) -> None:
    """No RViz here (no full ROS 2 install): real_robot with its default launch_rviz:=true warns once,
    starts the camera and the driver, and stops them on SIGINT like any launch."""
    from fedvla_bringup.graph_launch import package_installed

    if package_installed("rviz2"):
        pytest.skip("rviz2 is installed here: nothing to warn about")
    ros2_cli = Path(sys.prefix) / "bin" / "ros2"
    if not ros2_cli.exists():
        pytest.skip(f"the ros2 CLI is not installed: {VENDOR_REASON}")
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:  # a file, not a pipe: nothing blocks the launch while we wait
        launch = subprocess.Popen([str(ros2_cli), "launch", "fedvla_bringup", "real_robot.launch.py",
                                   "use_mock_hardware:=true"], stdout=log, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
    up = ("sim camera streaming", "(simulated arm) at 125 Hz")  # the camera's and the driver's startup lines
    try:
        deadline = time.monotonic() + 150
        while (time.monotonic() < deadline and launch.poll() is None
               and not all(line in log_path.read_text() for line in up)):
            time.sleep(0.5)
        running = launch.poll() is None
        os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C in the launch's terminal
        launch.wait(timeout=120)
        output = log_path.read_text()
        left = _gone_within(30.0)
    finally:
        for process, _ in _node_processes():
            process.kill()
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    assert running, output[-3000:]
    assert "Caught exception" not in output, output[-3000:]
    assert output.count("/rviz2 does not start: rviz2 is not installed") == 1, output[-3000:]
    assert "launch_rviz:=false silences this" in output
    assert left == []
