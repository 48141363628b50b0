"""Start a profile's nodes as processes, for machines without the ROS 2 CLI.

The same executables (``<prefix>/lib/<package>/<executable>``, where colcon installs them and
``ros2 run`` finds them), the same parameter files and the same argument bindings as
``ros2 launch fedvla_bringup <profile>.launch.py``: both read :mod:`fedvla.graph`.
Output lines are prefixed with the node's name; Ctrl-C (or the end of ``duration_s``) sends
SIGINT to every node, then SIGTERM and SIGKILL to those that do not stop. ``duration_s`` counts
from the moment every node has reported itself up (:mod:`fedvla.readiness`), not from the start
of the processes: loading models and connecting devices can take tens of seconds on a busy
machine, and a run that is meant to record 30 s of the stack must record 30 s of all of it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from fedvla.graph import Graph, ResolvedNode
from fedvla.paths import ament_prefixes
from fedvla.readiness import READY_DIR_ENV, ready_marker
from fedvla.supervision import with_parent_pid

log = logging.getLogger(__name__)

# Nodes that only exist in a full ROS 2 install; on a pip-only machine they are skipped.
OPTIONAL_PACKAGES = ("rviz2",)
STOP_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 300.0


class RunnerError(RuntimeError):
    """A node cannot be started (executable missing) or failed."""


def find_executable(package: str, executable: str, prefixes: Sequence[str | Path] | None = None) -> Path | None:
    """Where ``ros2 run package executable`` would find it (ament prefixes, then this venv)."""
    for prefix in ament_prefixes() if prefixes is None else prefixes:
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if package in OPTIONAL_PACKAGES:
        found = shutil.which(executable)
        return Path(found) if found else None
    return None


def parameter_literal(value: Any) -> str:
    """A ``-p name:=value`` literal that rcl's YAML parser reads back with the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(parameter_literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def node_command(executable: Path, node: ResolvedNode) -> list[str]:
    spec = node.spec
    cmd = [str(executable), *node.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        cmd += ["-r", f"__ns:=/{spec.namespace.strip('/')}"]
    for path in node.parameter_files:
        cmd += ["--params-file", str(path)]
    for name, value in node.parameter_values.items():
        cmd += ["-p", f"{name}:={parameter_literal(value)}"]
    for source, target in spec.remappings:
        cmd += ["-r", f"{source}:={target}"]
    return cmd


@dataclasses.dataclass
class RunningNode:
    node: ResolvedNode
    process: subprocess.Popen
    reader: threading.Thread

    @property
    def label(self) -> str:
        return self.node.spec.fully_qualified_name


class ProfileRunner:
    """Runs one profile of the graph; use as a context manager so nodes always stop."""

    def __init__(self, graph: Graph, profile: str, overrides: Mapping[str, str] | None = None, *,
                 env: Mapping[str, str] | None = None, output: IO[str] | None = None) -> None:
        self.graph = graph
        self.profile = profile
        self.nodes = graph.resolve(profile, overrides)
        self.env = with_parent_pid(os.environ if env is None else env)  # nodes exit if this process dies
        self.env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._ready_dir = tempfile.TemporaryDirectory(prefix="fedvla-ready-")
        self.env[READY_DIR_ENV] = self._ready_dir.name
        self.output = output  # None: whatever sys.stdout is when a line arrives (rich redirects it)
        self.running: list[RunningNode] = []
        self.skipped: list[str] = []
        self.waiting_for: list[str] = []  # during wait(): the nodes not up yet (empty once all are)
        self._output_lock = threading.Lock()

    def start(self) -> None:
        commands = []
        for node in self.nodes:
            spec = node.spec
            executable = find_executable(spec.package, spec.executable, ament_prefixes(self.env))
            if executable is None:
                if spec.package in OPTIONAL_PACKAGES:
                    self.skipped.append(f"{spec.fully_qualified_name} ({spec.package} is not installed: it needs a "
                                        "full ROS 2 install or the docker image)")
                    continue
                raise RunnerError(f"{spec.package}/{spec.executable} is not installed: run .ci/setup "
                                  "(or colcon build) first")
            commands.append((node, node_command(executable, node)))
        for node, cmd in commands:
            log.debug("starting %s", " ".join(cmd))
            process = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, bufsize=1, start_new_session=True)
            running = RunningNode(node=node, process=process, reader=threading.Thread(daemon=True))
            running.reader = threading.Thread(target=self._copy_output, args=(running,), daemon=True)
            running.reader.start()
            self.running.append(running)

    def _copy_output(self, running: RunningNode) -> None:
        for line in running.process.stdout:
            stream = self.output or sys.stdout
            with self._output_lock:
                stream.write(f"[{running.label}] {line}")
                stream.flush()

    def failed(self) -> list[tuple[str, int]]:
        """Nodes that exited with a non-zero status."""
        return [(r.label, r.process.returncode) for r in self.running
                if r.process.poll() is not None and r.process.returncode != 0]

    def all_exited(self) -> bool:
        return all(r.process.poll() is not None for r in self.running)

    def finished(self) -> list[str]:
        """Nodes marked ``ends_launch`` that have exited (their exit ends the run)."""
        return [r.label for r in self.running if r.node.spec.ends_launch and r.process.poll() is not None]

    def not_up(self) -> list[str]:
        """Running nodes that have not reported themselves up yet (nodes of other projects, such as
        RViz, cannot report and count as up once started; nodes that exited are not waited for)."""
        return [r.label for r in self.running
                if r.node.spec.package not in OPTIONAL_PACKAGES and r.process.poll() is None
                and not ready_marker(self._ready_dir.name, r.label).exists()]

    def wait(self, duration_s: float | None = None, on_tick: Callable[[float], None] | None = None,
             tick_s: float = 0.2, until: Callable[[], bool] | None = None,
             startup_timeout_s: float = STARTUP_TIMEOUT_S) -> bool:
        """Run until ``duration_s`` has elapsed since every node came up, every node (or one marked
        ``ends_launch``) has exited, ``until()`` holds, or one node fails or is not up within ``startup_timeout_s``
        (RunnerError). ``on_tick`` gets the seconds since every node came up (0 until then, while
        :attr:`waiting_for` names the nodes still starting).
        Returns whether ``until()`` held (False without ``until``)."""
        start = time.monotonic()
        up_since: float | None = None
        while True:
            now = time.monotonic()
            waiting = self.waiting_for = self.not_up() if up_since is None else []
            if up_since is None and not waiting:
                up_since = now
            elapsed = 0.0 if up_since is None else now - up_since
            if on_tick is not None:
                on_tick(elapsed)
            failed = self.failed()
            if failed:
                label, code = failed[0]
                raise RunnerError(f"node {label} exited with status {code} (its output is above)")
            if until is not None and until():
                return True
            if self.all_exited() or self.finished() or (duration_s is not None and up_since is not None and elapsed >= duration_s):
                return False
            if waiting and now - start > startup_timeout_s:
                raise RunnerError(f"{', '.join(waiting)} not up after {startup_timeout_s:g} s (its output is above)")
            time.sleep(tick_s)

    def stop(self) -> None:
        """SIGINT every node (they shut down cleanly), escalating for those that hang."""
        alive = [r for r in self.running if r.process.poll() is None]
        for sig, grace_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            for r in alive:
                try:
                    os.killpg(r.process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while alive and time.monotonic() < deadline:
                alive = [r for r in alive if r.process.poll() is None]
                time.sleep(0.05)
            if not alive:
                break
            log.warning("%s did not stop on %s", ", ".join(r.label for r in alive), sig.name)
        for r in self.running:
            r.reader.join(timeout=2.0)
        self._ready_dir.cleanup()

    def __enter__(self) -> ProfileRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
