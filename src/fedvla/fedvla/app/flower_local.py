"""Flower on this machine: a SuperLink (simulation, or TLS with SuperNode authentication),
SuperNodes and ``flwr`` CLI calls on loopback, offline, stopped when the ``with`` block ends.
Used by ``fedvla bench transfer``'s Flower path and by the Flower app's tests."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr (and what they start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    """Offline and quiet: no telemetry, no update check, no runtime dependency installation; the
    SuperLink and SuperNodes find flwr-serverapp / flwr-clientapp on PATH."""
    home.mkdir(parents=True, exist_ok=True)
    # One intra-op thread per Flower process: on a busy 2-core CI machine two ClientApps with two
    # OpenMP threads each once sat 10 min in one backward pass (threads spinning at a barrier
    # for a starved peer). Ray does the same for the Simulation Engine's actors.
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def write_connection(home: Path, name: str, port: int, root_certificates: Path | None = None) -> None:
    lines = [f"[superlink.{name}]", f'address = "127.0.0.1:{port}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true")
    with open(home / "config.toml", "a") as config:
        config.write("\n".join(lines) + "\n")


class Processes:
    """Started processes, each logging to its own file; stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        logs.mkdir(parents=True, exist_ok=True)
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.running.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_healthy(port: int, ca: Path | None = None, timeout_s: float = 60.0) -> None:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, context=context, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the SuperLink on {port} did not answer {url} within {timeout_s:g} s")


def flwr(env: dict[str, str], *arguments: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *arguments], capture_output=True, text=True, env=env, timeout=timeout_s)


def run_config(values: dict) -> str:
    """``flwr run -c`` text: strings quoted as TOML wants."""
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in values.items())


def start_tls_superlink(processes: Processes, credentials, port: int) -> None:
    """A SuperLink with TLS and SuperNode authentication on loopback (``credentials``: a
    :class:`fedvla.federation.flower_credentials.FlowerCredentials`), answered once healthy."""
    processes.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(credentials.ca_certificate),
                                  "--ssl-certfile", str(credentials.server_certificate), "--ssl-keyfile",
                                  str(credentials.server_key), "--enable-supernode-auth", "--host", "127.0.0.1",
                                  "--port", str(port), "--disable-runtime-dependency-installation"])
    wait_healthy(port, credentials.ca_certificate)


def register_supernode(env: dict[str, str], credentials, node: str, connection: str) -> None:
    registered = flwr(env, "supernode", "register", str(credentials.node_public_key(node)), connection)
    if registered.returncode != 0:
        raise RuntimeError(f"flwr supernode register {node} failed: {registered.stdout[-1000:]}{registered.stderr[-1000:]}")


def start_supernode(processes: Processes, credentials, node: str, port: int, node_config: str = "",
                    max_retries: int | None = None):
    """One authenticated SuperNode for ``node`` (its own key) on the SuperLink at ``port``."""
    command = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates",
               str(credentials.ca_certificate), "--auth-supernode-private-key", str(credentials.node_key(node)),
               "--port", str(free_port())]
    if node_config:
        command += ["--node-config", node_config]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return processes.start(node, command)
