"""fed_server and fed_client nodes over ROS 2 services: three client processes, three rounds,
one client killed mid-round, the server killed mid-round and restarted; then a fault suite of
bad uploads sent through the services, each refused with its reason."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from support.federation import SECRETS, fault_cases, random_update
from support.ros import SpinningNode, start_node, stop_process

rclpy = pytest.importorskip("rclpy")
from fedvla.federation.client import trunk_spec  # noqa: E402
from fedvla.app.federation import trunk_policy  # noqa: E402
from fedvla.federation.wire import encode_update, sign  # noqa: E402
from fedvla_interfaces.msg import FederationRound  # noqa: E402
from fedvla.topics import FEDERATION_ROUND  # noqa: E402
from fedvla_ros.federation_transport import RosServerApi  # noqa: E402
from fedvla_ros.qos import ROUND_EVENTS_QOS  # noqa: E402
from support.federation import upload  # noqa: E402

pytestmark = pytest.mark.ros
TINY = str(Path(__file__).resolve().parents[2] / "config" / "model" / "tiny.yaml")


@pytest.fixture
def credentials(tmp_path) -> str:
    path = tmp_path / "credentials.yaml"
    path.write_text(yaml.safe_dump({"clients": SECRETS}))
    return str(path)


def server_params(credentials: str, state_dir: Path, **extra) -> dict:
    return {"model_config": TINY, "credentials_file": credentials, "state_dir": str(state_dir), "rounds": 3,
            "quorum": 2, "liveness_timeout_s": 4.0, "round_timeout_s": 120.0, "tick_period_s": 0.2,
            "chunk_size": 16384, **extra}


def wait_until(predicate, what: str, timeout_s: float = 90.0, period_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"timed out waiting for {what}")


def start_clients(tmp_path: Path, credentials: str, epochs: dict[str, int], **extra) -> dict:
    """One fed_client process per client id in SECRETS, on synthetic data."""
    return {client_id: start_node("fedvla_ros", "fed_client", f"fed_{client_id}", parameters={
        "model_config": TINY, "credentials_file": credentials, "client_id": client_id,
        "state_dir": str(tmp_path / client_id), "synthetic_samples": 32, "local_epochs": epochs[client_id],
        "batch_size": 16, "heartbeat_interval_s": 0.5, "poll_period_s": 0.2, "service_timeout_s": 5.0, **extra})
        for client_id in SECRETS}


def assert_finished_with_final_checkpoints(clients: dict, tmp_path: Path, survivors=("robot_0", "robot_1")) -> None:
    for client_id in survivors:
        out, err = clients[client_id].communicate(timeout=60)
        assert clients[client_id].returncode == 0, err[-2000:]
        assert (tmp_path / client_id / "final" / "model.safetensors").is_file()


def safe_status(api: RosServerApi):
    try:
        return api.status()
    except RuntimeError:
        return None


def test_three_clients_three_rounds_with_a_client_and_the_server_killed(rclpy_context, tmp_path, credentials):
    state = tmp_path / "server"
    server = start_node("fedvla_ros", "fed_server", "fed_server", parameters=server_params(credentials, state))
    epochs = {"robot_0": 1, "robot_1": 8, "robot_2": 200}  # robot_1 slower than robot_0; robot_2 never finishes
    clients = start_clients(tmp_path, credentials, epochs)
    try:
        with SpinningNode(rclpy_context, "federation_observer") as node:
            events = []
            # Transient-local, as published: the restarted server may close round 1 before discovery ends.
            node.create_subscription(FederationRound, FEDERATION_ROUND, lambda m: events.append((m.event, m.round)),
                                     ROUND_EVENTS_QOS)
            api = RosServerApi(node, timeout_s=5.0)
            # Round 0: robot_0 and robot_1 upload; robot_2 is still training when it is killed.
            wait_until(lambda: (s := safe_status(api)) and sorted(s.accepted) == ["robot_0", "robot_1"],
                       "robot_0 and robot_1 to upload round 0")
            clients["robot_2"].send_signal(signal.SIGKILL)
            clients["robot_2"].wait()
            wait_until(lambda: (s := safe_status(api)) and s.round >= 1, "round 0 to close without robot_2")
            # Round 1: kill the server once robot_0's update is in, restart it on the same state.
            wait_until(lambda: (s := safe_status(api)) and s.round == 1 and s.accepted == ["robot_0"],
                       "robot_0's round-1 update")
            server.send_signal(signal.SIGKILL)
            server.wait()
            persisted = json.loads((state / "state.json").read_text())
            assert persisted["round"] == 1 and list(persisted["accepted"]) == ["robot_0"]
            server = start_node("fedvla_ros", "fed_server", "fed_server", parameters=server_params(credentials, state))
            wait_until(lambda: (s := safe_status(api)) and s.finished, "the federation to finish", timeout_s=120)
            wait_until(lambda: ("finished", 3) in events, "the finished event")
        # Round events on the topic, the restarted server's included.
        assert {("closed", 0), ("closed", 1), ("closed", 2), ("started", 1), ("started", 2)} <= set(events)
        assert_finished_with_final_checkpoints(clients, tmp_path)
    finally:
        for process in clients.values():
            stop_process(process)
        out, err = stop_process(server)
    history = json.loads((state / "state.json").read_text())["history"]
    assert [r["round"] for r in history] == [0, 1, 2]
    assert history[0]["clients"] == ["robot_0", "robot_1"] and history[0]["dropped"] == ["robot_2"]
    assert history[1]["clients"] == ["robot_0", "robot_1"]  # robot_0's pre-crash update was kept
    assert "resumed federation at round 1 with 1 accepted update(s) (robot_0)" in err


class RemoteServer:
    """The fault suite's view of the server node: its requests over ROS, the spec computed locally."""

    def __init__(self, api: RosServerApi, spec) -> None:
        self.api, self.spec = api, spec
        self.global_trunk = {name: torch.zeros(shape) for name, shape in spec.shapes.items()}

    @property
    def round(self) -> int:
        return self.api.status().round

    def __getattr__(self, name: str):
        return getattr(self.api, name)


def test_fault_suite_over_ros_services(rclpy_context, tmp_path, credentials):
    server = start_node("fedvla_ros", "fed_server", "fed_server",
                        parameters=server_params(credentials, tmp_path / "server", rounds=5, quorum=3,
                                                 liveness_timeout_s=600.0))
    spec = trunk_spec(trunk_policy(TINY, 0))
    try:
        with SpinningNode(rclpy_context, "federation_attacker") as node:
            remote = RemoteServer(RosServerApi(node, timeout_s=10.0), spec)
            for client_id in ("robot_0", "robot_1"):
                assert remote.join(client_id, spec.trunk_hash, sign(SECRETS[client_id], "join", client_id, 0,
                                                                     spec.trunk_hash)).ok
            # Quorum 3: all three clients close round 0, so round 1 exists to be stale about.
            assert remote.join("robot_2", spec.trunk_hash, sign(SECRETS["robot_2"], "join", "robot_2", 0, spec.trunk_hash)).ok
            for i, client_id in enumerate(SECRETS):
                assert upload(remote, client_id, encode_update(random_update(remote, client_id, seed=i), spec)).ok
            wait_until(lambda: remote.round == 1, "round 0 to close")
            accepted = encode_update(random_update(remote, "robot_1", seed=9), spec)
            assert upload(remote, "robot_1", accepted).ok
            before = remote.status()
            cases = [c for c in fault_cases(remote, accepted) if c[0] != "not joined"]  # robot_2 joined here
            assert len(cases) >= 20
            for name, reason, call in cases:
                reply = call()
                assert not reply.ok and reply.reason == reason, f"{name}: got {reply.reason} ({reply.detail})"
            after = remote.status()
            assert after.round == 1 and after.accepted == ["robot_1"]
            assert after.global_sha256 == before.global_sha256
    finally:
        out, err = stop_process(server)
    assert err.count("rejected ") >= len(cases)


def test_secure_aggregation_over_ros_with_a_client_killed_mid_round(rclpy_context, tmp_path, credentials):
    """Three client processes under secure aggregation; robot_2 is killed once the first round has
    fixed its participants: the round completes from the survivors (recovering robot_2's masks if
    it had shared), the second runs with two, and the server never stores a plain trunk."""
    state = tmp_path / "server"
    server = start_node("fedvla_ros", "fed_server", "fed_server", parameters=server_params(
        credentials, state, rounds=2, secure_aggregation=True, phase_timeout_s=20.0))
    clients = start_clients(tmp_path, credentials, dict.fromkeys(SECRETS, 1), count_privacy="normalized")
    try:
        with SpinningNode(rclpy_context, "federation_observer") as node:
            api = RosServerApi(node, timeout_s=5.0)
            wait_until(lambda: (s := safe_status(api)) and s.round == 0 and s.phase in ("shares", "masked", "unmask"),
                       "round 0 to fix its participants")
            clients["robot_2"].send_signal(signal.SIGKILL)
            clients["robot_2"].wait()
            wait_until(lambda: (s := safe_status(api)) and s.finished, "the secure federation to finish", timeout_s=150)
        assert_finished_with_final_checkpoints(clients, tmp_path)
    finally:
        for process in clients.values():
            stop_process(process)
        out, err = stop_process(server)
    persisted = json.loads((state / "state.json").read_text())
    history = persisted["history"]
    assert [r["round"] for r in history] == [0, 1] and all(r["secure"] for r in history), history
    assert "robot_0" in history[0]["clients"] and "robot_1" in history[0]["clients"]
    assert history[1]["clients"] == ["robot_0", "robot_1"] and history[1]["dropped"] == ["robot_2"]
    assert not list((state / "updates").rglob("*.safetensors")), "a plain trunk update was stored"
    assert "under secure aggregation" in err
    # (a request racing a phase change is refused as wrong_round/round_closed and retried; nothing else)
    assert not set(persisted["rejections"]) - {"wrong_round", "round_closed"}, persisted["rejections"]
