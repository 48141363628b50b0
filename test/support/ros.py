"""Helpers for tests that talk to ROS 2 nodes (imported by test modules)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def wait_for_messages(context: Any, topic: str, msg_type: type, count: int = 1,
                      timeout_s: float = 30.0, qos: Any = None) -> list[Any]:
    """Subscribe in ``context`` and return the first ``count`` messages on ``topic``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    node = rclpy.create_node(f"test_listener_{os.getpid()}_{int(time.monotonic() * 1e6)}", context=context)
    received: list[Any] = []
    node.create_subscription(msg_type, topic, received.append, qos or qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < count and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
    if len(received) < count:
        raise AssertionError(f"got {len(received)} of {count} messages on {topic} within {timeout_s} s")
    return received[:count]


def start_node(package: str, executable: str, name: str, namespace: str = "",
               parameters: dict[str, Any] | None = None, param_files: list[Path] | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start an installed node executable the way ``fedvla launch`` does."""
    from fedvla.graph import NodeSpec, ResolvedNode
    from fedvla.runner import find_executable, node_command

    exe = find_executable(package, executable)
    if exe is None:
        pytest.skip(f"{package}/{executable} is not installed: run .ci/setup")
    spec = NodeSpec(key=name, package=package, executable=executable, name=name, namespace=namespace)
    node = ResolvedNode(spec=spec, parameter_files=tuple(param_files or ()),
                        parameter_values=dict(parameters or {}), arguments=())
    return subprocess.Popen(node_command(exe, node), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> tuple[str, str]:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


class SpinningNode:
    """A node whose executor spins in a background thread (for blocking service calls from the
    test thread, e.g. through :class:`fedvla_ros.fed_client.RosServerApi`)."""

    def __init__(self, context: Any, name: str) -> None:
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def __enter__(self) -> Any:
        self._thread.start()
        return self.node

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.executor.shutdown()
        self.node.destroy_node()
