"""The Flower App (flower_app/, fedvla.app.flower) run by `flwr run`: on the Simulation Engine with
three virtual robots, each round's aggregate equals the in-process EDA of the updates the robots
sent; on the Deployment Engine, a SuperLink with TLS and SuperNode authentication and two
SuperNodes on loopback run two rounds end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvla.app.flower_local import (BIN, Processes, flower_env, flwr, free_port, register_supernode, run_config,
                                     start_supernode, start_tls_superlink, wait_healthy, write_connection)

APP = Path(__file__).resolve().parents[3] / "flower_app"

pytest.importorskip("flwr")
pytestmark = pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="flwr's executables are not installed")
ROUNDS = 2


def _updates(clients_root, round_index: int):
    """The trunks, counts and sample counts the robots sent in one round (their own records)."""
    from safetensors.torch import load_file

    trunks, counts, samples = [], [], []
    for path in sorted(clients_root.glob(f"*/updates/round_{round_index:05d}.safetensors")):
        tensors = load_file(str(path))
        counts.append(tensors.pop("__expert_counts__").numpy())
        samples.append(float(tensors.pop("__num_samples__")[0]))
        trunks.append(tensors)
    return trunks, np.stack(counts), samples


def _simulate(tmp_path, **extra):
    env = flower_env(tmp_path / "home")
    port = free_port()
    write_connection(tmp_path / "home", "sim", port)
    with Processes(tmp_path / "logs", env) as processes:
        processes.start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
                                      "--port", str(port), "--disable-runtime-dependency-installation"])
        wait_healthy(port)
        settings = {"num-server-rounds": ROUNDS, "output-dir": str(tmp_path / "server"),
                    "state-root": str(tmp_path / "clients"), "record-updates": True, "synthetic-samples": 32, **extra}
        run = flwr(env, "run", str(APP), "sim", "--stream", "--federation-config",
                   "num-supernodes=3 client-resources-num-cpus=1", "-c", run_config(settings))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((tmp_path / "server" / "rounds.json").read_text())


@pytest.mark.timeout(600)  # a SuperLink, Ray and three ClientApps on 2 cores
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg+"])
def test_simulation_rounds_aggregate_as_in_process_eda(tmp_path, secure) -> None:
    """Plain, and under Flower's SecAgg+ (robots upload trunks pre-weighted with their EDA weights;
    the server sums them in 2^26 quantisation steps over ±8)."""
    from safetensors.torch import load_file

    from fedvla.federation.aggregator import Aggregation, Aggregator
    from fedvla.model.trunk import Trunk

    rounds = _simulate(tmp_path, **({"secure-aggregation": True} if secure else {}))
    tolerance = 3 * 16 / 2 ** 26 if secure else 1e-6  # three robots' quantisation steps
    assert [r["round"] for r in rounds] == [1, 2] and all(len(r["node_ids"]) == 3 and not r["dropped"] for r in rounds)
    for r in rounds:
        trunks, counts, samples = _updates(tmp_path / "clients", r["round"])
        assert len(trunks) == 3
        layers = max(Trunk.layer_of(k) for k in trunks[0] if Trunk.layer_of(k) is not None) + 1
        expected, weights = Aggregator(Aggregation.EDA).aggregate(trunks, counts, samples, layers, Trunk.layer_of)
        aggregate = load_file(str(tmp_path / "server" / f"round_{r['round']:05d}.safetensors"))
        assert set(aggregate) == set(trunks[0])  # the trunk alone: stems, head, normaliser stay on the robots
        for name, value in aggregate.items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=tolerance)
        # the same weights, whatever order Flower's node ids put the robots in
        np.testing.assert_allclose(np.sort(np.array(r["layer_weights"]), axis=1), np.sort(weights, axis=1), atol=1e-5)
    for robot in sorted((tmp_path / "clients").iterdir()):
        assert (robot / "checkpoint").is_dir()  # the robot's own policy, stems and head included
    final = load_file(str(tmp_path / "server" / "global_trunk.safetensors"))
    for name, value in final.items():
        torch.testing.assert_close(value, load_file(str(tmp_path / "server" / f"round_{ROUNDS:05d}.safetensors"))[name])


@pytest.mark.timeout(600)
def test_deployment_with_tls_and_supernode_authentication_runs_two_rounds(tmp_path) -> None:
    from fedvla.federation.flower_credentials import make_flower_credentials

    credentials = make_flower_credentials(tmp_path / "credentials", ["127.0.0.1", "localhost"],
                                          ["robot_a", "robot_b", "stranger"])
    env = flower_env(tmp_path / "home")
    port = free_port()
    write_connection(tmp_path / "home", "site", port, credentials.ca_certificate)
    with Processes(tmp_path / "logs", env) as processes:
        start_tls_superlink(processes, credentials, port)
        for robot in ("robot_a", "robot_b"):
            register_supernode(env, credentials, robot, "site")
        for i, robot in enumerate(("robot_a", "robot_b", "stranger")):
            start_supernode(processes, credentials, robot, port,
                            f'client-id="{robot}" state-dir="{tmp_path / robot}" seed={i}', max_retries=2)
        settings = {"num-server-rounds": ROUNDS, "output-dir": str(tmp_path / "server"), "synthetic-samples": 32}
        run = flwr(env, "run", str(APP), "site", "--stream", "-c", run_config(settings))
        stranger = processes.running[-1][1]
        stranger.wait(timeout=60)  # a key never registered is refused
        assert stranger.returncode != 0, processes.log("stranger")[-2000:]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + processes.log("superlink")[-2000:]
    rounds = json.loads((tmp_path / "server" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2] and all(len(r["node_ids"]) == 2 for r in rounds)
    assert (tmp_path / "server" / "global_trunk.safetensors").stat().st_size > 0
    assert (tmp_path / "robot_a" / "checkpoint").is_dir() and (tmp_path / "robot_b" / "checkpoint").is_dir()
    assert not (tmp_path / "stranger").exists()
