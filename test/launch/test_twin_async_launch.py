"""Real-time chunk execution through the graph (issue 22): ``twin.launch.py`` with the policy on
the async schedule, every chunk held back by an injected latency, and the driver cross-fading
overlapping chunks. The arm moves, no chunk is refused, and the driver reports its merges and
its queue.

Without launch_pytest and launch_ros (../shared/vendor, or a ROS 2 install) these tests skip.
"""
from __future__ import annotations

import pytest

from support.twin_launch import checkpoint_and_host, launch_pytest, twin_launch_description
from support.twin_ros import Watcher

pytestmark = pytest.mark.ros


@launch_pytest.fixture(scope="module")
def async_launch(tmp_path_factory):
    checkpoint, host = checkpoint_and_host(tmp_path_factory.mktemp("twin_async"))
    return twin_launch_description({"checkpoint": str(checkpoint), "instruction": "open the drawer",
                                    "task": "open_drawer", "robot_ip": host, "twin_fps": "10", "execute": "true",
                                    "inference_mode": "async", "injected_latency": "0.05",
                                    "chunk_aggregator": "crossfade"})


@pytest.mark.timeout(600)  # a cold twin (MuJoCo, the renderer, the policy) starts slowly on 2 cores
@pytest.mark.launch(fixture=async_launch)
def test_async_chunks_with_latency_move_the_arm_and_none_is_refused(rclpy_context) -> None:
    ros = Watcher(rclpy_context)
    try:
        ros.until(lambda: len(ros.samples) > 10 and ros.chunks > 5, 240, "joint states and the policy's chunks")
        ros.moves_without_refusals(ros.running(), 3.0)
        assert int(ros.driver["chunk_merges"]) > 5, ros.driver
        assert "queue_ms" in ros.driver and "queue_ran_dry" in ros.driver, ros.driver
    finally:
        ros.close()
