"""The ``main()`` of every node: spin, stop cleanly, and turn bad configuration into one line.

A node that cannot start because of its parameters (unknown backend, negative fps, a bag file
that does not exist, a parameter of the wrong type) prints ``<node>: error: <parameter>: <what
is wrong> (allowed: ...)`` and exits with status 2, never a traceback. Hardware that cannot be
reached (no camera, no robot) exits with status 1 and one line saying what to check. A node
never outlives the process that started it (:mod:`fedvla.supervision`): its parent's death is a
SIGTERM, handled like Ctrl-C.
"""
from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

import rclpy
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterException,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from fedvla.config import ConfigError
from fedvla.dds import TransportChoice, robot_transport_environment
from fedvla.readiness import report_ready
from fedvla.supervision import exit_with_parent

EXIT_BAD_CONFIG = 2
EXIT_UNAVAILABLE = 1
SPIN_PERIOD_S = 0.1


class StartupError(RuntimeError):
    """A node cannot start for a reason other than its parameters (device missing, ...)."""


class NodeExit(Exception):
    """Raised from a callback to end the node on purpose (work done, or a fatal condition)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _fail(label: str, message: str, status: int) -> int:
    print(f"{label}: error: {message}", file=sys.stderr, flush=True)
    return status


def _interrupt(signum: int, frame: object) -> None:
    # Shut down once: a terminal's Ctrl-C reaches the node and `ros2 launch` forwards it again;
    # a second interrupt must not abort the cleanup (launch escalates to SIGKILL if it hangs).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


class RosLogHandler(logging.Handler):
    """Forwards the core's ``logging`` records (``fedvla.*``) to the node's ROS logger, so they
    reach the console, /rosout and launch logs like the node's own messages."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.ros_logger = rclpy.logging.get_logger(name)

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(message)
        elif record.levelno >= logging.INFO:
            self.ros_logger.info(message)
        else:
            self.ros_logger.debug(message)


def _forward_core_logging(label: str) -> None:
    core = logging.getLogger("fedvla")
    if not any(isinstance(h, RosLogHandler) for h in core.handlers):
        core.addHandler(RosLogHandler(label))
        core.setLevel(logging.INFO)
        core.propagate = False


def run_node(node_factory: Callable[[], Node], label: str, args: list[str] | None = None,
             before_init: Callable[[], TransportChoice] | None = robot_transport_environment) -> int:
    """``before_init`` sets up the process's environment for rclpy (its DDS transport,
    :mod:`fedvla.dds`: the robot's unless a federation node asks for the federation's); its
    summary goes to the node's log."""
    transport = None
    if before_init is not None:
        try:
            transport = before_init()
        except FileNotFoundError as err:
            return _fail(label, str(err), EXIT_UNAVAILABLE)
    # SIGINT/SIGTERM become KeyboardInterrupt, so the node is destroyed (devices released,
    # files closed, last log lines published) before the ROS context shuts down.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if not exit_with_parent():  # its launch died while it started: nobody would ever stop it
        rclpy.try_shutdown()
        return _fail(label, "the launch that started this node has ended; not starting", EXIT_UNAVAILABLE)
    _forward_core_logging(label)
    node: Node | None = None
    status = 0
    try:
        try:
            node = node_factory()
        except ConfigError as err:
            return _fail(label, str(err), EXIT_BAD_CONFIG)
        except (InvalidParameterTypeException, InvalidParameterValueException, ParameterException) as err:
            return _fail(label, str(err).splitlines()[0], EXIT_BAD_CONFIG)
        except StartupError as err:
            return _fail(label, str(err), EXIT_UNAVAILABLE)
        if transport is not None:  # (after construction: a node that cannot start says only why)
            (node.get_logger().warning if transport.warning else node.get_logger().info)(transport.summary)
        report_ready(node.get_fully_qualified_name())  # constructed: connected, models loaded
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # Short waits: Python runs signal handlers only between them (rcl_wait blocks in C).
        while rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except NodeExit as done:
        if done.status:
            _fail(label, str(done), done.status)
        else:
            print(f"{label}: {done}", file=sys.stderr, flush=True)
        status = done.status
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


def main_for(node_factory: Callable[[], Node], label: str,
             before_init: Callable[[], TransportChoice] | None = robot_transport_environment
             ) -> Callable[[], None]:
    """Build a console-script ``main`` for a node class."""

    def main(args: list[str] | None = None) -> None:
        sys.exit(run_node(node_factory, label, args, before_init))

    return main
