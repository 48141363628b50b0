"""Secure aggregation for EDA: the sum equals plaintext EDA, one upload looks random, dropouts are
recovered, malformed or out-of-turn messages are refused."""
import numpy as np
import pytest
import torch
from scipy import stats

from fedvla.federation.eda import aggregate_trunks, expert_driven_weights
from fedvla.federation.secagg import (SecAggClient, SecAggError, SecAggRound, SecAggServer, decode_fixed_point,
                                      encode_fixed_point, shamir_combine, shamir_split, simulate_round, vector_to_trunk,
                                      weighted_trunk_vector)

CLIENTS = ("robot_a", "robot_b", "robot_c", "robot_d")


def _run_round(inputs, threshold, **options):
    result = simulate_round(inputs, threshold, round_index=7, **options)
    return result.server, result.total


def test_primitives_round_trip() -> None:
    values = np.array([0.0, 1.5, -2.25, 3e-7, -1234.5])
    np.testing.assert_allclose(decode_fixed_point(encode_fixed_point(values)), values, atol=2**-25)
    with pytest.raises(SecAggError, match="finite"):
        encode_fixed_point(np.array([np.nan]))
    secret = bytes(range(32))
    shares = shamir_split(secret, 3, [1, 2, 3, 4, 5])
    assert shamir_combine({x: shares[x] for x in (5, 2, 4)}, 3) == secret
    with pytest.raises(SecAggError, match="inconsistent"):  # two shares of a 3-of-n secret, read as 2-of-n
        shamir_combine({x: shares[x] for x in (1, 2)}, 2)
    with pytest.raises(SecAggError, match="2 shares cannot rebuild"):
        shamir_combine({x: shares[x] for x in (1, 2)}, 3)


def test_the_secure_aggregate_is_plaintext_eda_within_the_quantisation_bound() -> None:
    rng = np.random.default_rng(0)
    layers = 3
    trunks = [{f"blocks.{l}.w": torch.from_numpy(rng.normal(0, 0.5, (6, 5))).float() for l in range(layers)}
              | {"norm.weight": torch.from_numpy(rng.normal(1, 0.1, 5)).float()} for _ in CLIENTS]
    counts = rng.integers(0, 50, (len(CLIENTS), layers, 4))
    weights = expert_driven_weights(counts)  # (L, C): what the server broadcasts after the counts

    def layer_of(name):
        return int(name.split(".")[1]) if name.startswith("blocks.") else None

    plain = aggregate_trunks(trunks, weights, layer_of)
    inputs = {c: weighted_trunk_vector(trunks[i], weights[:, i], weights.mean(axis=0)[i], layer_of)
              for i, c in enumerate(CLIENTS)}
    _, total = _run_round(inputs, threshold=3)
    secure = vector_to_trunk(total, trunks[0])
    bound = len(CLIENTS) * 2.0 ** -25 + 1e-6  # quantisation, plus float32 storage of the trunk
    for name, tensor in plain.items():
        np.testing.assert_allclose(secure[name].numpy(), tensor.numpy(), atol=bound, err_msg=name)


def test_one_masked_upload_is_indistinguishable_from_random() -> None:
    length = 20_000
    trunk = np.full(length, 0.125)  # as structured as an input can be
    round_ = SecAggRound(round_index=1, participants=CLIENTS[:3], threshold=2, length=length)
    clients = {c: SecAggClient(c, round_.round_index) for c in CLIENTS[:3]}
    roster = {c: client.public_keys() for c, client in clients.items()}
    for client in clients.values():
        client.share_keys(round_, roster)
    masked = clients["robot_a"].masked_input(trunk, list(clients))
    uniform = masked.astype(np.float64) / 2.0**64
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    low_bytes = (masked & np.uint64(0xFF)).astype(np.int64)
    assert stats.chisquare(np.bincount(low_bytes, minlength=256)).pvalue > 1e-3
    # the same test sees the unmasked encoding at once: it can fail
    assert stats.kstest(encode_fixed_point(trunk).astype(np.float64) / 2.0**64, "uniform").pvalue < 1e-6


def test_dropouts_before_upload_and_during_unmasking_are_recovered() -> None:
    rng = np.random.default_rng(1)
    inputs = {c: rng.normal(size=64) for c in CLIENTS}
    # robot_d shared its keys (the others masked with it) and then vanished; robot_c uploaded but
    # does not answer the unmasking: 2 responses meet the threshold of 2.
    server, total = _run_round(inputs, threshold=2, drop_before_upload=("robot_d",), silent_in_unmask=("robot_c",))
    expected = sum(inputs[c] for c in ("robot_a", "robot_b", "robot_c"))
    np.testing.assert_allclose(total, expected, atol=3 * 2.0 ** -25)
    assert sorted(server.masked) == ["robot_a", "robot_b", "robot_c"]
    # below the threshold the server learns nothing
    with pytest.raises(SecAggError, match="unmasking responses"):
        _run_round(inputs, threshold=3, drop_before_upload=("robot_d",), silent_in_unmask=("robot_c",))


def test_malformed_and_out_of_turn_messages_are_refused() -> None:
    length = 16
    round_ = SecAggRound(round_index=2, participants=CLIENTS[:3], threshold=2, length=length)
    server = SecAggServer(round_)
    clients = {c: SecAggClient(c, round_.round_index) for c in CLIENTS[:3]}
    for client in clients.values():
        server.register_keys(client.public_keys())
    with pytest.raises(SecAggError, match="robot_a: uploaded a masked input without having shared its keys"):
        server.receive_masked("robot_a", np.zeros(length, np.uint64))
    roster = server.roster()
    for name, client in clients.items():
        server.route_shares(name, client.share_keys(round_, roster))
    for name, client in clients.items():
        client.receive_shares(server.shares_for(name))
    with pytest.raises(SecAggError, match=r"uint64 of shape \(16,\), got uint64 \(15,\)"):
        server.receive_masked("robot_a", np.zeros(length - 1, np.uint64))
    with pytest.raises(SecAggError, match="got float64"):
        server.receive_masked("robot_a", np.zeros(length))
    server.receive_masked("robot_a", clients["robot_a"].masked_input(np.ones(length), list(clients)))
    with pytest.raises(SecAggError, match="uploaded twice"):
        server.receive_masked("robot_a", np.zeros(length, np.uint64))
    with pytest.raises(SecAggError, match="not a participant"):
        server.register_keys(clients["robot_a"].public_keys().__class__("intruder", bytes(32), bytes(32)))
    with pytest.raises(SecAggError, match="every other participant exactly once"):
        server.route_shares("robot_b", {"robot_a": b"x"})
    assert [who for who, _ in server.rejected] == ["robot_a", "robot_a", "robot_a", "robot_a", "intruder", "robot_b"]
    # a client never reveals both secrets of one peer, and a tampered share does not open
    with pytest.raises(SecAggError, match="both uploaded and dropped"):
        clients["robot_b"].unmask_shares(["robot_a", "robot_c"], ["robot_c"])
    blob = bytearray(server.shares_for("robot_b")["robot_a"])
    blob[-1] ^= 1
    clients["robot_b"].receive_shares({"robot_a": bytes(blob)})
    with pytest.raises(SecAggError, match="the share from robot_a does not authenticate"):
        clients["robot_b"].unmask_shares(["robot_a"], [])
    with pytest.raises(SecAggError, match="input of 3 values"):
        clients["robot_c"].masked_input(np.ones(3), list(clients))


def test_the_benchmark_runs_secure_eda_on_a_real_trunk() -> None:
    from pathlib import Path

    from fedvla.bench.federation import bench_secure_aggregation

    tiny = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"
    (figures,) = bench_secure_aggregation(str(tiny), [4], dropped=1)
    assert figures.clients == 4 and figures.trunk_parameters > 1000
    assert figures.max_error < 4 * 2.0 ** -25 + 1e-6  # plaintext EDA over the 3 survivors
    assert figures.upload_bytes == 2 * figures.plaintext_upload_bytes


def test_count_privacy_benchmark_orders_the_settings_by_their_cost() -> None:
    from fedvla.bench.federation import bench_count_privacy

    figures = bench_count_privacy(num_layers=2, num_experts=8, clients=4, noise_levels=[0.01, 0.2], trials=20)
    by_setting = {(f.privacy, f.noise_std): f for f in figures}
    assert by_setting[("normalized", 0.0)].max_weight_error < 1e-12  # free for EDA
    assert 0 < by_setting[("noisy", 0.01)].mean_weight_error < by_setting[("noisy", 0.2)].mean_weight_error
