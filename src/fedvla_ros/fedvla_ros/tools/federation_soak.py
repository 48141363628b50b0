"""Soak and fault test of the federation on localhost (``fedvla soak``).

One ``fed_server`` process and N ``fed_client`` processes (the real nodes, synthetic data, the
tiny model) run a long federation while this harness injects faults, seeded:

* **client kills** — per round, with ``kill_probability``, a random client is SIGKILLed and
  restarted ``restart_delay_s`` later on its state directory (it resumes from its checkpoint);
* **one server restart** — at ``server_restart_round``, once an update of that round is in, the
  server is SIGKILLed and restarted on its state directory;
* **duplicated uploads** — an update the server accepted this round is sent again under its
  client's credentials (must be refused as ``duplicate_upload``), and last round's update is
  replayed into the closed round (``round_closed``);
* **delayed uploads** — an extra client, ``laggard``, begins an upload, sends half its chunks,
  stalls for a random time, then finishes: accepted if its round is still open, refused
  otherwise (``round_closed`` or ``unknown_upload`` once the server discarded the stalled upload).

The fault plan of a round (kill or not, which client, stale replay, delayed upload, duplicate) is
drawn from its own generator seeded with ``(seed, fault, round)``, so a seed gives the same plan
however fast the rounds go.

**Liveness** is checked while it runs and afterwards: a round open for longer than the server's
``round_timeout_s`` plus ``liveness_margin_s`` ends the soak at once (a stalled transport does not
heal by waiting, and nothing else in the domain must be what unblocks it), and a client that
logs more than ``max_consecutive_timeouts`` service timeouts in a row (no other line between
them) fails it too.

Afterwards it prints and writes (``soak.json``, ``soak.png``): rounds completed, updates accepted
per client, rejections by reason (the server's persisted counters and what the harness saw),
kills and restarts, the slowest rounds, the longest run of service timeouts per client, the
server's resident memory over the run (growth per round, fitted after the first rounds), and the
check that **every update a client saw acknowledged is in the persisted state** (each client logs
``round r: ...`` after its upload was acknowledged). Exit status 1 when that check, the round
count or liveness fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ACKED_LINE = re.compile(r"\]: round (\d+): loss")
# fed_client's line for a request fed_server did not answer within service_timeout_s
TIMEOUT_LINE = re.compile(r"\]: (/\S+): no answer in [\d.]+ s; retrying")
LOG_LINE = re.compile(r"^\[(DEBUG|INFO|WARN|ERROR|FATAL)\]")
LAGGARD = "laggard"
SLOWEST_SHOWN = 5
MONITOR_FRESH_CLIENTS_AFTER = 3  # status polls in a row without an answer before fresh service clients
MONITOR_TIMEOUT_S = 1.0  # a status poll's limit: status is cheap, and the harness must not wait blind


@dataclasses.dataclass
class StatusGaps:
    """The harness's own status polls: how many failed, and the longest time without an answer."""
    failures: int = 0
    streak: int = 0
    fresh_clients: int = 0
    longest_s: float = 0.0
    _since: float | None = None  # the first failed poll of the current streak

    def failed(self, now: float) -> None:
        self.failures += 1
        self.streak += 1
        self._since = now if self._since is None else self._since
        self.longest_s = max(self.longest_s, now - self._since)

    def answered(self, now: float) -> None:
        if self._since is not None:
            self.longest_s = max(self.longest_s, now - self._since)
        self.streak, self._since = 0, None


def timeout_streak(text: str) -> tuple[int, str]:
    """The longest run of consecutive service-timeout lines in one client log (any other log line
    of the node ends a run), and the service of that run's last timeout."""
    best, best_service, run = 0, "", 0
    for line in text.splitlines():
        if (m := TIMEOUT_LINE.search(line)) is not None:
            run += 1
            if run > best:
                best, best_service = run, m.group(1)
        elif LOG_LINE.match(line):
            run = 0
    return best, best_service


@dataclasses.dataclass
class SoakConfig:
    rounds: int = 50
    clients: int = 4
    seed: int = 0
    kill_probability: float = 0.3
    restart_delay_s: float = 2.0
    server_restart_round: int = -1  # -1: half-way
    duplicate_probability: float = 0.5
    stale_probability: float = 0.5
    delayed_probability: float = 0.5
    stall_max_s: float = 6.0
    secure: bool = False
    model_config: str = "model/tiny.yaml"
    chunk_size: int = 16384  # the server's upload chunk (a fetch asks for 4 of them)
    round_timeout_s: float = 60.0  # the server's round_timeout_s
    liveness_margin_s: float = 30.0  # a round open longer than round_timeout_s + this fails the soak
    max_consecutive_timeouts: int = 10  # more service timeouts in a row in one client fails the soak
    service_timeout_s: float = 3.0  # the clients' service_timeout_s
    timeout_s: float = 3600.0
    output: str = ""

    def __post_init__(self) -> None:
        if self.clients < 2 or self.rounds < 2:
            raise SystemExit("soak: at least 2 clients and 2 rounds")
        for name in ("round_timeout_s", "liveness_margin_s", "service_timeout_s", "restart_delay_s"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"soak: --{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_consecutive_timeouts < 1:
            raise SystemExit(f"soak: --max-consecutive-timeouts must be >= 1, got {self.max_consecutive_timeouts}")
        if self.chunk_size < 1024:
            raise SystemExit(f"soak: --chunk-size must be >= 1024 bytes, got {self.chunk_size}")
        for name in ("kill_probability", "duplicate_probability", "stale_probability", "delayed_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SystemExit(f"soak: --{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.server_restart_round < 0:
            self.server_restart_round = self.rounds // 2

    @property
    def round_limit_s(self) -> float:
        """The longest a round may stay open before the soak calls the federation stalled."""
        return self.round_timeout_s + self.liveness_margin_s


def _rss_mb(pid: int) -> float | None:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, config: SoakConfig, work: Path) -> None:
        from fedvla.runner import find_executable

        self.config, self.work = config, work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.client_ids = [f"robot_{i}" for i in range(config.clients)]
        self.secrets = {cid: f"soak-secret-of-{cid}-{zlib.crc32(cid.encode()):08x}" for cid in [*self.client_ids, LAGGARD]}
        self.credentials = work / "credentials.yaml"
        self.credentials.write_text("clients:\n" + "".join(f"  {k}: {v}\n" for k, v in self.secrets.items()))
        self.server_exe, self.client_exe = find_executable("fedvla_ros", "fed_server"), find_executable("fedvla_ros", "fed_client")
        if self.server_exe is None or self.client_exe is None:
            raise SystemExit("fedvla_ros is not installed: run .ci/setup")
        self.state = work / "server"
        self.server: subprocess.Popen | None = None
        self.server_starts = 0
        self.clients: dict[str, subprocess.Popen | None] = {}
        self.client_starts = {cid: 0 for cid in self.client_ids}
        self.kills: list[dict] = []
        self.unobserved_rounds: list[int] = []  # rounds the harness never saw open
        self.injected: list[dict] = []  # harness-made requests and the server's answers
        self.rss: list[tuple[float, int, int, float]] = []  # (t, round, server start, MB)
        self._restarts: list[tuple[float, str]] = []  # (when, client) pending restarts
        self.stall: dict | None = None  # the round that stayed open too long, when one did
        self.blind = StatusGaps()
        self.transport = None  # fedvla.dds.TransportChoice, set by run()

    def rng(self, fault: str, round_index: int) -> random.Random:
        """The generator of one fault in one round: the same plan for a seed, whatever the timing."""
        return random.Random(f"{self.config.seed}:{fault}:{round_index}")

    # -- processes ------------------------------------------------------------------------------
    @staticmethod
    def _command(exe: Path, executable: str, name: str, parameters: dict) -> list[str]:
        """The command line ``fedvla launch`` uses for a node (fedvla.runner.node_command)."""
        from fedvla.graph import NodeSpec, ResolvedNode
        from fedvla.runner import node_command

        spec = NodeSpec(key=name, package="fedvla_ros", executable=executable, name=name)
        return node_command(exe, ResolvedNode(spec=spec, parameter_files=(), parameter_values=parameters, arguments=()))

    def start_server(self) -> None:
        self.server_starts += 1
        params = {"model_config": self.config.model_config, "credentials_file": str(self.credentials),
                  "state_dir": str(self.state), "rounds": self.config.rounds, "quorum": 2,
                  "liveness_timeout_s": 3.0, "round_timeout_s": self.config.round_timeout_s,
                  "upload_timeout_s": 20.0, "tick_period_s": 0.2, "chunk_size": self.config.chunk_size,
                  "max_fetch_bytes": max(4 * self.config.chunk_size, 64 << 20),
                  "secure_aggregation": self.config.secure, "phase_timeout_s": 10.0}
        log = open(self.logs / f"server.{self.server_starts}.log", "w")
        self.server = subprocess.Popen(self._command(self.server_exe, "fed_server", "fed_server", params), stdout=log,
                                       stderr=subprocess.STDOUT)

    def start_client(self, client_id: str) -> None:
        self.client_starts[client_id] += 1
        params = {"model_config": self.config.model_config, "credentials_file": str(self.credentials),
                  "client_id": client_id, "state_dir": str(self.work / client_id), "synthetic_samples": 32,
                  "local_epochs": 1, "batch_size": 16, "heartbeat_interval_s": 0.5, "poll_period_s": 0.2,
                  "service_timeout_s": self.config.service_timeout_s, "seed": int(client_id.split("_")[-1])}
        log = open(self.logs / f"{client_id}.{self.client_starts[client_id]}.log", "w")
        self.clients[client_id] = subprocess.Popen(self._command(self.client_exe, "fed_client", f"fed_{client_id}", params),
                                                   stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def _kill(process: subprocess.Popen | None) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    # -- faults ---------------------------------------------------------------------------------
    def _spec_and_policy(self):
        from fedvla.federation.client import trunk_spec
        from fedvla.app.federation import resolve_config_file, trunk_policy

        policy = trunk_policy(str(resolve_config_file(self.config.model_config, "model_config")), 0)
        return trunk_spec(policy), policy

    def _record(self, kind: str, client_id: str, round_index: int, reply) -> None:
        self.injected.append({"kind": kind, "client": client_id, "round": round_index, "ok": reply.ok,
                              "reason": reply.reason})

    def _resend(self, api, kind: str, client_id: str, round_index: int, signed_round: int) -> None:
        """Send again the blob of ``client_id`` the server stored for ``round_index``."""
        from fedvla.federation.round_client import send_chunks
        from fedvla.federation.wire import sha256_hex, sign_upload

        folder = self.state / "updates" / f"round_{round_index:05d}"
        files = sorted(folder.glob(f"{client_id}.*")) if folder.is_dir() else []
        if not files:
            return
        blob = files[-1].read_bytes()
        from fedvla_ros.federation_transport import ServiceTimeout

        try:
            begun = api.begin_upload(client_id, signed_round, len(blob), sha256_hex(blob),
                                     sign_upload(self.secrets[client_id], client_id, signed_round, blob))
            if begun.ok:
                view = memoryview(blob)
                send_chunks(api, begun.upload_id, [(i, view[i * begun.chunk_size:(i + 1) * begun.chunk_size])
                                                   for i in range(begun.num_chunks)])
                begun = api.commit_upload(begun.upload_id)
        except ServiceTimeout as err:
            # A slow answer to an injected request (a busy server taking large chunks) is not a
            # fault of the federation: the liveness checks judge the clients' own requests.
            self.injected.append({"kind": kind, "client": client_id, "round": signed_round, "ok": False,
                                  "reason": f"transport: {type(err).__name__}"})
            return
        self._record(kind, client_id, signed_round, begun)

    def _laggard_upload(self, api, client, spec, status, rng: random.Random) -> None:
        """Begin, half the chunks, stall, the rest, commit (in a thread: the harness goes on)."""
        import torch

        from fedvla.federation.round_client import send_chunks
        from fedvla.federation.wire import TrunkUpdate, encode_update, sha256_hex, sign_upload

        try:
            trunk, _ = client.fetch_global(status)
            g = torch.Generator().manual_seed(rng.randrange(2**31))
            local = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in trunk.items()}
            update = TrunkUpdate(client_id=LAGGARD, round=status.round, trunk=local,
                                 expert_counts=torch.ones(spec.num_layers, spec.num_experts, dtype=torch.int64),
                                 num_samples=8)
            blob = encode_update(update, spec)
            begun = api.begin_upload(LAGGARD, status.round, len(blob), sha256_hex(blob),
                                     sign_upload(self.secrets[LAGGARD], LAGGARD, status.round, blob))
            if begun.ok:
                view = memoryview(blob)
                chunks = [(i, view[i * begun.chunk_size:(i + 1) * begun.chunk_size]) for i in range(begun.num_chunks)]
                half = len(chunks) // 2
                send_chunks(api, begun.upload_id, chunks[:half])
                time.sleep(rng.uniform(0.0, self.config.stall_max_s))
                replies = send_chunks(api, begun.upload_id, chunks[half:])
                failed = next((r for r in replies if not r.ok), None)
                begun = failed or api.commit_upload(begun.upload_id)
            self._record("delayed", LAGGARD, status.round, begun)
        except Exception as err:  # the server may be down right now: a delayed upload that never came
            self.injected.append({"kind": "delayed", "client": LAGGARD, "round": status.round, "ok": False,
                                  "reason": f"transport: {type(err).__name__}"})

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from fedvla.federation.client import FederationClient, FederationClientConfig
        from fedvla_ros.federation_transport import RosServerApi, ServiceTimeout

        from fedvla.dds import federation_transport_environment
        from fedvla.federation.state import read_json

        # The federation's DDS transport (fedvla.dds), for this process and the nodes it starts.
        self.transport = federation_transport_environment()
        spec, policy = self._spec_and_policy()
        started = time.monotonic()
        self.start_server()
        for client_id in self.client_ids:
            self.start_client(client_id)
        rclpy.init()
        node = rclpy.create_node("federation_soak")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        api = RosServerApi(node, timeout_s=self.config.service_timeout_s)  # injected requests
        monitor_timeout_s = min(MONITOR_TIMEOUT_S, self.config.service_timeout_s)
        monitor = RosServerApi(node, timeout_s=monitor_timeout_s)  # status polls
        laggard = FederationClient(FederationClientConfig(client_id=LAGGARD, state_dir=str(self.work / LAGGARD)),
                                   self.secrets[LAGGARD], policy, [], None, api)
        faults_done: set[tuple[str, int]] = set()
        server_restarted = False
        laggard_thread: threading.Thread | None = None
        finished = False
        last_round = -1
        round_seen_at = started  # when the harness first saw the current round open
        try:
            while time.monotonic() - started < self.config.timeout_s:
                time.sleep(0.25)
                now = time.monotonic()
                if now - round_seen_at > self.config.round_limit_s:
                    self.stall = {"round": last_round, "open_s": round(now - round_seen_at, 1),
                                  "t": round(now - started, 1)}
                    break
                if self.server is not None and (mb := _rss_mb(self.server.pid)) is not None:
                    self.rss.append((now - started, max(last_round, 0), self.server_starts, mb))
                for when, client_id in list(self._restarts):
                    if now >= when:
                        self._restarts.remove((when, client_id))
                        self.start_client(client_id)
                try:
                    status = monitor.status()
                    self.blind.answered(now)
                except (ServiceTimeout, RuntimeError):  # the server is restarting
                    status = None
                    self.blind.failed(now)
                    if self.blind.streak % MONITOR_FRESH_CLIENTS_AFTER == 0:
                        # Once in CI the harness got no status for the last 9 rounds after the server
                        # restart while the clients went on: start over with fresh service clients.
                        monitor.close()
                        monitor = RosServerApi(node, timeout_s=monitor_timeout_s)
                        self.blind.fresh_clients += 1
                # Rounds are observed in the server's persisted state (written atomically on every
                # change), not in the status answer: after the server restart the harness's status
                # calls went unanswered for seconds while the clients closed rounds 11-15 unseen
                # (CI), and a round without a kill closes in well under a second.
                persisted = read_json(self.state / "state.json")
                if persisted is None:  # the server has not started yet
                    continue
                if persisted["finished"]:
                    # rounds that opened and closed after the last state the harness read
                    self.unobserved_rounds.extend(range(max(last_round, 0) + 1, self.config.rounds))
                    finished = True
                    break
                r = persisted["round"]
                # Injected requests and the server restart wait for an answering server (a request
                # would block the harness for service_timeout_s while it restarts); kills are local.
                answering = status is not None and status.round == r
                accepted = [c for c in status.accepted if c in self.client_ids] if answering else []
                if r != last_round:
                    # A round that opened and closed between two reads (a slow status call on a busy
                    # machine) got no faults: counted, so the fault plan can be checked exactly.
                    self.unobserved_rounds.extend(range(max(last_round, 0) + 1, r))
                    last_round, round_seen_at = r, now
                    kill = self.rng("kill", r)
                    if r > 0 and kill.random() < self.config.kill_probability:
                        live = [c for c in self.client_ids if (p := self.clients.get(c)) is not None and p.poll() is None]
                        if live:
                            victim = kill.choice(live)
                            self._kill(self.clients[victim])
                            self.clients[victim] = None
                            self.kills.append({"client": victim, "round": r, "t": round(now - started, 2)})
                            self._restarts.append((now + self.config.restart_delay_s, victim))
                    if (answering and r > 0 and not self.config.secure
                            and self.rng("stale", r).random() < self.config.stale_probability):
                        previous = sorted((self.state / "updates" / f"round_{r - 1:05d}").glob("robot_*"))
                        if previous:
                            self._resend(api, "stale replay", previous[0].stem.split(".")[0], r - 1, r - 1)
                    if answering and not self.config.secure and not laggard.joined:
                        laggard.join()
                    delayed = self.rng("delayed", r)
                    if (answering and not self.config.secure
                            and (laggard_thread is None or not laggard_thread.is_alive())
                            and delayed.random() < self.config.delayed_probability):
                        laggard_thread = threading.Thread(target=self._laggard_upload,
                                                          args=(api, laggard, spec, status, delayed), daemon=True)
                        laggard_thread.start()
                if (accepted and ("duplicate", r) not in faults_done
                        and self.rng("duplicate", r).random() < self.config.duplicate_probability):
                    faults_done.add(("duplicate", r))
                    self._resend(api, "duplicate", accepted[0], r, r)
                if not server_restarted and r >= self.config.server_restart_round and answering and status.accepted:
                    server_restarted = True
                    self._kill(self.server)
                    self.kills.append({"client": "fed_server", "round": r, "t": round(now - started, 2)})
                    time.sleep(1.0)
                    self.start_server()
            # Clients exit by themselves once the federation finished (they write their final checkpoint).
            deadline = time.monotonic() + (60 if finished else 0)
            for process in self.clients.values():
                if process is not None:
                    try:
                        process.wait(timeout=max(1.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            for process in [*self.clients.values(), self.server]:
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGINT)
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self._kill(process)
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
        return self.figures(finished, time.monotonic() - started)

    def figures(self, finished: bool, seconds: float) -> dict:
        import numpy as np

        state = json.loads((self.state / "state.json").read_text())
        history = state["history"]
        persisted = {(c, r["round"]) for r in history for c in r["clients"]}
        acked = set()
        for log in self.logs.glob("robot_*.log"):
            client_id = log.name.split(".")[0]
            acked |= {(client_id, int(m.group(1))) for m in ACKED_LINE.finditer(log.read_text(errors="replace"))}
        acked |= {(LAGGARD, i["round"]) for i in self.injected if i["kind"] == "delayed" and i["ok"]}
        missing = sorted(acked - persisted)
        # Memory: the incarnation that served the most rounds; growth per round by least squares
        # after its first 5 rounds (imports and first allocations settle there).
        by_start: dict[int, list] = {}
        for t, r, start, mb in self.rss:
            by_start.setdefault(start, []).append((r, mb))
        longest = max(by_start.values(), key=lambda s: len({r for r, _ in s})) if by_start else []
        settled = [(r, mb) for r, mb in longest if r >= min((r for r, _ in longest), default=0) + 5]
        slope = float(np.polyfit([r for r, _ in settled], [mb for _, mb in settled], 1)[0]) if len(
            {r for r, _ in settled}) >= 3 else float("nan")
        durations = [r["duration_s"] for r in history]
        slowest = sorted(((r["round"], r["duration_s"]) for r in history), key=lambda x: -x[1])[:SLOWEST_SHOWN]
        streaks = {}
        for log in sorted(self.logs.glob("robot_*.log")):
            n, service = timeout_streak(log.read_text(errors="replace"))
            client_id = log.name.split(".")[0]
            if n > streaks.get(client_id, (0, ""))[0]:
                streaks[client_id] = (n, service)
        problems = []
        if self.stall is not None:
            problems.append(f"round {self.stall['round']} was still open after {self.stall['open_s']:g} s "
                            f"(round_timeout_s {self.config.round_timeout_s:g} + margin "
                            f"{self.config.liveness_margin_s:g} s): the soak stopped there, at t={self.stall['t']:g} s")
        problems += [f"round {r} took {d:g} s (round_timeout_s {self.config.round_timeout_s:g} + margin "
                     f"{self.config.liveness_margin_s:g} s)" for r, d in slowest if d > self.config.round_limit_s]
        problems += [f"{c} saw {n} service timeouts in a row ({service}; at most {self.config.max_consecutive_timeouts})"
                     for c, (n, service) in sorted(streaks.items()) if n > self.config.max_consecutive_timeouts]
        harness = {}
        for item in self.injected:
            key = f"{item['kind']}: {'accepted' if item['ok'] else item['reason']}"
            harness[key] = harness.get(key, 0) + 1
        return {
            "config": dataclasses.asdict(self.config), "finished": finished, "seconds": round(seconds, 1),
            "dds": self.transport.summary if self.transport is not None else None,
            "rounds_completed": len(history), "rounds_requested": self.config.rounds,
            "accepted_updates": len(persisted),
            "accepted_per_client": {c: sum(1 for cc, _ in persisted if cc == c) for c in [*self.client_ids, LAGGARD]},
            "server_rejections": state["rejections"], "harness_requests": harness,
            "aborted_secure_attempts": len(state.get("aborted_attempts") or []),
            "client_kills": sum(1 for k in self.kills if k["client"] != "fed_server"),
            "unobserved_rounds": self.unobserved_rounds,
            "harness_status": {"failed_polls": self.blind.failures, "longest_without_answer_s":
                               round(self.blind.longest_s, 1), "fresh_clients": self.blind.fresh_clients},
            "client_starts": self.client_starts, "server_starts": self.server_starts,
            "acknowledged_updates": len(acked), "acknowledged_missing_from_state": [list(m) for m in missing],
            "server_rss_mb": {"first": round(longest[0][1], 1) if longest else None,
                              "last": round(longest[-1][1], 1) if longest else None,
                              "max": round(max(mb for *_, mb in self.rss), 1) if self.rss else None,
                              "growth_mb_per_round": round(slope, 3)},
            "rss_samples": [[round(t, 2), r, s, round(mb, 1)] for t, r, s, mb in self.rss],
            "round_durations_s": durations, "kills": self.kills,
            "slowest_rounds": [[r, d] for r, d in slowest],
            "max_consecutive_timeouts": {c: n for c, (n, _) in sorted(streaks.items())},
            "liveness": {"ok": not problems, "problems": problems, "round_limit_s": self.config.round_limit_s},
        }


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5))
    samples = figures["rss_samples"]
    for start in sorted({s for _, _, s, _ in samples}):
        points = [(t, mb) for t, _, s, mb in samples if s == start]
        top.plot([t for t, _ in points], [mb for _, mb in points], label=f"server start {start}")
    for kill in figures["kills"]:
        top.axvline(kill["t"], color="red" if kill["client"] == "fed_server" else "grey", alpha=0.4, lw=0.8)
    top.set_xlabel("time (s); grey: client killed, red: server killed")
    top.set_ylabel("server RSS (MB)")
    top.legend(fontsize=7)
    bottom.bar(range(len(figures["round_durations_s"])), figures["round_durations_s"])
    bottom.set_xlabel("round")
    bottom.set_ylabel("round duration (s)")
    fig.suptitle(f"federation soak: {figures['rounds_completed']} rounds, {figures['config']['clients']} clients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_figures(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="federation soak")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rss = figures["server_rss_mb"]
    rows = [
        ("rounds completed / requested", f"{figures['rounds_completed']} / {figures['rounds_requested']}"),
        ("wall time (s)", f"{figures['seconds']:.0f}"),
        ("updates accepted (persisted)", str(figures["accepted_updates"])),
        ("... per client", ", ".join(f"{c} {n}" for c, n in figures["accepted_per_client"].items())),
        ("client kills / server starts", f"{figures['client_kills']} / {figures['server_starts']}"),
        ("rounds the harness never saw open", ", ".join(map(str, figures["unobserved_rounds"])) or "none"),
        ("harness status polls failed / longest without an answer (s) / fresh clients",
         "{failed_polls} / {longest_without_answer_s:g} / {fresh_clients}".format(**figures["harness_status"])),
        ("acknowledged updates missing from the persisted state",
         str(len(figures["acknowledged_missing_from_state"])) + f" of {figures['acknowledged_updates']}"),
        ("server rejections (persisted counters)", ", ".join(f"{k} {v}" for k, v in sorted(figures["server_rejections"].items())) or "none"),
        ("injected requests → answers", ", ".join(f"{k} ×{v}" for k, v in sorted(figures["harness_requests"].items())) or "none"),
        ("server RSS MB first / last / max", f"{rss['first']} / {rss['last']} / {rss['max']}"),
        ("server RSS growth (MB per round)", f"{rss['growth_mb_per_round']}"),
        ("slowest rounds (round: s)", ", ".join(f"{r}: {d:.1f}" for r, d in figures["slowest_rounds"]) or "none"),
        ("most service timeouts in a row", ", ".join(f"{c} {n}" for c, n in figures["max_consecutive_timeouts"].items())),
        ("liveness", "ok" if figures["liveness"]["ok"] else "FAILED"),
        ("DDS transport", figures["dds"] or "?"),
    ]
    if figures["config"]["secure"]:
        rows.append(("aborted secure attempts", str(figures["aborted_secure_attempts"])))
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for problem in figures["liveness"]["problems"]:
        console.print(f"[bold red]liveness:[/] {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(SoakConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:  # the field's own default (not an instance's: __post_init__ derives some from others)
            parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    config = SoakConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SoakConfig)})
    with tempfile.TemporaryDirectory(prefix="fedvla_soak_") as tmp:
        output = Path(config.output) if config.output else Path(tmp)
        output.mkdir(parents=True, exist_ok=True)
        figures = Soak(config, output).run()
        (output / "soak.json").write_text(json.dumps(figures, indent=1))
        plot(figures, output / "soak.png")
        print_figures(figures)
        if config.output:
            print(f"figures: {output / 'soak.json'}, plot: {output / 'soak.png'}, logs: {output / 'logs'}")
    ok = (figures["finished"] and figures["rounds_completed"] == config.rounds
          and not figures["acknowledged_missing_from_state"] and figures["liveness"]["ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
