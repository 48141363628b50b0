"""The arm runtime in a child process of its own, with :class:`ArmRuntime`'s interface.

Why: the control loop is a Python thread, and a thread needs the GIL. In the driver node the same
process publishes /joint_states, /tf and the planned path, and rclpy holds the GIL inside
``publish`` (one call held it 98 ms, measured with py-spy in the twin); the loop then missed its
periods and the RTDE watchdog (100 ms) stopped the robot's program mid-trial. In a child process
the loop shares its GIL only with IK planning (pure Python steps that yield it every 5 ms).

The child runs :class:`ArmRuntime` unchanged. The parent forwards calls over two socketpairs
(commands, and snapshots, so that a snapshot never waits behind a chunk's IK) and re-emits the
child's log records in its own ``logging`` tree, so they reach the node's log as before. When
the parent goes away (its end of the pipe closes) the child brakes the arm and ends; when the
child dies, calls raise :class:`BackendError` and the robot's watchdog stops the arm.

The loop's SCHED_FIFO priority alone does not keep it on time: after each sleep it must take the
GIL back, and a thread of this process at normal priority can sit descheduled holding it while the
machine is busy (the GIL has no priority inheritance). (CI's late loops, 60-300 ms from nearly
every period, turned out to have another cause: processes raised to FIFO 99 by the LeRobot
export, see :mod:`fedvla.scheduling`.) So when the loop runs at real-time priority, every other
thread of the child runs SCHED_FIFO one level below it (:func:`_share_realtime_priority`: command, snapshot and log threads, and the threads they
start), and the GIL's switch interval is :data:`GIL_SWITCH_INTERVAL_S`: a holder then releases the
GIL within about that long of the loop asking for it. The cost: a chunk's IK, planned by the command
thread, runs ahead of the machine's normal processes, as the loop's own work does.

Closing never waits on the robot for long: with the robot gone, ur_rtde's disconnect can retry its
connection indefinitely. The parent waits :data:`CLOSE_TIMEOUT_S` for the child's braking, then
ends it; a child whose parent died closes the runtime for as long at most, then exits. (A driver
node that hung in closing was killed by launch, and left its child running.)
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from fedvla.config import ConfigError
from fedvla.robot.backends import BackendError, CommandRefused, ServoSettings
from fedvla.robot.controller import ControllerConfig, ExecutionRefused
from fedvla.robot.kinematics import ArmKinematics
from fedvla.robot.retarget import RetargetConfig
from fedvla.robot.runtime import ArmDriverConfig, ArmRuntime, ArmSnapshot, joint_state_of
from fedvla.robot.safety import SafetyConfig

log = logging.getLogger("fedvla.robot")

# The calls the parent may make, and the errors that cross back with their own type.
_COMMANDS = frozenset({"submit_chunk", "set_object_pose", "set_object_position", "enable", "disable",
                       "operator_heartbeat", "recover", "stop", "source_lost"})
_ERRORS: dict[str, type[Exception]] = {cls.__name__: cls for cls in (BackendError, CommandRefused, ExecutionRefused,
                                                                     ValueError)}
STARTUP_TIMEOUT_S = 60.0  # the child imports torch-free modules and Pinocchio: seconds at most
# Braking and releasing the arm take well under a second; the rest of a node's shutdown must fit in
# the 5 s launch gives it after SIGINT.
CLOSE_TIMEOUT_S = 3.0
# How long a thread of the child holds the GIL while the loop waits for it (CPython's default: 5 ms,
# most of a 125 Hz period).
GIL_SWITCH_INTERVAL_S = 0.001


def _error_reply(error: Exception) -> tuple:
    if isinstance(error, ConfigError):
        return False, ("ConfigError", (error.field, error.problem, error.allowed))
    return False, (type(error).__name__, str(error))


def _raise_reply(kind: str, detail: Any) -> None:
    if kind == "ConfigError":
        raise ConfigError(*detail)
    raise _ERRORS.get(kind, BackendError)(detail)


class SeparateArmRuntime:
    """:class:`ArmRuntime` run by a child process (see the module docstring); thread-safe."""

    def __init__(self, driver: ArmDriverConfig, safety: SafetyConfig | None = None,
                 retarget: RetargetConfig | None = None, servo: ServoSettings | None = None,
                 controller: ControllerConfig | None = None) -> None:
        self.config = driver
        self.kinematics = ArmKinematics(driver.urdf_path or None)  # (joint names, frames: read here)
        pairs = [socket.socketpair() for _ in range(3)]  # commands, snapshots, log records
        child_ends = [child for _, child in pairs]
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "fedvla.robot.loop_process", *(str(c.fileno()) for c in child_ends)],
                pass_fds=tuple(c.fileno() for c in child_ends), close_fds=True)
        finally:
            for child in child_ends:
                child.close()
        self._commands, self._snapshots, logs = (Connection(parent.detach()) for parent, _ in pairs)
        self._locks = {id(self._commands): threading.Lock(), id(self._snapshots): threading.Lock()}
        weakref.finalize(self, _end, self._process)
        threading.Thread(target=_forward_logs, args=(logs,), name="arm-loop-logs", daemon=True).start()
        try:
            if not self._commands.poll(STARTUP_TIMEOUT_S):
                raise BackendError(f"the control loop's process did not start within {STARTUP_TIMEOUT_S:g} s")
            self._answer(self._commands)  # (it started)
            self._call(self._commands, ("configure", (driver, safety, retarget, servo, controller)))
        except BaseException:
            self.close()
            raise

    def _call(self, connection: Connection, request: tuple, timeout_s: float | None = None) -> Any:
        with self._locks[id(connection)]:
            try:
                connection.send(request)
                if timeout_s is not None and not connection.poll(timeout_s):
                    raise BackendError(f"the control loop's process did not answer {request[0]!r} within "
                                       f"{timeout_s:g} s")
                return self._answer(connection)
            except (EOFError, OSError, BrokenPipeError) as err:
                raise BackendError(f"the control loop's process is gone ({self._exit_status()}): {err!r}") from None

    @staticmethod
    def _answer(connection: Connection) -> Any:
        ok, value = connection.recv()
        if not ok:
            _raise_reply(*value)
        return value

    def _exit_status(self) -> str:
        code = self._process.poll()
        return "still running" if code is None else f"exit status {code}"

    def _command(self, name: str, *args: Any) -> Any:
        return self._call(self._commands, ("call", name, args))

    # ArmRuntime's interface -------------------------------------------------------------------------
    def start(self) -> None:
        self._call(self._commands, ("start",))

    def close(self) -> None:
        """Brake and release the arm in the child (for :data:`CLOSE_TIMEOUT_S` at most), then end it."""
        try:
            self._call(self._commands, ("close",), timeout_s=CLOSE_TIMEOUT_S)
        except BackendError as err:
            log.warning("closing the arm: %s; ending its process", err)
        for connection in (self._commands, self._snapshots):
            connection.close()
        _end(self._process)

    def submit_chunk(self, actions: np.ndarray, step_period_s: float, observed_unix_s: float | None = None):
        return self._command("submit_chunk", np.asarray(actions, dtype=np.float64), step_period_s, observed_unix_s)

    def set_object_pose(self, object_pose: np.ndarray | None, frame: str = "") -> None:
        self._command("set_object_pose", object_pose, frame)

    def set_object_position(self, position: np.ndarray, frame: str = "") -> None:
        self._command("set_object_position", position, frame)

    def enable(self) -> str:
        return self._command("enable")

    def disable(self, why: str = "disabled by the operator") -> str:
        return self._command("disable", why)

    def operator_heartbeat(self, alive: bool) -> None:
        self._command("operator_heartbeat", alive)

    def recover(self, timeout_s: float = 60.0) -> str:
        return self._command("recover", timeout_s)

    def stop(self) -> None:
        self._command("stop")

    def source_lost(self, why: str) -> None:
        self._command("source_lost", why)

    def snapshot(self) -> ArmSnapshot:
        return self._call(self._snapshots, ("snapshot",))

    def joint_state(self, snapshot: ArmSnapshot) -> tuple[list[str], list[float]]:
        return joint_state_of(self.kinematics, snapshot)


def _end(process: subprocess.Popen) -> None:
    """Let the child finish braking; kill it if it does not end."""
    try:
        process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2.0)


def _forward_logs(connection: Connection) -> None:
    """The child's log records, re-emitted here (the node forwards ``fedvla.*`` to its ROS log)."""
    while True:
        try:
            name, level, message = connection.recv()
        except (EOFError, OSError):
            return
        logging.getLogger(name).log(level, "%s", message)


# The child ----------------------------------------------------------------------------------------
class _PipeHandler(logging.Handler):
    """Log records to the parent, sent by a thread of their own: the loop never waits on the pipe."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._connection = connection
        threading.Thread(target=self._send, name="arm-loop-log-sender", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.put((record.name, record.levelno, self.format(record)))

    def _send(self) -> None:
        while True:
            item = self._queue.get()
            with contextlib.suppress(OSError):
                self._connection.send(item)


def _serve(connection: Connection, handle) -> None:
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (True, handle(*request))
        except Exception as error:  # noqa: BLE001 - every error goes back to the caller
            reply = _error_reply(error)
        try:
            connection.send(reply)
        except OSError:
            return


def _share_realtime_priority(priority: int) -> None:
    """Every thread of this process at SCHED_FIFO ``priority - 1`` (at least 1); threads started
    later inherit it (glibc's default). Refused (no rtprio permission): left as they are, and the
    loop logs that it runs at normal priority."""
    shared = os.sched_param(max(1, priority - 1))
    try:
        for thread in threading.enumerate():
            os.sched_setscheduler(thread.native_id, os.SCHED_FIFO, shared)
    except (AttributeError, OSError) as err:
        log.debug("the control loop's process keeps normal priority: %s", err)


def _child_main(command_fd: int, snapshot_fd: int, log_fd: int) -> None:
    # The parent decides when to stop (a node's SIGINT reaches its whole process group): ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    commands, snapshots, logs = Connection(command_fd), Connection(snapshot_fd), Connection(log_fd)
    core = logging.getLogger("fedvla")
    core.handlers[:] = [_PipeHandler(logs)]
    core.setLevel(logging.INFO)
    core.propagate = False
    runtime: ArmRuntime | None = None
    closed = threading.Event()

    def handle_command(op: str, *args: Any) -> Any:
        nonlocal runtime
        if op == "configure":
            runtime = ArmRuntime(*args[0])
            if runtime.config.realtime_priority > 0:
                _share_realtime_priority(runtime.config.realtime_priority)
            return None
        if runtime is None:
            raise BackendError("the control loop is not configured")
        if op == "start":
            return runtime.start()
        if op == "close":
            closed.set()
            return runtime.close()
        name, call_args = args
        if op != "call" or name not in _COMMANDS:
            raise AttributeError(f"{op} {name}")
        return getattr(runtime, name)(*call_args)

    def handle_snapshot(op: str) -> ArmSnapshot:
        if runtime is None:
            raise BackendError("the control loop is not configured")
        return runtime.snapshot()

    threading.Thread(target=_serve, args=(snapshots, handle_snapshot), name="arm-loop-snapshots",
                     daemon=True).start()
    commands.send((True, None))  # (started: the parent waits for this)
    _serve(commands, handle_command)
    # The parent closed its end, or died: the arm must not keep following the last chunk. Closing
    # may hang on a robot that is gone (ur_rtde retries): give it CLOSE_TIMEOUT_S, then exit anyway
    # (os._exit: a thread stuck in ur_rtde would keep the interpreter from ending).
    if runtime is not None and not closed.is_set():
        closing = threading.Thread(target=runtime.close, name="arm-loop-close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT_S)
        if closing.is_alive():
            log.error("the arm did not close within %g s of the driver going away: exiting anyway", CLOSE_TIMEOUT_S)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _child_main(*(int(fd) for fd in sys.argv[1:4]))
