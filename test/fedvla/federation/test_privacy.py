"""Client-level differential privacy: clipping, data-independent weights and noise calibrated to the
replace-one sensitivity (2C/n, or 2C·sqrt(min(n, L+1)) with EDA's weights), noise reproducible from
its seed, the RDP accountant's ε (persisted across a restart), in plain and in secure rounds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvla.config import ConfigError
from fedvla.federation.client import run_until_finished
from fedvla.federation.eda import aggregate_trunks, expert_driven_weights
from fedvla.federation.privacy import DpWeights, PrivacyAccountant, clip_update, update_norm
from fedvla.federation.wire import encode_update
from fedvla.model.trunk import Trunk
from support.federation import SECRETS, join_all, make_client, make_server, random_update, upload


def test_clipping_bounds_the_update_norm_and_leaves_small_updates_alone():
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(50, 20, generator=g), "b": torch.randn(7, generator=g)}
    big = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    clipped, norm = clip_update(big, base, 2.0)
    assert norm > 10 and update_norm(clipped, base) == pytest.approx(2.0, rel=1e-6)
    small = {k: v + 1e-3 for k, v in base.items()}
    kept, _ = clip_update(small, base, 2.0)
    assert all(torch.equal(kept[k], small[k]) for k in base)


def test_plain_rounds_clip_add_calibrated_noise_and_account_epsilon(tmp_path):
    z, clip = 0.5, 3.0
    server = make_server(tmp_path / "server", rounds=3, dp_clip_norm=clip, dp_noise_multiplier=z)
    server.noise_generator = torch.Generator().manual_seed(1)
    join_all(server)
    base = server._broadcast_trunk
    updates = [random_update(server, c, seed=i) for i, c in enumerate(SECRETS)]  # far from the base: clipped
    for u in updates:
        assert upload(server, u.client_id, encode_update(u, server.spec)).ok
    record = server.tick()
    assert record.clipped == 3
    n = len(updates)
    weights = np.full((server.spec.num_layers, n), 1.0 / n)  # DP rounds: weights that ignore the data
    assert np.allclose(record.layer_weights, weights)
    clean = aggregate_trunks([clip_update(u.trunk, base, clip)[0] for u in updates], weights, Trunk.layer_of)
    noise = torch.cat([(server.global_trunk[k].double() - clean[k].double()).reshape(-1) for k in clean])
    sensitivity = 2 * clip / n  # replace one robot: its term moves by at most 2C/n
    assert float(noise.std()) == pytest.approx(z * sensitivity, rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * z * sensitivity
    expected_one = PrivacyAccountant()
    expected_one.step(z)
    assert record.dp_epsilon == pytest.approx(expected_one.epsilon(1e-5), rel=1e-3)
    # ε composes over rounds, and the accountant survives a restart of the server.
    for u in [random_update(server, c, seed=10 + i) for i, c in enumerate(SECRETS)]:
        assert upload(server, u.client_id, encode_update(u, server.spec)).ok
    second = server.tick()
    assert second.dp_epsilon > record.dp_epsilon
    resumed = make_server(tmp_path / "server", rounds=3, dp_clip_norm=clip, dp_noise_multiplier=z)
    assert resumed.accountant.history == server.accountant.history
    assert resumed.accountant.epsilon(1e-5) == pytest.approx(second.dp_epsilon, rel=1e-3)


def test_secure_rounds_clip_on_the_client_and_add_noise_after_unmasking(tmp_path):
    z, clip = 0.2, 0.05
    server = make_server(tmp_path / "server", rounds=1, secure_aggregation=True, dp_clip_norm=clip,
                         dp_noise_multiplier=z)
    server.noise_generator = torch.Generator().manual_seed(2)
    clients = [make_client(server, i, tmp_path / "clients") for i in range(3)]
    for client in clients:
        client.step()  # train and report
    server.tick()
    trained = {c.client_id: (c._trained.trunk, c._trained.global_trunk) for c in clients}
    counts = np.stack([c._trained.train.expert_counts.numpy() for c in clients])
    run_until_finished(server, clients)
    weights = np.full((counts.shape[1], 3), 1 / 3)
    clean = aggregate_trunks([clip_update(t, g, clip)[0] for t, g in trained.values()], weights, Trunk.layer_of)
    noise = torch.cat([(server.global_trunk[k].double() - clean[k].double()).reshape(-1) for k in clean])
    assert float(noise.std()) == pytest.approx(z * 2 * clip / 3, rel=0.05)
    assert server.history[0].secure and server.history[0].dp_epsilon > 0


def test_eda_weights_under_dp_pay_the_bound_of_data_dependent_weights(tmp_path):
    z, clip = 0.5, 3.0
    server = make_server(tmp_path / "server", rounds=1, dp_clip_norm=clip, dp_noise_multiplier=z, dp_weights="eda")
    server.noise_generator = torch.Generator().manual_seed(3)
    join_all(server)
    base = server._broadcast_trunk
    updates = [random_update(server, c, seed=i) for i, c in enumerate(SECRETS)]
    for u in updates:
        assert upload(server, u.client_id, encode_update(u, server.spec)).ok
    server.tick()
    weights = expert_driven_weights(torch.stack([u.expert_counts for u in updates]).numpy())
    clean = aggregate_trunks([clip_update(u.trunk, base, clip)[0] for u in updates], weights, Trunk.layer_of)
    noise = torch.cat([(server.global_trunk[k].double() - clean[k].double()).reshape(-1) for k in clean])
    n, groups = len(updates), server.spec.num_layers + 1
    assert float(noise.std()) == pytest.approx(z * 2 * clip * np.sqrt(min(n, groups)), rel=0.05)


def test_the_noise_is_reproducible_from_its_seed_and_differs_without_one(tmp_path):
    def run(directory, seed):
        server = make_server(directory, rounds=1, dp_clip_norm=3.0, dp_noise_multiplier=0.5, dp_noise_seed=seed)
        join_all(server)
        for i, c in enumerate(SECRETS):
            assert upload(server, c, encode_update(random_update(server, c, seed=i), server.spec)).ok
        server.tick()
        return torch.cat([v.reshape(-1) for v in server.global_trunk.values()])

    assert torch.equal(run(tmp_path / "a", 7), run(tmp_path / "b", 7))
    assert not torch.equal(run(tmp_path / "c", 7), run(tmp_path / "d", 8))
    assert not torch.equal(run(tmp_path / "e", -1), run(tmp_path / "f", -1))


def test_dp_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="needs a clip norm"):
        make_server(tmp_path / "a", dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="dp_delta"):
        make_server(tmp_path / "b", dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_delta=2.0)


def test_the_report_recomputes_epsilon_for_the_noise_a_run_added():
    from types import SimpleNamespace

    from fedvla.federation.privacy import replace_one_sensitivity
    from fedvla.sim.report import replace_one_epsilon

    method = SimpleNamespace(federation={"dp_noise_multiplier": 1.0, "dp_clip_norm": 4.0})
    weights = [[0.25, 0.25, 0.3, 0.2]] * 4  # 4 layers, 4 robots
    first_version = [{"layer_weights": weights, "dp_epsilon": 5.0}] * 3  # z·C·w_max added, EDA weights
    old = replace_one_epsilon(first_version, method, 1e-5)
    once = PrivacyAccountant()
    for _ in range(3):
        once.step(1.0)
    assert old > once.epsilon(1e-5)  # the noise was 0.3·C against a sensitivity of 2C·2
    expected = PrivacyAccountant()
    for _ in range(3):
        expected.step(1.0 * 4.0 * 0.3 / replace_one_sensitivity(4.0, 4, 4, DpWeights.EDA))
    assert old == pytest.approx(expected.epsilon(1e-5), rel=1e-9)
    current = [{"layer_weights": weights, "dp_noise_std": 2.0, "dp_sensitivity": 2.0}] * 3  # z = 1 at S
    assert replace_one_epsilon(current, method, 1e-5) == pytest.approx(once.epsilon(1e-5), rel=1e-9)
