"""Test-wide setup: an isolated ROS 2 domain per run, seeded RNGs, shared helpers.

Every pytest process locks its own ``ROS_DOMAIN_ID`` before anything initialises rclpy, and
child processes (nodes, ``ros2 launch``) inherit it, so concurrent test runs on one machine
never see each other's topics.
"""
from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.ros_domain import isolate_ros_environment

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO.parent / "shared" / "vendor"
DOMAIN_ID = isolate_ros_environment()
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("MUJOCO_GL", "egl")


def _load_ros_middleware_first() -> None:
    """pyrealsense2 bundles its own Fast DDS, whose GNU-unique singletons clash with ROS's
    copy when pyrealsense2 is loaded first (the process segfaults at exit). Nodes load ROS's
    middleware in rclpy.init() before any camera connects; the test process does the same here,
    before any test imports pyrealsense2."""
    try:
        import rclpy
    except ImportError:
        return
    context = rclpy.context.Context()
    rclpy.init(context=context)
    rclpy.shutdown(context=context)


_load_ros_middleware_first()


def pytest_report_header(config: pytest.Config) -> str:
    return f"ROS_DOMAIN_ID={DOMAIN_ID} (locked for this run), vendor tools: {'yes' if VENDOR.is_dir() else 'no'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_hw = pytest.mark.skip(reason="hardware test: set FEDVLA_HARDWARE=1 with the device connected")
    for item in items:
        if "hardware" in item.keywords and os.environ.get("FEDVLA_HARDWARE") != "1":
            item.add_marker(skip_hw)
    # Long soaks run only when asked for (test/run -m soak); the default run has their short versions.
    if "soak" not in (config.getoption("markexpr") or ""):
        deselected = [item for item in items if "soak" in item.keywords]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if "soak" not in item.keywords]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._records: dict[int, logging.LogRecord] = {}  # kept alive, so their ids stay unique

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._records:  # (a record propagating through two of our loggers)
            self._records[id(record)] = record
            self.messages.append(record.getMessage())


@pytest.fixture
def core_warnings() -> Iterator[list[str]]:
    """Warnings the core logs (``fedvla.*``) during the test. Not caplog: under launch_pytest, ROS's
    LaunchLogger class is installed and its loggers do not propagate, so the handler goes on every
    ``fedvla`` logger."""
    collect = _Collect()
    names = ["fedvla"] + [n for n in logging.Logger.manager.loggerDict if n.startswith("fedvla.")]
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        yield collect.messages
    finally:
        for logger in loggers:
            logger.removeHandler(collect)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)


def _domain_processes() -> dict[int, str]:
    """Live processes of this run's ROS domain other than pytest itself: pid -> command line."""
    import psutil

    found = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if (process.pid != os.getpid() and process.info["status"] != psutil.STATUS_ZOMBIE
                    and process.environ().get("ROS_DOMAIN_ID") == str(DOMAIN_ID)):
                found[process.pid] = " ".join(process.info["cmdline"] or [])[:200]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _fail_on_leaks(before: set[int], what: str) -> None:
    """End the processes of this run's domain that are not in ``before`` and still run after 5 s, and
    fail naming them."""
    import psutil

    leaked = {pid: cmd for pid, cmd in _domain_processes().items() if pid not in before}
    if leaked:  # (a node shutting down as the test ends gets a moment)
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in leaked if psutil.pid_exists(pid)], timeout=5)
        leaked = {p.pid: leaked[p.pid] for p in alive}
    if leaked:
        for process in (psutil.Process(pid) for pid in leaked if psutil.pid_exists(pid)):
            process.kill()
        pytest.fail(f"{what} left {len(leaked)} process(es) running in this run's ROS domain: "
                    + "; ".join(f"{pid}: {cmd}" for pid, cmd in leaked.items()), pytrace=False)


@pytest.fixture(autouse=True)
def _no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """A ROS test must leave no node behind: one still publishing in this run's domain would feed
    later tests (a stray chunk publisher makes another test's driver refuse chunks). Leftovers
    are ended, and the test that left them fails with their command lines. A launch test's nodes
    belong to its module's launch, which ends them after the module (checked there)."""
    if "ros" not in request.keywords or request.node.get_closest_marker("launch") is not None:
        yield
        return
    before = set(_domain_processes())
    yield
    _fail_on_leaks(before, "the test")


@pytest.fixture(scope="module", autouse=True)
def _no_processes_left_by_the_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a module (its launch fixtures shut down), nothing it started still runs."""
    if not any(item.get_closest_marker("ros") for item in request.session.items if item.module is request.module):
        yield
        return
    before = set(_domain_processes())
    yield
    _fail_on_leaks(before, f"{request.module.__name__}")


@pytest.fixture
def rclpy_context() -> Iterator[Any]:
    """An initialised rclpy context of its own, shut down after the test."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)
