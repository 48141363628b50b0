"""The emulated controller: servers (RTDE, dashboard, script), the controller cycle, ur_rtde's
control script model and the robot's motion. A *plant* may own the motion: without one the joints
follow their targets kinematically; the workcell twin attaches MuJoCo (:class:`Plant`)."""
from __future__ import annotations

import collections
import contextlib
import fcntl
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from fedvla.twin.ur_controller.dashboard import serve as serve_dashboard
from fedvla.twin.ur_controller.connections import _Connection, _RtdeConnection
from fedvla.twin.ur_controller.dh import _DH, forward_kinematics
from fedvla.twin.ur_controller.program import _DEFAULT_REALTIME, _Motion, _Program
from fedvla.twin.ur_controller.protocol import (
    _HEADER, _POWERED_MODES, DEFAULT_PORTS, E_SERIES, INPUT_TYPES, READABLE_TYPES, RTDE_DATA_PACKAGE, Command,
    RobotMode, RuntimeState, SafetyMode, SimState, _norm, _version_ok)

# --- the controller ---------------------------------------------------------------------------
class ControllerCore:
    """The fake controller itself, in the process that runs it (see :class:`UrControllerSim` for the
    proxy tests use: ur_rtde's constructors hold the GIL while they wait for the controller, so the
    controller cannot be Python threads of the same process).

    Recorded for tests (all thread-safe to read; lists only grow until :meth:`clear_records`):
    ``received_inputs`` (every decoded input package: ``{"time", "recipe", "values", "connection"}``),
    ``servoj_targets`` (q of every servoJ package that arrived, numpy arrays), ``servoj_commands`` (with
    speed/acceleration/time/lookahead_time/gain), ``commands`` (what the emulated control script executed:
    ``(Command or int, registers)``), ``dashboard_commands``, ``output_recipes`` (every output setup:
    names, requested frequency, answered types), ``scripts`` (programs received),
    ``script_commands`` (single top-level script lines), ``protocol_errors``, ``watchdog_trips``.

    Options: ``host`` and the ports (``None`` = that server off, ``0`` = any free port; ``secondary_port``
    adds a second script port such as 30002); ``urcontrol_version`` (major, minor, bugfix) reported over
    RTDE and the dashboard (5.x: e-series, 500 Hz; 3.x: CB3, 125 Hz) and ``build_number``;
    ``robot_model`` ("auto": UR3e / UR3 by version; None: no kinematics, TCP poses left as set);
    ``initial_q``; ``max_joint_speed`` (rad/s limit on servoJ tracking, None: the target is reached in
    one cycle); ``remote_control`` (dashboard ``is in remote control``); ``serial_number``;
    ``script_start_delay`` (s from upload to PLAYING); ``custom_script_duration`` (how long a program
    that is not ur_rtde's control script "runs"); ``protective_stop_unlock_delay`` (PolyScope: 5 s);
    ``exclusive_inputs`` (an input owned by one RTDE connection is ``IN_USE`` for the others, as on a
    real controller); ``inputs_in_use`` (inputs always ``IN_USE``, like a fieldbus adapter holding them);
    ``unsupported_outputs`` (outputs answered ``NOT_FOUND``); ``controller_frequency`` (override of the
    cycle rate); ``verbose`` (print the log).
    """

    def __init__(self, host: str = "127.0.0.1", rtde_port: int = DEFAULT_PORTS["rtde"],
                 dashboard_port: int | None = DEFAULT_PORTS["dashboard"],
                 script_port: int | None = DEFAULT_PORTS["script"], secondary_port: int | None = None,
                 urcontrol_version: tuple[int, int, int] = E_SERIES, build_number: int = 12345,
                 robot_model: str | None = "auto", initial_q: Sequence[float] = (0.0, -1.2, 1.6, -1.97, -1.57, 0.0),
                 max_joint_speed: float | None = None, remote_control: bool = True,
                 serial_number: str = "20235500001", script_start_delay: float = 0.01,
                 custom_script_duration: float = 0.05, protective_stop_unlock_delay: float = 0.0,
                 exclusive_inputs: bool = True, inputs_in_use: Iterable[str] = (),
                 unsupported_outputs: Iterable[str] = (), controller_frequency: float | None = None,
                 verbose: bool = False, plant: Any = None, gripper_bit: int = 16) -> None:
        self.host = host
        self._requested_ports = {"rtde": rtde_port, "dashboard": dashboard_port, "script": script_port,
                                 "secondary": secondary_port}
        self.ports: dict[str, int] = {}
        self.urcontrol_version = tuple(int(x) for x in urcontrol_version)
        self.build_number = build_number
        self.e_series = self.urcontrol_version[0] >= 5
        if robot_model == "auto":
            robot_model = "UR3e" if self.e_series else "UR3"
        if robot_model is not None and robot_model not in _DH:
            raise ValueError(f"robot_model must be one of {sorted(_DH)} or None")
        self.robot_model = robot_model
        self.controller_frequency = float(controller_frequency or (500.0 if self.e_series else 125.0))
        self.period = 1.0 / self.controller_frequency
        self.max_joint_speed = max_joint_speed
        self.remote_control = remote_control
        self.serial_number = serial_number
        self.script_start_delay = script_start_delay
        self.custom_script_duration = custom_script_duration
        self.protective_stop_unlock_delay = protective_stop_unlock_delay
        self.exclusive_inputs = exclusive_inputs
        self.inputs_in_use = set(inputs_in_use)
        self.unsupported_outputs = set(unsupported_outputs)
        self.verbose = verbose
        # The physics the joints move in (fedvla.twin.plant.MujocoPlant); None: they follow their
        # targets kinematically. The gripper is wired to digital output bit ``gripper_bit`` (16: tool 0).
        self.plant = plant
        self.gripper_bit = gripper_bit
        self.protective_stops: list[str] = []  # why each force-limit stop happened
        self.on_log: Callable[[str, str], None] | None = None  # (source, message) of every log line

        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)  # notified after every controller cycle / input
        self.state = SimState(self.lock, initial_q)
        self.tcp_offset = np.zeros(6)
        self.inputs: dict[str, Any] = {}  # latest value of every input variable
        # Controller time (s) of the last update of each input. The RTDE watchdog counts in controller
        # time: if this process itself stalls (a busy machine), the stall is not the client's silence.
        self._input_updated: dict[str, float] = {}
        self._input_owner: dict[str, _RtdeConnection] = {}

        self.received_inputs: list[dict[str, Any]] = []
        self.servoj_targets: list[np.ndarray] = []
        self.servoj_commands: list[dict[str, Any]] = []
        self.commands: list[tuple[Command | int, dict[str, Any]]] = []
        self.dashboard_commands: list[str] = []
        self.output_recipes: list[dict[str, Any]] = []
        self.scripts: list[str] = []
        self.secondary_programs: list[str] = []
        self.script_commands: list[str] = []
        self.protocol_errors: list[str] = []
        self.watchdog_trips = 0
        self.log: collections.deque[str] = collections.deque(maxlen=2000)

        self.program: _Program | None = None
        self._pending_program: tuple[float, _Program] | None = None
        self._last_program: _Program | None = None
        self.loaded_program = "<unnamed>"
        self._motion: _Motion | None = None
        self._servo_target: np.ndarray | None = None
        self._q_history: collections.deque[tuple[float, ...]] = collections.deque(maxlen=2000)
        self.watchdog: tuple[str, float] | None = None  # (input variable, min frequency)
        self._protective_stop_time = 0.0
        self._async_wr_count = 0
        self._async_op_id = 0
        self._time = 0.0  # controller time (s since boot), advanced one period per cycle
        self._cycle = 0

        self._running = False
        self._stalled = False
        self._accept_threads: list[threading.Thread] = []
        self._outage_timer: threading.Timer | None = None
        self._listeners: dict[str, socket.socket] = {}
        self._connections: set[_Connection] = set()
        self._tick_thread: threading.Thread | None = None
        self._tick_stop = threading.Event()

    # ---- life cycle ----
    def start(self) -> ControllerCore:
        """Listen on all ports and run the controller cycle. Raises OSError if a port is taken."""
        with self.lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
        if not self._listeners:
            self._open_listeners()
        if self._tick_thread is None:
            self._tick_stop.clear()
            self._tick_thread = threading.Thread(target=self._tick_loop, name="ur-sim-controller", daemon=True)
            self._tick_thread.start()
        self._running = True
        return self

    def _open_listeners(self) -> None:
        listeners: dict[str, socket.socket] = {}
        try:
            for name, port in self._requested_ports.items():
                if port is None:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listeners[name] = s
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((self.host, self.ports.get(name, port)))  # a restart reuses the ports picked first
                s.listen(8)
                s.settimeout(0.05)
        except OSError:
            for s in listeners.values():
                s.close()
            raise
        self._listeners = listeners
        self.ports = {name: s.getsockname()[1] for name, s in listeners.items()}
        for name, s in listeners.items():
            t = threading.Thread(target=self._accept_loop, args=(name, s), name=f"ur-sim-accept-{name}", daemon=True)
            t.start()
            self._accept_threads.append(t)
        self._log("sim", f"listening on {self.host} {self.ports}")

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, {}
        for s in listeners.values():
            with contextlib.suppress(OSError):
                s.close()
        for t in self._accept_threads:
            t.join(timeout=2.0)
        self._accept_threads = []

    def stop(self, abort: bool = False) -> None:
        """Close every socket (listeners first, then clients) and pause the controller cycle; the state
        is kept, :meth:`start` resumes. ``abort`` resets the client connections (RST) instead of closing."""
        self._running = False
        with self.lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
        self._close_listeners()
        self.drop_clients(abort=abort)
        self._tick_stop.set()
        if self._tick_thread is not None:
            self._tick_thread.join(timeout=2.0)
            self._tick_thread = None
        self._log("sim", "stopped")

    close = stop

    def outage(self, seconds: float, abort: bool = False) -> None:
        """A network outage: listeners closed, clients dropped, the controller keeps running (so an RTDE
        watchdog trips); listening again after ``seconds`` (or at :meth:`start`)."""
        self._close_listeners()
        self.drop_clients(abort=abort)
        self._log("sim", f"network outage for {seconds} s")

        def reopen() -> None:
            with self.lock:
                if self._outage_timer is None:
                    return
                self._outage_timer = None
            if self._running and not self._listeners:
                self._open_listeners()

        with self.lock:
            self._outage_timer = threading.Timer(seconds, reopen)
            self._outage_timer.daemon = True
            self._outage_timer.start()

    def drop_clients(self, abort: bool = False) -> None:
        """Close the current client connections; keep listening (the next connect succeeds).

        Careful with a live ``RTDEControlInterface``: ur_rtde 1.6.5 reconnects by itself when its RTDE
        connection drops, and when that succeeds its old receive thread never clears its reconnect flag,
        so it reconnects again and again and can crash the process. Use :meth:`outage` or :meth:`stop`
        (connections refused meanwhile: its reconnect fails once and it stays disconnected) instead."""
        with self.lock:
            connections = list(self._connections)
        for c in connections:
            c.close(abort=abort)
        for c in connections:
            if c.thread is not None and c.thread is not threading.current_thread():
                c.thread.join(timeout=2.0)

    def stall(self) -> None:
        """Stop sending RTDE output packages (sockets stay open: ur_rtde times out after ~2.5 s)."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    def __enter__(self) -> ControllerCore:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def rtde_port(self) -> int:
        return self.ports.get("rtde", self._requested_ports["rtde"])

    @property
    def dashboard_port(self) -> int | None:
        return self.ports.get("dashboard", self._requested_ports["dashboard"])

    @property
    def script_port(self) -> int | None:
        return self.ports.get("script", self._requested_ports["script"])

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connections(self) -> list[tuple[str, tuple[str, int]]]:
        """(kind, peer address) of each open client connection."""
        with self.lock:
            return [(c.kind, c.peer) for c in self._connections if not c.closed.is_set()]

    # ---- test-facing state ----
    @property
    def safety_mode(self) -> SafetyMode:
        return SafetyMode(self.state.safety_mode)

    @safety_mode.setter
    def safety_mode(self, mode: int) -> None:
        mode = SafetyMode(mode)
        with self.lock:
            self.state.update(safety_mode=int(mode))
            if mode not in (SafetyMode.NORMAL, SafetyMode.REDUCED, SafetyMode.RECOVERY):
                self._halt_motion()
                if mode == SafetyMode.PROTECTIVE_STOP:
                    self._protective_stop_time = time.monotonic()
                self._end_program(f"safety mode {mode.name}")
            self._changed.notify_all()

    @property
    def robot_mode(self) -> RobotMode:
        return RobotMode(self.state.robot_mode)

    @robot_mode.setter
    def robot_mode(self, mode: int) -> None:
        mode = RobotMode(mode)
        with self.lock:
            self.state.update(robot_mode=int(mode))
            if mode != RobotMode.RUNNING:
                self._halt_motion()
                self._end_program(f"robot mode {mode.name}")

    @property
    def runtime_state(self) -> RuntimeState:
        return RuntimeState(self.state.runtime_state)

    @property
    def program_running(self) -> bool:
        return self.runtime_state == RuntimeState.PLAYING

    def protective_stop(self) -> None:
        """A protective stop: safety mode 3, status bit 2, motion halted, script ended."""
        self.safety_mode = SafetyMode.PROTECTIVE_STOP

    def emergency_stop(self, system: bool = False) -> None:
        """An emergency stop: safety mode 7 (6 with ``system``), status bits 6 (5) and 7, arm powered off."""
        self.safety_mode = SafetyMode.SYSTEM_EMERGENCY_STOP if system else SafetyMode.ROBOT_EMERGENCY_STOP
        self.robot_mode = RobotMode.POWER_OFF

    def release_emergency_stop(self) -> None:
        """The e-stop button released: safety normal, the arm stays off until power on + brake release."""
        with self.lock:
            self.state.update(safety_mode=int(SafetyMode.NORMAL))

    def set_joint_positions(self, q: Sequence[float]) -> None:
        """Place the arm at ``q`` (actual and target), at rest."""
        q = np.asarray(q, dtype=float)
        with self.lock:
            if self.plant is not None:
                self.plant.set_arm(q, self._gripper_closed())
            self.state.update(actual_q=q, target_q=q, actual_qd=np.zeros(6), target_qd=np.zeros(6))
            self._update_tcp()

    def start_control_script(self) -> None:
        """Pretend ur_rtde's control script runs although nothing uploaded it (e.g. started by the
        ExternalControl URCap or a PolyScope program, ``FLAG_USE_EXT_UR_CAP`` / ``FLAG_CUSTOM_SCRIPT``)."""
        with self.lock:
            offset = 24 if any(k == "input_int_register_24" for k in self._input_owner) else 0
            self._start_program(_Program("# started by the test\nrtde_cmd()\n", True, offset, _DEFAULT_REALTIME, 0.0))

    def stop_program(self, why: str = "stopped by the test") -> None:
        with self.lock:
            self._end_program(why)

    def output_register(self, index: int, kind: str = "int") -> Any:
        return getattr(self.state, f"output_{kind}_register_{index}")

    def input_value(self, name: str, default: Any = None) -> Any:
        with self.lock:
            return self.inputs.get(name, default)

    def clear_records(self) -> None:
        with self.lock:
            for records in (self.received_inputs, self.servoj_targets, self.servoj_commands, self.commands,
                            self.dashboard_commands, self.output_recipes, self.scripts, self.secondary_programs,
                            self.script_commands, self.protocol_errors):
                records.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate()`` holds (checked after each controller cycle and input package)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_cycles(self, n: int = 2, timeout: float = 2.0) -> bool:
        """Wait for ``n`` more controller cycles."""
        target = self._cycle + n
        return self.wait_for(lambda: self._cycle >= target, timeout)

    # ---- servers ----
    def _accept_loop(self, name: str, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if name == "rtde":
                conn: _Connection = _RtdeConnection(self, sock)
                target = conn.run
            elif name == "dashboard":
                conn = _Connection(self, sock, "dashboard")
                target = lambda c=conn: serve_dashboard(self, c)  # noqa: E731
            else:
                conn = _Connection(self, sock, name)
                target = lambda c=conn: self._script_loop(c)  # noqa: E731
            with self.lock:
                self._connections.add(conn)
            conn.thread = threading.Thread(target=self._serve, args=(conn, target), name=f"ur-sim-{name}", daemon=True)
            conn.thread.start()
            self._log(name, f"client {conn.peer} connected")

    def _serve(self, conn: _Connection, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            conn.close()
            with self.lock:
                self._connections.discard(conn)
                self._changed.notify_all()
            self._log(conn.kind, f"client {conn.peer} gone")

    def _script_loop(self, conn: _Connection) -> None:
        pending: list[str] = []  # lines of a program being received
        depth_open = False
        for line in conn.lines(65536):
            if not depth_open:
                if re.match(r"(def|sec)\s+\w+\s*\(", line):
                    depth_open = True
                    pending = [line]
                elif line.strip():
                    with self.lock:
                        self.script_commands.append(line)
                    self._log("script", f"command {line!r}")
                continue
            pending.append(line)
            if line.rstrip() == "end":  # a top-level "end" closes the program
                depth_open = False
                self._on_program_text("\n".join(pending) + "\n")
                pending = []

    def _on_program_text(self, text: str) -> None:
        if text.lstrip().startswith("sec"):
            self._run_secondary_program(text)
            return
        program = _Program.parse(text, self.custom_script_duration, 0)
        with self.lock:
            self.scripts.append(text)
            self._log("script", f"program received ({len(text)} bytes, control script: {program.control_script}, "
                                f"register offset {program.offset}, realtime {sorted(program.realtime)})")
            self._end_program("replaced by a new program")
            self._last_program = program
            if self.safety_mode == SafetyMode.NORMAL and self.robot_mode == RobotMode.RUNNING:
                self._pending_program = (time.monotonic() + self.script_start_delay, program)
            else:
                self._log("script", "program not started: robot not running or not in normal safety mode")

    def _run_secondary_program(self, text: str) -> None:
        """A ``sec`` program runs beside the main program (UR semantics: no motion, never stops the main
        program); its literal ``set_{standard,configurable,tool}_digital_out(n, True|False)`` calls apply."""
        with self.lock:
            self.secondary_programs.append(text)
            raw = self.state._raw()
            for bank, n, level in re.findall(r"set_(standard|configurable|tool)_digital_out\(\s*(\d+)\s*,\s*(True|False)\s*\)",
                                             text):
                bit = {"standard": 0, "configurable": 8, "tool": 16}[bank] + int(n)
                raw["actual_digital_output_bits"] = (raw["actual_digital_output_bits"] & ~(1 << bit)) | (
                    (level == "True") << bit)
            self._log("script", f"secondary program ran ({len(text)} bytes)")

    # ---- inputs ----
    def _output_type(self, name: str) -> str:
        kind = READABLE_TYPES.get(name)
        if kind is None or name in self.unsupported_outputs or not _version_ok(name, self.urcontrol_version):
            return "NOT_FOUND"
        return kind

    def _claim_inputs(self, conn: _RtdeConnection, names: list[str]) -> list[str]:
        types = []
        deadline = time.monotonic() + 0.3  # for owners whose close is still being noticed
        with self._changed:
            for name in names:
                kind = INPUT_TYPES.get(name)
                if kind is None or not _version_ok(name, self.urcontrol_version):
                    types.append("NOT_FOUND")
                    continue
                if name in self.inputs_in_use:
                    types.append("IN_USE")
                    continue
                if self.exclusive_inputs:
                    while (owner := self._input_owner.get(name)) not in (None, conn) and not owner.closed.is_set():
                        if time.monotonic() > deadline:
                            break
                        self._changed.wait(0.02)
                    owner = self._input_owner.get(name)
                    if owner not in (None, conn) and not owner.closed.is_set():
                        types.append("IN_USE")
                        continue
                    self._input_owner[name] = conn
                types.append(kind)
        return types

    def _release_inputs(self, conn: _RtdeConnection) -> None:
        with self._changed:
            for name in [n for n, c in self._input_owner.items() if c is conn]:
                del self._input_owner[name]
            self._changed.notify_all()

    def _on_input(self, conn: _RtdeConnection, recipe_id: int, values: dict[str, Any]) -> None:
        with self._changed:
            self.received_inputs.append({"time": self._time, "recipe": recipe_id, "values": values,
                                         "connection": conn.peer})
            self.inputs.update(values)
            for name in values:
                self._input_updated[name] = self._time
            self._apply_io(values)
            raw = self.state._raw()
            for name, value in values.items():
                if name.startswith("input_"):  # input registers can be read back as outputs
                    raw[name] = _norm(INPUT_TYPES[name], value)
            offset = self.program.offset if self.program is not None else self._guess_offset(values)
            if values.get(f"input_int_register_{offset}") == Command.SERVOJ:
                d = [values.get(f"input_double_register_{offset + i}") for i in range(11)]
                if None not in d:
                    q = np.array(d[:6])
                    self.servoj_targets.append(q)
                    self.servoj_commands.append({"q": q, "speed": d[6], "acceleration": d[7], "time": d[8],
                                                 "lookahead_time": d[9], "gain": d[10], "controller_time": self._time})
            self._changed.notify_all()

    def _input_waiting(self, name: str) -> bool:
        """Bytes from the connection that owns input ``name`` wait unread in its socket."""
        owner = self._input_owner.get(name)
        if owner is None or owner.closed.is_set():
            return False
        try:
            return struct.unpack("i", fcntl.ioctl(owner.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    @staticmethod
    def _guess_offset(values: dict[str, Any]) -> int:
        return 24 if "input_int_register_24" in values and "input_int_register_0" not in values else 0

    def _apply_io(self, v: dict[str, Any]) -> None:
        raw = self.state._raw()
        bits = raw["actual_digital_output_bits"]
        for mask_name, value_name, shift, width in (
                ("standard_digital_output_mask", "standard_digital_output", 0, 8),
                ("configurable_digital_output_mask", "configurable_digital_output", 8, 8),
                ("tool_digital_output_mask", "tool_digital_output", 16, 2)):
            if mask_name in v and value_name in v:
                mask = (int(v[mask_name]) & ((1 << width) - 1)) << shift
                bits = (bits & ~mask) | ((int(v[value_name]) << shift) & mask)
        raw["actual_digital_output_bits"] = bits
        if v.get("speed_slider_mask") == 1 and "speed_slider_fraction" in v:
            fraction = min(max(float(v["speed_slider_fraction"]), 0.0), 1.0)
            raw["target_speed_fraction"] = fraction
            raw["speed_scaling"] = fraction
        mask = v.get("standard_analog_output_mask")
        if mask:
            for i in (0, 1):
                if mask & (1 << i) and f"standard_analog_output_{i}" in v:
                    raw[f"standard_analog_output{i}"] = float(v[f"standard_analog_output_{i}"])

    # ---- controller cycle ----
    def _tick_loop(self) -> None:
        next_time = time.monotonic()
        while not self._tick_stop.is_set():
            next_time += self.period
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.period:  # behind (this process was starved): never catch up in a burst
                # of cycles; controller time then runs slower than the wall clock, as the
                # physics does, and a client's commands queued meanwhile are read before the
                # next cycle, so the RTDE watchdog does not count this process's stall as theirs.
                next_time = time.monotonic()
            try:
                self._step()
            except Exception as error:  # keep the controller alive; the test sees it in protocol_errors
                self._protocol_error(f"controller cycle failed: {error!r}")

    def _step(self) -> None:
        now = time.monotonic()
        with self._changed:
            self._time += self.period
            self._cycle += 1
            if self._pending_program is not None and now >= self._pending_program[0]:
                _, program = self._pending_program
                self._pending_program = None
                self._start_program(program)
            program = self.program
            if program is not None and self.runtime_state == RuntimeState.PLAYING:
                if program.control_script:
                    self._run_control_script(program)
                elif now - program.started_at >= program.duration:
                    self._end_program("custom program finished")
                if self.watchdog is not None:
                    name, min_frequency = self.watchdog
                    last = self._input_updated.get(name, 0.0)
                    if self._time - last > 1.0 / min_frequency and self._input_waiting(name):
                        # the client did write; this process has not read it yet (busy machine)
                        last = self._input_updated[name] = self._time
                    if self._time - last > 1.0 / min_frequency:
                        self.watchdog_trips += 1
                        self._log("rtde", f"watchdog: {name} not updated for {self._time - last:.3f} s, stopping program")
                        self._halt_motion()
                        self._end_program("RTDE watchdog")
            self._integrate_motion()
            self._update_tcp()
            raw = self.state._raw()
            raw["timestamp"] = self._time
            raw["robot_status_bits"] = ((raw["robot_mode"] in _POWERED_MODES) * 1
                                        | (raw["runtime_state"] == RuntimeState.PLAYING) * 2)
            self._q_history.append(raw["actual_q"])
            if not self._stalled:
                self._queue_outputs()
            self._changed.notify_all()

    def _queue_outputs(self) -> None:
        raw = self.state._raw()
        for conn in list(self._connections):
            if not isinstance(conn, _RtdeConnection) or not conn.started or conn.output is None:
                continue
            if self._time + 1e-9 < conn.next_due:
                continue
            conn.next_due += 1.0 / conn.frequency
            if conn.next_due < self._time:
                conn.next_due = self._time + 1.0 / conn.frequency
            flat: list[Any] = []
            for name, kind in zip(conn.output.names, conn.output.types):
                value = raw[name]
                if isinstance(value, tuple):
                    flat.extend(value)
                else:
                    flat.append(value)
            body = struct.pack(">B", conn.output.id) + conn.output.struct.pack(*flat)
            conn.queue_output(_HEADER.pack(_HEADER.size + len(body), RTDE_DATA_PACKAGE) + body)

    # ---- program / script model (called with the lock held) ----
    def _start_program(self, program: _Program) -> None:
        program.executing = False
        program.busy_until_done = False
        program.started_at = time.monotonic()
        self.program = program
        self._last_program = program
        self.watchdog = None
        self.state.update(runtime_state=int(RuntimeState.PLAYING))
        if program.control_script:
            self._write_int(program.offset + 0, 1)  # signal_ready()
            self._async_finished()  # reset_async_progress()
        else:
            for index, value in re.findall(r"write_output_integer_register\(\s*([\d\s+]+?)\s*,\s*(-?\d+)\s*\)",
                                           program.text):
                self._write_int(sum(int(x) for x in index.split("+") if x.strip()), int(value))
        self._log("script", f"program started (control script: {program.control_script})")

    def _end_program(self, why: str) -> None:
        self._pending_program = None
        if self.program is None and self.runtime_state == RuntimeState.STOPPED:
            return
        self._halt_motion()
        self.program = None
        self.watchdog = None
        self.state.update(runtime_state=int(RuntimeState.STOPPED))
        self._log("script", f"program stopped: {why}")

    def _write_int(self, index: int, value: int) -> None:
        self.state._raw()[f"output_int_register_{index}"] = int(value)

    def _write_double(self, index: int, values: Sequence[float]) -> None:
        raw = self.state._raw()
        for i, value in enumerate(values):
            raw[f"output_double_register_{index + i}"] = float(value)

    def _async_progress(self, value: int) -> None:
        self._async_wr_count = (self._async_wr_count + 1) % 128
        if value == 0:
            self._async_op_id = (self._async_op_id + 1) % 128
        reg = self._async_wr_count * 65536 + self._async_op_id * 16777216
        if value >= 0:
            reg += min(value, 32767) + 32768
        if self.program is not None:
            self._write_int(self.program.offset + 2, reg)

    def _async_finished(self) -> None:
        self._async_progress(-1)

    def _run_control_script(self, p: _Program) -> None:
        if p.busy_until_done:
            return  # a synchronous move blocks the script loop; _integrate_motion signals done
        cmd = int(self.inputs.get(f"input_int_register_{p.offset}", 0))
        if cmd in p.realtime:
            self._execute(p, cmd)
            if self.program is p:
                self._write_int(p.offset, 1)  # signal_ready()
        elif cmd == 0:
            p.executing = False
            self._write_int(p.offset, 1)
        elif not p.executing:
            p.executing = True
            keep_running = self._execute(p, cmd)
            if not keep_running:
                self._end_program("stop script command")
            elif self.program is p and not p.busy_until_done:
                self._write_int(p.offset, 2)  # signal_done_with_cmd()

    def _registers(self, p: _Program, ints: int = 2, doubles: int = 12) -> dict[str, Any]:
        return {**{f"int{i}": self.inputs.get(f"input_int_register_{p.offset + i}", 0) for i in range(ints)},
                **{f"double{i}": self.inputs.get(f"input_double_register_{p.offset + i}", 0.0) for i in range(doubles)}}

    def _execute(self, p: _Program, cmd: int) -> bool:
        """One command of the control script; False ends the script."""
        try:
            known: Command | int = Command(cmd)
        except ValueError:
            known = cmd
        regs = self._registers(p)
        self.commands.append((known, regs))
        d = [regs[f"double{i}"] for i in range(12)]
        raw = self.state._raw()
        q_now = np.array(raw["actual_q"])
        if cmd == Command.SERVOJ:
            self._motion = None
            self._servo_target = np.array(d[:6])
            raw["target_q"] = tuple(d[:6])
        elif cmd == Command.SERVO_STOP:
            self._servo_target = None
            self._halt_motion()
        elif cmd == Command.SPEEDJ:
            self._servo_target = None
            self._motion = _Motion("speed", q_now, velocity=np.array(d[:6]))
        elif cmd in (Command.SPEED_STOP, Command.STOPJ, Command.STOPL):
            self._halt_motion()
            if cmd in (Command.STOPJ, Command.STOPL) and regs["int1"] == 1:
                self._async_progress(0)
                self._async_finished()
        elif cmd in (Command.MOVEJ, Command.MOVEL_FK):
            self._servo_target = None
            is_async = regs["int1"] == 1
            self._motion = _Motion("move", q_now, goal=np.array(d[:6]), speed=d[6], notify_done=not is_async,
                                   is_async=is_async)
            raw["target_q"] = tuple(d[:6])
            if is_async:
                self._async_progress(0)
            else:
                p.busy_until_done = True
        elif cmd == Command.SET_WATCHDOG:
            if d[0] > 0:
                name = f"input_int_register_{p.offset}"
                self.watchdog = (name, float(d[0]))
                self._input_updated[name] = self._time
        elif cmd == Command.PROTECTIVE_STOP:
            self.safety_mode = SafetyMode.PROTECTIVE_STOP
            return True
        elif cmd == Command.GET_STEPTIME:
            self._write_double(p.offset, [self.period])
        elif cmd == Command.GET_ACTUAL_JOINT_POSITIONS_HISTORY:
            steps = max(int(regs["int1"]), 0)
            history = list(self._q_history)
            self._write_double(p.offset, history[-1 - min(steps, len(history) - 1)] if history else q_now)
        elif cmd == Command.GET_JOINT_TORQUES:
            self._write_double(p.offset, [0.0] * 6)
        elif cmd == Command.IS_STEADY:
            steady = self._motion is None and self._servo_target is None and not np.any(np.abs(raw["actual_qd"]) > 1e-4)
            self._write_int(p.offset + 1, int(steady))
        elif cmd == Command.SET_PAYLOAD:
            raw["payload"] = float(d[0])
            raw["payload_cog"] = (float(d[1]), float(d[2]), float(d[3]))
        elif cmd == Command.SET_TCP:
            self.tcp_offset = np.array(d[:6])
            self._update_tcp()
        elif cmd == Command.GET_TCP_OFFSET:
            self._write_double(p.offset, self.tcp_offset)
        elif cmd in (Command.GET_FORWARD_KINEMATICS_DEFAULT, Command.GET_ACTUAL_TOOL_FLANGE_POSE):
            if self.robot_model is not None:
                offset = self.tcp_offset if cmd == Command.GET_FORWARD_KINEMATICS_DEFAULT else np.zeros(6)
                self._write_double(p.offset, forward_kinematics(self.robot_model, q_now, offset))
        elif cmd == Command.GET_FORWARD_KINEMATICS_ARGS:
            if self.robot_model is not None:
                self._write_double(p.offset, forward_kinematics(self.robot_model, d[:6], d[6:12]))
        elif cmd == Command.STOP_SCRIPT:
            return False
        return True

    def _halt_motion(self) -> None:
        self._motion = None
        self._servo_target = None
        raw = self.state._raw()
        raw["actual_qd"] = (0.0,) * 6
        raw["target_qd"] = (0.0,) * 6
        raw["target_q"] = raw["actual_q"]

    def _integrate_motion(self) -> None:
        raw = self.state._raw()
        q = np.array(raw["actual_q"])
        moving = (self.program is not None and self.runtime_state == RuntimeState.PLAYING
                  and self.safety_mode in (SafetyMode.NORMAL, SafetyMode.REDUCED)
                  and self.robot_mode == RobotMode.RUNNING)
        if not moving:
            if self._motion is not None or self._servo_target is not None:
                self._halt_motion()
            if self.plant is not None:  # the brakes hold the arm; the world goes on
                self._step_plant(np.array(raw["target_q"]))
            return
        dt = self.period * float(raw["speed_scaling"] or 0.0) if self._motion is not None else self.period
        new_q = q
        if self._servo_target is not None:
            step = self._servo_target - q
            if self.max_joint_speed is not None:
                limit = self.max_joint_speed * self.period
                step = np.clip(step, -limit, limit)
            new_q = q + step
        elif self._motion is not None:
            m = self._motion
            m.elapsed += dt
            if m.kind == "speed":
                new_q = q + m.velocity * dt
            else:
                fraction = 1.0 if m.duration <= 0 else min(m.elapsed / m.duration, 1.0)
                new_q = m.start + (m.goal - m.start) * fraction
                if fraction >= 1.0:
                    self._motion = None
                    if m.is_async:
                        self._async_finished()
                    if m.notify_done and self.program is not None:
                        self.program.busy_until_done = False
                        self._write_int(self.program.offset, 2)
        if self.plant is not None:
            if self._servo_target is not None:
                raw["target_qd"] = tuple(float(x) for x in (new_q - q) / self.period)
            self._step_plant(new_q)
            return
        qd = (new_q - q) / self.period
        raw["actual_q"] = tuple(float(x) for x in new_q)
        raw["actual_qd"] = tuple(float(x) for x in qd)
        if self._servo_target is not None:
            raw["target_qd"] = raw["actual_qd"]

    def _gripper_closed(self) -> bool:
        return bool(self.state._raw()["actual_digital_output_bits"] >> self.gripper_bit & 1)

    def _step_plant(self, q_command: np.ndarray) -> None:
        """One controller period of physics: the measured joints become ``actual_q``; a contact
        force over the plant's limit is a protective stop."""
        result = self.plant.step(q_command, self._gripper_closed(), self.period)
        raw = self.state._raw()
        raw["actual_q"] = tuple(float(x) for x in result.q)
        raw["actual_qd"] = tuple(float(x) for x in result.qd)
        if result.contact_force_n > self.plant.config.protective_stop_force_n:
            why = f"{result.contact_force_n:.0f} N contact, {result.contact}"
            self.protective_stops.append(why)
            self._log("safety", f"protective stop: {why}")
            self.safety_mode = SafetyMode.PROTECTIVE_STOP

    def _update_tcp(self) -> None:
        if self.robot_model is None:
            return
        raw = self.state._raw()
        for pose, q in (("actual_TCP_pose", "actual_q"), ("target_TCP_pose", "target_q")):
            raw[pose] = tuple(float(x) for x in forward_kinematics(self.robot_model, raw[q], self.tcp_offset))

    # ---- bookkeeping ----
    def _protocol_error(self, message: str) -> None:
        with self.lock:
            self.protocol_errors.append(message)
        self._log("error", message)

    def _log(self, source: str, message: str) -> None:
        line = f"[{self._time:9.3f}] {source}: {message}"
        if self.on_log is not None:
            self.on_log(source, message)
        self.log.append(line)
        if self.verbose:
            print("ur_controller_sim", line, flush=True)
