"""The controller in a child process, for clients in this process that use ur_rtde: its pybind11
constructors hold the GIL while they wait for the controller's answers, so a controller made of
threads of the same process would deadlock them. :class:`UrControllerSim` starts the child and
forwards every call over a socketpair; everything it returns is a copy."""
from __future__ import annotations

import collections
import contextlib
import enum
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedvla.twin.ur_controller.core import ControllerCore
from fedvla.twin.ur_controller.protocol import DEFAULT_PORTS, E_SERIES, Command, RobotMode, RuntimeState, SafetyMode

def _plain(x: Any) -> Any:
    """Builtins and numpy only, so that results pickle whatever module name the child runs under."""
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, (list, collections.deque, set, frozenset)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, np.generic):
        return x.item()
    return x


_CALLS = frozenset({
    "start", "stop", "outage", "drop_clients", "stall", "resume", "protective_stop", "emergency_stop",
    "release_emergency_stop", "set_joint_positions", "start_control_script", "stop_program", "clear_records",
    "wait_cycles", "input_value", "output_register",
})
_GETS = frozenset({
    "received_inputs", "servoj_targets", "servoj_commands", "commands", "dashboard_commands", "scripts",
    "secondary_programs", "output_recipes",
    "script_commands", "protocol_errors", "watchdog_trips", "watchdog", "log", "inputs", "connections",
    "program_running", "running", "tcp_offset", "safety_mode", "robot_mode", "runtime_state", "ports",
    "controller_frequency", "period", "loaded_program",
})
_SETS = frozenset({
    "safety_mode", "robot_mode", "remote_control", "max_joint_speed", "protective_stop_unlock_delay",
    "inputs_in_use", "unsupported_outputs", "robot_model", "custom_script_duration", "script_start_delay",
    "verbose", "serial_number",
})
_ERRORS = {"AttributeError": AttributeError, "ValueError": ValueError, "KeyError": KeyError,
           "TypeError": TypeError, "OSError": OSError}


def _child_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    core: ControllerCore | None = None
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "init":  # (again: a fresh controller, the old one stopped)
                if core is not None:
                    core.stop()
                core = None
                core = ControllerCore(**args[0])
                result: Any = None
            elif core is None:
                raise RuntimeError("not initialised")
            elif op == "call":
                name, call_args, call_kwargs = args
                if name not in _CALLS:
                    raise AttributeError(name)
                result = getattr(core, name)(*call_args, **call_kwargs)
                if result is core:
                    result = None
            elif op == "get":
                if args[0] not in _GETS:
                    raise AttributeError(args[0])
                with core.lock:
                    result = _plain(getattr(core, args[0]))
            elif op == "set":
                if args[0] not in _SETS:
                    raise AttributeError(args[0])
                value = args[1]
                if args[0] in ("inputs_in_use", "unsupported_outputs"):
                    value = set(value)
                with core.lock:
                    setattr(core, args[0], value)
                result = None
            elif op == "state_get":
                result = core.state.get(args[0])
            elif op == "state_update":
                values = dict(args[0])
                with core.lock:
                    core.state.update(**{k: v for k, v in values.items() if k not in ("safety_mode", "robot_mode")})
                    for name in ("robot_mode", "safety_mode"):  # through the setters: programs stop etc.
                        if name in values:
                            setattr(core, name, values[name])
                result = None
            elif op == "state_snapshot":
                result = core.state.snapshot()
            elif op == "exit":
                core.stop()
                conn.send((True, None))
                break
            else:
                raise AttributeError(op)
            conn.send((True, _plain(result)))
        except Exception as error:  # noqa: BLE001 - every error goes back to the caller
            conn.send((False, (type(error).__name__, str(error))))
    if core is not None:
        core.stop()


def _kill(proc: Any) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=2)


class _StateProxy:
    """``sim.state``: the controller's RTDE output variables (see :class:`SimState`), read and written
    across the process boundary. ``sim.state.actual_q = q`` / ``sim.state.actual_q`` (numpy) /
    ``sim.state.update(...)`` (atomic) / ``sim.state.snapshot()``."""

    def __init__(self, sim: UrControllerSim) -> None:
        object.__setattr__(self, "_sim", sim)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._sim._rpc("state_get", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def get(self, name: str) -> Any:
        return self._sim._rpc("state_get", name)

    def update(self, **values: Any) -> None:
        self._sim._rpc("state_update", _plain({k: np.asarray(v) if isinstance(v, (list, tuple)) else v
                                               for k, v in values.items()}))

    def snapshot(self) -> dict[str, Any]:
        return self._sim._rpc("state_snapshot")


class UrControllerSim:
    """The fake UR controller for tests (see the module docstring for what is emulated).

    The controller runs in a child process (ur_rtde's constructors hold the GIL while they wait for the
    controller, so it cannot be threads of the test process); this object starts it and forwards every
    call over a pipe, thread-safe. Records (``servoj_targets``, ``received_inputs``, ...) are copies
    taken when read.

    >>> with UrControllerSim(host=free_loopback_host()) as sim:
    ...     receive = rtde_receive.RTDEReceiveInterface(sim.host)
    ...     sim.state.actual_q = [0.1] * 6

    ``start()`` listens (first call: starts the child); ``stop()`` closes every socket and pauses the
    controller (state kept; ``start()`` again resumes, like a network outage); ``drop_clients()``
    closes the current connections but keeps listening; ``shutdown()`` (and leaving the ``with``) ends
    the child. Options beyond the ports: see :class:`ControllerCore` (``robot_model``, ``initial_q``,
    ``max_joint_speed``, ``remote_control``, ``protective_stop_unlock_delay``, ``inputs_in_use``,
    ``unsupported_outputs``, ``controller_frequency``, ``verbose`` ...).
    """

    def __init__(self, host: str = "127.0.0.1", rtde_port: int = DEFAULT_PORTS["rtde"],
                 dashboard_port: int | None = DEFAULT_PORTS["dashboard"],
                 script_port: int | None = DEFAULT_PORTS["script"],
                 urcontrol_version: tuple[int, int, int] = E_SERIES, **options: Any) -> None:
        self.host = host
        self.urcontrol_version = tuple(urcontrol_version)
        self._options = _plain(dict(host=host, rtde_port=rtde_port, dashboard_port=dashboard_port,
                                    script_port=script_port, urcontrol_version=tuple(urcontrol_version), **options))
        self._proc: Any = None
        self._conn: Any = None
        self._finalizer: Any = None
        self._rpc_lock = threading.Lock()
        self.ports: dict[str, int] = {}
        self.state = _StateProxy(self)

    # ---- process plumbing ----
    def _spawn(self) -> None:
        import subprocess
        import weakref
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "fedvla.twin.ur_controller.child", str(child.fileno())],
                                          pass_fds=(child.fileno(),), close_fds=True)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        self._rpc("init", self._options)

    def _rpc(self, op: str, *args: Any) -> Any:
        with self._rpc_lock:
            if self._conn is None:
                raise RuntimeError("the fake controller is not started")
            try:
                self._conn.send((op, *args))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as error:
                raise RuntimeError(f"the fake controller process is gone: {error!r}") from error
        if not ok:
            kind, message = value
            raise _ERRORS.get(kind, RuntimeError)(message)
        return value

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._rpc("call", name, _plain(args), _plain(kwargs))

    # ---- life cycle ----
    def start(self) -> UrControllerSim:
        """Listen (RTDE, dashboard, script ports) and run the controller. OSError if a port is taken."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        try:
            self._call("start")
        except OSError:
            self.shutdown()
            raise
        self.ports = self._rpc("get", "ports")
        return self

    def reset(self, **options: Any) -> UrControllerSim:
        """A fresh controller (default state, no records) in the same process, with ``options``
        changed (e.g. ``urcontrol_version``); stopped until :meth:`start`. Cheaper than a new
        instance (no new process)."""
        self._options.update(_plain(options))
        self.host = self._options["host"]
        self.urcontrol_version = tuple(self._options["urcontrol_version"])
        self.ports = {}
        if self._proc is not None and self._proc.poll() is None:
            self._rpc("init", self._options)
        return self

    def stop(self, abort: bool = False) -> None:
        """Drop the network: close listeners and client connections (``abort``: with a TCP reset);
        the controller pauses with its state kept until :meth:`start`."""
        if self._conn is not None:
            self._call("stop", abort)

    def shutdown(self) -> None:
        """Stop everything and end the controller process."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._rpc("exit")
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=3)
            _kill(self._proc)
            self._proc = None

    def __enter__(self) -> UrControllerSim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ---- faults ----
    def drop_clients(self, abort: bool = False) -> None:
        """Close the current client connections; keep listening. Not with a live RTDEControlInterface:
        see :meth:`ControllerCore.drop_clients` (ur_rtde's own reconnect loops); use :meth:`outage`."""
        self._call("drop_clients", abort)

    def outage(self, seconds: float, abort: bool = False) -> None:
        """Network outage: connections dropped and refused for ``seconds``; the controller keeps running."""
        self._call("outage", seconds, abort)

    def stall(self) -> None:
        """Stop streaming RTDE outputs, sockets left open (ur_rtde gives up after ~2.5 s)."""
        self._call("stall")

    def resume(self) -> None:
        self._call("resume")

    # ---- safety and program ----
    @property
    def safety_mode(self) -> SafetyMode:
        return SafetyMode(self._rpc("get", "safety_mode"))

    @safety_mode.setter
    def safety_mode(self, mode: int) -> None:
        self._rpc("set", "safety_mode", int(mode))

    @property
    def robot_mode(self) -> RobotMode:
        return RobotMode(self._rpc("get", "robot_mode"))

    @robot_mode.setter
    def robot_mode(self, mode: int) -> None:
        self._rpc("set", "robot_mode", int(mode))

    @property
    def runtime_state(self) -> RuntimeState:
        return RuntimeState(self._rpc("get", "runtime_state"))

    @property
    def program_running(self) -> bool:
        return self._rpc("get", "program_running")

    def protective_stop(self) -> None:
        """Safety mode 3 (PROTECTIVE_STOP), safety_status_bits bit 2, motion halted, script ended."""
        self._call("protective_stop")

    def emergency_stop(self, system: bool = False) -> None:
        self._call("emergency_stop", system)

    def release_emergency_stop(self) -> None:
        self._call("release_emergency_stop")

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Place the arm at ``q`` (actual and target), at rest."""
        self._call("set_joint_positions", np.asarray(q, dtype=float))

    def start_control_script(self) -> None:
        """Pretend ur_rtde's control script runs without an upload (URCap / custom-script setups)."""
        self._call("start_control_script")

    def stop_program(self) -> None:
        self._call("stop_program")

    def set_option(self, name: str, value: Any) -> None:
        """Change a controller option at run time (``remote_control``, ``max_joint_speed``, ...)."""
        self._rpc("set", name, _plain(value))

    # ---- records ----
    def _get(self, name: str) -> Any:
        return self._rpc("get", name)

    received_inputs = property(lambda self: self._get("received_inputs"),
                               doc="Every decoded RTDE input package: {time, recipe, values, connection}.")
    servoj_targets = property(lambda self: self._get("servoj_targets"),
                              doc="q (numpy) of every servoJ package that arrived, in order.")
    servoj_commands = property(lambda self: self._get("servoj_commands"),
                               doc="Every servoJ package: q, speed, acceleration, time, lookahead_time, gain.")
    dashboard_commands = property(lambda self: self._get("dashboard_commands"))
    output_recipes = property(lambda self: self._get("output_recipes"),
                              doc="Every CONTROL_PACKAGE_SETUP_OUTPUTS: {names, frequency, types, connection}.")
    scripts = property(lambda self: self._get("scripts"), doc="Programs received on the script port(s).")
    secondary_programs = property(lambda self: self._get("secondary_programs"),
                                  doc="``sec`` programs received (they run beside the main program).")
    script_commands = property(lambda self: self._get("script_commands"))
    protocol_errors = property(lambda self: self._get("protocol_errors"))
    watchdog_trips = property(lambda self: self._get("watchdog_trips"))
    watchdog = property(lambda self: self._get("watchdog"), doc="(input variable, min frequency) or None.")
    inputs = property(lambda self: self._get("inputs"), doc="The latest value of every RTDE input variable.")
    connections = property(lambda self: self._get("connections"), doc="[(kind, peer)] of open connections.")
    log = property(lambda self: self._get("log"))
    running = property(lambda self: self._get("running"))
    controller_frequency = property(lambda self: self._get("controller_frequency"))
    tcp_offset = property(lambda self: self._get("tcp_offset"))

    @property
    def commands(self) -> list[tuple[Command | int, dict[str, Any]]]:
        """What the emulated control script executed: (command, input registers) in order."""
        known = set(int(c) for c in Command)
        return [(Command(c) if c in known else c, regs) for c, regs in self._get("commands")]

    def clear_records(self) -> None:
        self._call("clear_records")

    def input_value(self, name: str, default: Any = None) -> Any:
        return self._call("input_value", name, default)

    def output_register(self, index: int, kind: str = "int") -> Any:
        return self._call("output_register", index, kind)

    @property
    def rtde_port(self) -> int:
        return self.ports.get("rtde", self._options["rtde_port"])

    @property
    def dashboard_port(self) -> int | None:
        return self.ports.get("dashboard", self._options["dashboard_port"])

    @property
    def script_port(self) -> int | None:
        return self.ports.get("script", self._options["script_port"])

    def wait_cycles(self, n: int = 2, timeout: float = 2.0) -> bool:
        return self._call("wait_cycles", n, timeout)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 2.0, interval: float = 0.005) -> bool:
        """Poll ``predicate`` (run here, in the test process) until it is true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

