"""``federation_mode: skills`` through ROS 2 (issue 25), encrypted (``skill_encryption: ckks``): a
fed_server holding the public key only and two fed_client nodes holding the key pair,
launched by launch_ros, run one skill round over the federation services. The server publishes a
new version of every skill a client was routed to and of the router; each robot writes the final
router and its skills; the base checkpoint is unchanged.

Without launch_pytest and launch_ros (../shared/vendor, or a ROS 2 install) this test skips.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

VENDOR_REASON = "launch_pytest/launch_ros are not installed: they come from ../shared/vendor (or a ROS 2 install)"
launch_pytest = pytest.importorskip("launch_pytest", reason=VENDOR_REASON)
launch_ros = pytest.importorskip("launch_ros", reason=VENDOR_REASON)

from launch import LaunchDescription  # noqa: E402

from support.federation import SECRETS  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]
CLIENTS = ("robot_0", "robot_1")


def _base_checkpoint(directory: Path) -> Path:
    """A tiny policy on the synthetic reaching data: the frozen base both robots run."""
    from fedvla.data.episodes import fit_normalizer
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig

    config = PolicyConfig.from_yaml(REPO / "config" / "model" / "tiny.yaml")
    policy = seeded_policy(config, 0)
    fit_normalizer(policy, SquareReachDataset(config, 32, seed=0))
    return save_checkpoint(policy, directory / "base")


def _digest(directory: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.iterdir()))).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("skills_federation")
    (directory / "credentials.yaml").write_text(yaml.safe_dump({"clients": SECRETS}))
    base = _base_checkpoint(directory)
    (directory / "base.sha256").write_text(_digest(base))
    # skill_encryption ckks: the robots get the key pair, the server a directory with public.ckks only
    from fedvla.skills.encryption import PUBLIC_KEY_FILE, write_keys

    write_keys(directory / "fleet_keys")
    (directory / "server_keys").mkdir()
    (directory / "server_keys" / PUBLIC_KEY_FILE).write_bytes((directory / "fleet_keys" / PUBLIC_KEY_FILE).read_bytes())
    return directory


@launch_pytest.fixture(scope="module")
def skills_launch(run_dir):
    common = {"federation_mode": "skills", "base_checkpoint": str(run_dir / "base"),
              "credentials_file": str(run_dir / "credentials.yaml"), "skill_encryption": "ckks"}
    server = launch_ros.actions.Node(package="fedvla_ros", executable="fed_server", name="fed_server", parameters=[{
        **common, "skill_keys": str(run_dir / "server_keys"), "state_dir": str(run_dir / "server"), "rounds": 1, "quorum": 2, "num_skills": 4, "skill_top_k": 1,
        "skill_hidden_dim": 32, "router_hidden_dim": 16, "tick_period_s": 0.2, "chunk_size": 16384}], output="screen")
    clients = [launch_ros.actions.Node(package="fedvla_ros", executable="fed_client", name="fed_client",
                                       namespace=client_id, parameters=[{
                                           **common, "skill_keys": str(run_dir / "fleet_keys"),
                                           "client_id": client_id, "state_dir": str(run_dir / client_id),
                                           "dataset": "synthetic", "synthetic_samples": 24, "local_epochs": 1,
                                           "batch_size": 8, "seed": index, "heartbeat_interval_s": 0.5,
                                           "poll_period_s": 0.2}], output="screen")
               for index, client_id in enumerate(CLIENTS)]
    return LaunchDescription([server, *clients, launch_pytest.actions.ReadyToTest()])


@pytest.mark.timeout(400)  # three cold node processes (torch, rclpy) on 2 cores, then a round
@pytest.mark.launch(fixture=skills_launch)
def test_one_skill_round_with_two_clients_through_ros(run_dir) -> None:
    state_path = run_dir / "server" / "state.json"
    finals = [run_dir / c / "final" / "skills.json" for c in CLIENTS]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
            state_path.is_file() and json.loads(state_path.read_text())["finished"] and all(p.is_file() for p in finals)):
        time.sleep(0.5)
    state = json.loads(state_path.read_text())
    assert state["finished"], state
    (record,) = state["history"]
    assert record["aggregation"] == "skills" and record["clients"] == list(CLIENTS) and record["rows"][-1] == "router"
    library = json.loads((run_dir / "server" / "library" / "library.json").read_text())
    assert library["router_version"] == 2 and library["published_round"] == 0
    for final in finals:
        saved = json.loads(final.read_text())
        assert saved["round"] == 1 and saved["router_version"] == 2 and len(saved["routed"]) == 1
        for name in saved["routed"]:  # (the trained router may route elsewhere now) the library's latest
            assert saved["versions"][name] == library["skills"][name][-1]["version"]
            assert (final.parent / "skills" / f"{name}.safetensors").is_file()
    # the skills the robots trained got version 2, with their tasks; the others kept version 1
    trained = set(record["rows"][:-1])
    assert trained and all(library["skills"][n][-1]["version"] == 2 for n in trained)
    # encrypted on the server (ckks): the aggregates are ciphertexts, the untrained first versions not
    assert all(library["skills"][n][-1]["encrypted"] for n in trained)
    assert not any(v[-1]["encrypted"] for n, v in library["skills"].items() if n not in trained)
    assert all(v[-1]["version"] == 1 for n, v in library["skills"].items() if n not in trained)
    assert all(set(library["skills"][n][-1]["tasks"]) <= {f"synthetic:{c}" for c in CLIENTS} for n in trained)
    assert _digest(run_dir / "base") == (run_dir / "base.sha256").read_text()  # the base never changed
