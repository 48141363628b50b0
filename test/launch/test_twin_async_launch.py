"""Real-time chunk execution through the graph (issue 22): ``twin.launch.py`` with the policy on
the async schedule, every chunk held back by an injected latency, and the driver cross-fading
overlapping chunks. The arm moves, no chunk is refused, and the driver reports its merges and
its queue.

launch_pytest and launch_ros come from ../shared/vendor (or a ROS 2 install); without them these
tests skip.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

VENDOR_REASON = "launch_pytest/launch_ros are not installed: they come from ../shared/vendor (or a ROS 2 install)"
launch_pytest = pytest.importorskip("launch_pytest", reason=VENDOR_REASON)
pytest.importorskip("launch_ros", reason=VENDOR_REASON)
pytest.importorskip("mujoco")
pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from fedvla.twin.ur_controller import free_loopback_host  # noqa: E402
from support.twin_ros import Watcher, refused_counts  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def async_setup(tmp_path_factory):
    from support.twin import train_small_twin_checkpoint

    try:
        host = free_loopback_host()
    except OSError as error:
        pytest.skip(f"no loopback address with the UR ports free: {error}")
    return train_small_twin_checkpoint(tmp_path_factory.mktemp("twin_async")), host


@launch_pytest.fixture(scope="module")
def async_launch(async_setup):
    checkpoint, host = async_setup
    source = PythonLaunchDescriptionSource(str(REPO / "launch" / "twin.launch.py"))
    arguments = {"checkpoint": str(checkpoint), "instruction": "open the drawer", "task": "open_drawer",
                 "robot_ip": host, "twin_fps": "10", "execute": "true", "inference_mode": "async",
                 "injected_latency": "0.05", "chunk_aggregator": "crossfade"}
    return LaunchDescription([IncludeLaunchDescription(source, launch_arguments=arguments.items()),
                              launch_pytest.actions.ReadyToTest()])


@pytest.mark.timeout(600)  # a cold twin (MuJoCo, the renderer, the policy) starts slowly on 2 cores
@pytest.mark.launch(fixture=async_launch)
def test_async_chunks_with_latency_move_the_arm_and_none_is_refused(rclpy_context) -> None:
    ros = Watcher(rclpy_context)
    try:
        ros.until(lambda: len(ros.samples) > 10 and ros.chunks > 5, 240, "joint states and the policy's chunks")
        refused_before = ros.running()
        moving_from = time.monotonic()
        ros.until(lambda: ros.motion(moving_from) > 1e-4, 30, "the arm moving under the policy")
        ros.spin(3.0)
        ros.spin(1.2)  # the 1 Hz diagnostics
        refused = {k: n - refused_before.get(k, 0) for k, n in refused_counts(ros.driver).items()}
        assert not any(refused.values()), f"chunks refused: {ros.driver}"
        assert int(ros.driver["chunk_merges"]) > 5, ros.driver
        assert "queue_ms" in ros.driver and "queue_ran_dry" in ros.driver, ros.driver
    finally:
        ros.close()
