"""The controller's TCP side: loopback address choice, one accepted client, and the RTDE session
(protocol version, recipes, output stream, input packages)."""
from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

from fedvla.twin.ur_controller.protocol import (
    _HEADER, _TYPE_FORMAT, DEFAULT_PORTS, RTDE_CONTROL_PACKAGE_PAUSE, RTDE_CONTROL_PACKAGE_SETUP_INPUTS,
    RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS, RTDE_CONTROL_PACKAGE_START, RTDE_DATA_PACKAGE, RTDE_GET_URCONTROL_VERSION,
    RTDE_REQUEST_PROTOCOL_VERSION, RTDE_TEXT_MESSAGE)


def _set_linger_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def free_loopback_host(ports: Iterable[int] = DEFAULT_PORTS.values(), prefer: str | None = None) -> str:
    """A loopback address on which all ``ports`` can be bound now: a per-process 127.x.y.z address on
    Linux (all of 127/8 is loopback there), else 127.0.0.1. Raises OSError when none is free."""
    pid = os.getpid()
    candidates = [prefer] if prefer else []
    for k in range(16):
        n = (pid * 16 + k) % (254 * 254 * 200)
        candidates.append(f"127.{(n // (254 * 254)) % 200 + 50}.{(n // 254) % 254 + 1}.{n % 254 + 1}")
    candidates.append("127.0.0.1")
    last_error: OSError | None = None
    for host in candidates:
        probes = []
        try:
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            return host
        except OSError as error:
            last_error = error
        finally:
            for s in probes:
                s.close()
    raise OSError(errno.EADDRINUSE, f"no loopback address with ports {list(ports)} free: {last_error}")



class _Recipe:
    def __init__(self, recipe_id: int, names: list[str], types: list[str]) -> None:
        self.id = recipe_id
        self.names = names
        self.types = types
        self.struct = struct.Struct(">" + "".join(_TYPE_FORMAT[t][0] for t in types))


class _Connection:
    """One accepted TCP client of any of the servers."""

    # sim: the ControllerCore (untyped: core imports this module)
    def __init__(self, sim: Any, sock: socket.socket, kind: str) -> None:
        self.sim, self.sock, self.kind = sim, sock, kind
        self.send_lock = threading.Lock()
        self.closed = threading.Event()
        try:
            self.peer = sock.getpeername()
        except OSError:  # already gone
            self.peer = ("?", 0)
        self.thread: threading.Thread | None = None

    def send(self, data: bytes) -> bool:
        try:
            with self.send_lock:
                self.sock.sendall(data)
            return True
        except OSError:
            self.close()
            return False

    def lines(self, chunk_size: int = 4096):
        """The client's text lines (decoded, without the line end) until it leaves: the dashboard
        and the script port are line protocols."""
        buffer = b""
        while not self.closed.is_set():
            try:
                chunk = self.sock.recv(chunk_size)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                yield raw.decode("utf-8", "replace").rstrip("\r")

    def close(self, abort: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if abort:
            _set_linger_reset(self.sock)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class _RtdeConnection(_Connection):
    def __init__(self, sim: Any, sock: socket.socket) -> None:
        super().__init__(sim, sock, "rtde")
        self.protocol_version = 1
        self.output: _Recipe | None = None
        self.frequency = 0.0
        self.next_output_id = 1
        self.inputs: dict[int, _Recipe] = {}
        self.next_input_id = 1
        self.started = False
        self.outbox: collections.deque[bytes] = collections.deque(maxlen=8)
        self.outbox_ready = threading.Condition()
        self.next_due = 0.0  # controller time of the next output package

    def message(self, kind: int, payload: bytes = b"") -> bool:
        return self.send(_HEADER.pack(_HEADER.size + len(payload), kind) + payload)

    def run(self) -> None:
        sender = threading.Thread(target=self._sender, name=f"ur-sim-rtde-send-{self.peer[1]}", daemon=True)
        sender.start()
        try:
            while not self.closed.is_set():
                header = _recv_exact(self.sock, _HEADER.size)
                if header is None:
                    break
                size, kind = _HEADER.unpack(header)
                payload = _recv_exact(self.sock, size - _HEADER.size) if size > _HEADER.size else b""
                if payload is None:
                    break
                try:
                    self.handle(kind, payload)
                except (struct.error, ValueError, IndexError, KeyError) as error:
                    self.sim._protocol_error(f"malformed RTDE message type {kind}: {error!r}")
        except OSError:
            pass
        finally:
            self.close()
            with self.outbox_ready:
                self.outbox_ready.notify_all()
            sender.join(timeout=1.0)
            self.sim._release_inputs(self)

    def _sender(self) -> None:
        while not self.closed.is_set():
            with self.outbox_ready:
                while not self.outbox and not self.closed.is_set():
                    self.outbox_ready.wait(0.1)
                packets = list(self.outbox)
                self.outbox.clear()
            for packet in packets:
                if not self.send(packet):
                    return

    def handle(self, kind: int, payload: bytes) -> None:
        sim = self.sim
        if kind == RTDE_REQUEST_PROTOCOL_VERSION:
            (version,) = struct.unpack(">H", payload[:2])
            accepted = version == 2  # version 1 (no recipe ids) is not emulated
            if accepted:
                self.protocol_version = version
            self.message(kind, struct.pack(">B", int(accepted)))
        elif kind == RTDE_GET_URCONTROL_VERSION:
            major, minor, bugfix = sim.urcontrol_version
            self.message(kind, struct.pack(">IIII", major, minor, bugfix, sim.build_number))
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS:
            (frequency,) = struct.unpack(">d", payload[:8])
            names = [n for n in payload[8:].decode("ascii", "replace").split(",") if n]
            types = [sim._output_type(n) for n in names]
            ok = names and "NOT_FOUND" not in types and 0 < frequency
            recipe_id = self.next_output_id if ok else 0
            with sim.lock:
                sim.output_recipes.append({"names": names, "frequency": frequency, "types": types,
                                           "connection": self.peer})
                if ok:
                    self.next_output_id += 1
                    self.output = _Recipe(recipe_id, names, types)
                    self.frequency = min(float(frequency), sim.controller_frequency)
                    self.next_due = sim._time
            sim._log("rtde", f"setup outputs {names} @ {frequency} Hz -> {types}")
            self.message(kind, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_INPUTS:
            names = [n for n in payload.decode("ascii", "replace").split(",") if n]
            types = sim._claim_inputs(self, names)
            ok = names and all(t in _TYPE_FORMAT for t in types)
            recipe_id = self.next_input_id if ok else 0
            if ok:
                self.inputs[recipe_id] = _Recipe(recipe_id, names, types)
                self.next_input_id += 1
            sim._log("rtde", f"setup inputs #{recipe_id} {names} -> {types}")
            self.message(kind, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_START:
            ok = self.output is not None or bool(self.inputs)
            with sim.lock:
                self.started = ok
                self.next_due = sim._time
            self.message(kind, struct.pack(">B", int(ok)))
        elif kind == RTDE_CONTROL_PACKAGE_PAUSE:
            with sim.lock:
                self.started = False
            with self.outbox_ready:
                self.outbox.clear()
            self.message(kind, struct.pack(">B", 1))
        elif kind == RTDE_DATA_PACKAGE:
            recipe = self.inputs.get(payload[0]) if payload else None
            if recipe is None or len(payload) - 1 != recipe.struct.size:
                sim._protocol_error(f"data package for unknown recipe or of wrong size: "
                                    f"id {payload[:1].hex()} {len(payload) - 1} bytes")
                return
            flat = list(recipe.struct.unpack(payload[1:]))
            values: dict[str, Any] = {}
            for name, kind_name in zip(recipe.names, recipe.types):
                n = _TYPE_FORMAT[kind_name][1]
                values[name] = flat[0] if n == 1 else tuple(flat[:n])
                del flat[:n]
            sim._on_input(self, recipe.id, values)
        elif kind == RTDE_TEXT_MESSAGE:
            sim._log("rtde", f"text message from client: {payload!r}")
        else:
            sim._protocol_error(f"unknown RTDE message type {kind}")

    def queue_output(self, packet: bytes) -> None:
        with self.outbox_ready:
            self.outbox.append(packet)
            self.outbox_ready.notify()
