"""What the twin's launch tests share: launch_pytest and the twin's dependencies (importing this
skips the test module without them), a small checkpoint with a free loopback address for the UR
ports, and ``twin.launch.py`` with given arguments.

launch_pytest and launch_ros come from ../shared/vendor (or a ROS 2 install).
"""
from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[2]


def checkpoint_and_host(directory: Path) -> tuple[Path, str]:
    """A small twin policy trained under ``directory``, and a loopback address whose UR ports are
    free (the test skips when there is none)."""
    from fedvla.twin.ur_controller import free_loopback_host
    from support.twin import train_small_twin_checkpoint

    try:
        host = free_loopback_host()
    except OSError as error:
        pytest.skip(f"no loopback address with the UR ports free: {error}")
    return train_small_twin_checkpoint(directory), host


def twin_launch_description(arguments: dict[str, str]) -> LaunchDescription:
    source = PythonLaunchDescriptionSource(str(REPO / "launch" / "twin.launch.py"))
    return LaunchDescription([IncludeLaunchDescription(source, launch_arguments=arguments.items()),
                              launch_pytest.actions.ReadyToTest()])
