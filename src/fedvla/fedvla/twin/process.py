"""The twin's robot side in a process of its own: :class:`WorkcellProcess` starts a child that runs
the :class:`~fedvla.twin.workcell.Workcell` (physics and the UR controller serving its ports) and
answers calls over a socketpair: reset, status, object positions, and scene snapshots for the
camera.

Why a process: a UR controller answers ur_rtde within one cycle, every cycle; on a real robot it is
a box of its own. In one Python process with rendering and ROS, the controller's threads wait for
the GIL behind them, ur_rtde's blocking calls in the driver wait for the controller, and the
driver's RTDE watchdog (100 ms) stops the robot on a busy two-core machine. Separated, the
controller keeps its cycle while the camera renders at whatever rate is left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from fedvla.config import ConfigError
from fedvla.twin.camera import SceneState
from fedvla.twin.scene import SceneConfig
from fedvla.twin.tasks import Episode, TaskStatus
from fedvla.twin.workcell import WorkcellConfig

_CALLS = ("reset", "status", "object_positions", "scene_state", "episode", "log_since", "clients")


class WorkcellProcessError(RuntimeError):
    """The workcell process failed to start or is gone."""


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(Exception):
            process.wait(timeout=2)


class WorkcellProcess:
    """The proxy: every method runs in the child (thread-safe here; results are copies)."""

    def __init__(self, config: WorkcellConfig, scene: SceneConfig) -> None:
        from multiprocessing.connection import Connection

        self.config, self.scene = config, scene
        self._lock = threading.Lock()
        parent, child = socket.socketpair()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "fedvla.twin.process", str(child.fileno())],
                                             pass_fds=(child.fileno(),), close_fds=True)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._finalizer = weakref.finalize(self, _kill, self._process)
        self._call("start", dataclasses.asdict(config), dataclasses.asdict(scene))

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((op, args))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as err:
                raise WorkcellProcessError(f"the workcell process is gone ({err!r})") from None
        if not ok:
            kind, message = value
            if kind == "ConfigError":
                raise ConfigError(*message)
            if kind == "OSError":
                raise OSError(message)
            raise WorkcellProcessError(f"{kind}: {message}")
        return value

    def reset(self, task: str | None = None, seed: int | None = None) -> Episode:
        return self._call("reset", task, seed)

    def status(self) -> TaskStatus:
        return self._call("status")

    def object_positions(self) -> dict:
        return self._call("object_positions")

    def scene_state(self) -> SceneState:
        return self._call("scene_state")

    @property
    def episode(self) -> Episode:
        return self._call("episode")

    def log_since(self, index: int) -> tuple[int, list[tuple[str, str]]]:
        """The controller's log lines (source, message) after line ``index``, and the new index."""
        return self._call("log_since", index)

    def clients(self) -> list[tuple[str, tuple[str, int]]]:
        return self._call("clients")

    def stop(self) -> None:
        """Stop the controller once its clients have left, or after ``client_grace_s``."""
        deadline = time.monotonic() + self.config.client_grace_s
        with contextlib.suppress(WorkcellProcessError):
            while self._process.poll() is None and self.clients() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._process.poll() is None:
            with contextlib.suppress(WorkcellProcessError):
                self._call("stop")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        _kill(self._process)
        with contextlib.suppress(OSError):
            self._conn.close()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None


def _child(fd: int) -> None:
    from multiprocessing.connection import Connection

    from fedvla.config import from_mapping
    from fedvla.twin.workcell import Workcell

    # A terminal's Ctrl-C reaches the whole process group; the parent decides when the
    # controller stops (its clients first), and a closed socket ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    workcell: Workcell | None = None
    log: list[tuple[str, str]] = []
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "start":
                workcell = Workcell(from_mapping(WorkcellConfig, args[0]), from_mapping(SceneConfig, args[1]))
                workcell.controller.on_log = lambda source, message: log.append((source, message))
                workcell.start()
                result: Any = None
            elif op == "stop":
                if workcell is not None:
                    workcell.stop()
                conn.send((True, None))
                break
            elif op == "log_since":
                index = min(int(args[0]), len(log))
                result = (len(log), log[index:])
            elif op in _CALLS and workcell is not None:
                attribute = getattr(workcell, op)
                result = attribute(*args) if callable(attribute) else attribute
            else:
                raise RuntimeError(f"unknown call {op!r} (or the workcell is not started)")
            conn.send((True, result))
        except ConfigError as err:
            conn.send((False, ("ConfigError", (err.field, err.problem, err.allowed))))
        except Exception as err:  # noqa: BLE001 - every error goes back to the caller
            conn.send((False, (type(err).__name__, str(err))))
    if workcell is not None:
        workcell.stop()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
