"""Federation server and client cores, in-process: rounds, EDA on the wire, persistence and
resume, dropouts, and a fault suite of malformed, stale, replayed and unauthenticated uploads."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from fedvla.federation.client import run_until_finished, trunk_spec
from fedvla.federation.eda import aggregate_trunks, expert_driven_weights
from fedvla.federation.protocol import load_credentials
from fedvla.federation.server import FederationServer, FederationServerConfig
from fedvla.federation.wire import (WireDtype, WireError, decode_trunk, decode_update, encode_update, sha256_hex,
                                    sign, sign_upload)
from fedvla.config import ConfigError
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.trunk import Trunk
from support.federation import (SECRETS, TINY, FakeClock, fault_cases, huge_scale_delta, join_all, make_client,
                                make_server, random_update, upload)

def test_round_aggregates_uploaded_trunks_with_eda(tmp_path):
    server = make_server(tmp_path / "server")
    join_all(server)
    updates = [random_update(server, c, seed=i) for i, c in enumerate(SECRETS)]
    for u in updates:
        assert upload(server, u.client_id, encode_update(u, server.spec)).ok
    record = server.tick()
    assert record is not None and record.clients == sorted(SECRETS) and record.closed_by == "all_live_uploaded"
    expected = aggregate_trunks([u.trunk for u in updates], expert_driven_weights(
        torch.stack([u.expert_counts for u in updates]).numpy()), Trunk.layer_of)
    for name, value in expected.items():
        torch.testing.assert_close(server.global_trunk[name], value, rtol=0, atol=1e-6)
    assert server.round == 1
    # The persisted global trunk is the same one.
    round_index, persisted = decode_trunk((tmp_path / "server/global/round_00001.safetensors").read_bytes(), server.spec)
    assert round_index == 1 and all(torch.equal(persisted[k], server.global_trunk[k]) for k in expected)


def test_fedavg_option_weights_by_sample_count(tmp_path):
    server = make_server(tmp_path / "server", aggregation="fedavg")
    join_all(server)
    updates = [random_update(server, c, seed=i, num_samples=n) for i, (c, n) in enumerate(zip(SECRETS, (10, 30, 60)))]
    for u in updates:
        assert upload(server, u.client_id, encode_update(u, server.spec)).ok
    server.tick()
    name = "blocks.0.ff.router.weight"
    expected = sum(w * u.trunk[name] for w, u in zip((0.1, 0.3, 0.6), updates))
    torch.testing.assert_close(server.global_trunk[name], expected, rtol=0, atol=1e-6)


def test_bf16_upload_is_half_the_bytes_and_accepted(tmp_path):
    server = make_server(tmp_path / "server")
    join_all(server)
    update = random_update(server, "robot_0")
    fp32, bf16 = encode_update(update, server.spec), encode_update(update, server.spec, WireDtype.BFLOAT16)
    assert len(bf16) < 0.55 * len(fp32)
    assert upload(server, "robot_0", bf16).ok


def test_int8_delta_upload_is_a_quarter_of_the_bytes_within_its_error_bound(tmp_path):
    server = make_server(tmp_path / "server")
    join_all(server)
    base = server._broadcast_trunk
    g = torch.Generator().manual_seed(5)
    local = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    update = random_update(server, "robot_0", trunk=local)
    fp32 = encode_update(update, server.spec)
    delta = encode_update(update, server.spec, WireDtype.INT8_DELTA, base=base)
    # (Header and per-row scales weigh more in this tiny trunk: `fedvla bench federation` prints
    # the HPT-size figures, where int8 deltas are about a quarter of float32.)
    assert len(delta) < 0.35 * len(fp32)
    assert upload(server, "robot_0", delta).ok
    rebuilt = server._updates["robot_0"].trunk
    for name, value in local.items():
        change = (value - base[name]).reshape(value.shape[0], -1) if value.dim() > 1 else (value - base[name]).view(1, -1)
        bound = change.abs().amax(dim=1, keepdim=True) / 254 + 1e-7
        error = (rebuilt[name] - value).reshape(change.shape).abs()
        assert bool((error <= bound).all()), name
    with pytest.raises(WireError, match="int8_delta"):
        decode_update(delta, server.spec)  # without the round's trunk a delta means nothing


def test_clients_train_and_federate_in_process(tmp_path):
    server = make_server(tmp_path / "server")
    # One client of each upload format: they all aggregate together.
    dtypes = ("float32", "bfloat16", "int8_delta")
    clients = [make_client(server, i, tmp_path, upload_dtype=d) for i, d in enumerate(dtypes)]
    records = run_until_finished(server, clients)
    assert [r.round for r in records] == [0, 1] and server.finished
    for record in records:
        weights = np.asarray(record.layer_weights)
        assert weights.shape == (2, 3) and np.allclose(weights.sum(1), 1)
    # Every client ends with the same (final) trunk; their stems and heads stay personal.
    for client in clients:
        assert client.load_global_trunk() == 2
    first = clients[0].policy.trunk.state_dict()
    assert all(torch.equal(first[k], c.policy.trunk.state_dict()[k]) for c in clients[1:] for k in first)
    heads = [next(iter(c.policy.head.parameters())) for c in clients]
    assert not torch.equal(heads[0], heads[1])


def test_server_killed_mid_round_resumes_with_accepted_updates(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path / "server", clock=clock)
    join_all(server)
    first = random_update(server, "robot_0", seed=1)
    assert upload(server, "robot_0", encode_update(first, server.spec)).ok
    # Half an upload in flight when the server dies: it is lost (the client restarts it).
    blob = encode_update(random_update(server, "robot_1", seed=2), server.spec)
    begun = server.begin_upload("robot_1", 0, len(blob), sha256_hex(blob), sign_upload(SECRETS["robot_1"], "robot_1", 0, blob))
    assert server.upload_chunk(begun.upload_id, 0, blob[:4096], zlib.crc32(blob[:4096])).ok
    del server

    resumed = make_server(tmp_path / "server", clock=clock)
    assert resumed.round == 0 and sorted(resumed.accepted) == ["robot_0"]
    assert resumed.upload_chunk(begun.upload_id, 1, blob[4096:8192], 0).reason == "unknown_upload"
    assert upload(resumed, "robot_0", encode_update(first, resumed.spec)).reason == "duplicate_upload"
    assert upload(resumed, "robot_1", blob).ok
    assert resumed.tick() is not None and resumed.round == 1


def test_client_dropping_out_is_waited_for_only_until_it_is_not_live(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path / "server", clock=clock, liveness_timeout_s=30, round_timeout_s=600)
    join_all(server)
    for i, client_id in enumerate(["robot_0", "robot_1"]):
        assert upload(server, client_id, encode_update(random_update(server, client_id, seed=i), server.spec)).ok
    assert server.tick() is None  # robot_2 joined moments ago: wait for it
    clock.now += 31  # robot_2 has not been heard from since: dead
    record = server.tick()
    assert record is not None and record.dropped == ["robot_2"] and record.clients == ["robot_0", "robot_1"]
    # Its late upload for the closed round is refused clearly.
    late = random_update(server, "robot_2", round=0)
    reply = upload(server, "robot_2", encode_update(late, server.spec), round_index=0)
    assert reply.reason == "round_closed" and "current round is 1" in reply.detail


def test_round_timeout_closes_with_quorum_but_not_below(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path / "server", clock=clock, round_timeout_s=100, liveness_timeout_s=1000)
    join_all(server)
    assert upload(server, "robot_0", encode_update(random_update(server, "robot_0"), server.spec)).ok
    clock.now += 200
    assert server.tick() is None  # 1 < quorum 2: keep waiting
    assert upload(server, "robot_1", encode_update(random_update(server, "robot_1", seed=3), server.spec)).ok
    record = server.tick()
    assert record is not None and record.closed_by == "timeout" and record.dropped == ["robot_2"]


def test_client_restarted_after_upload_does_not_upload_again(tmp_path):
    server = make_server(tmp_path / "server", quorum=3)
    client = make_client(server, 0, tmp_path)
    report = client.step()
    assert report is not None and report.round == 0 and report.upload_bytes > 0
    restarted = make_client(server, 0, tmp_path)
    assert restarted.last_uploaded_round == 0 and restarted.step() is None
    assert server.rejections.get("duplicate_upload", 0) == 0


def test_state_dir_of_another_model_is_refused(tmp_path):
    make_server(tmp_path / "server")
    policy = seeded_policy(PolicyConfig.from_yaml(TINY, image_size=32, language_dim=8, num_experts=8), 0)
    with pytest.raises(ConfigError, match="another federation"):
        FederationServer(FederationServerConfig(state_dir=str(tmp_path / "server")), trunk_spec(policy),
                         policy.trunk.state_dict(), SECRETS, Trunk.layer_of)


def test_credentials_file_is_checked(tmp_path):
    path = tmp_path / "credentials.yaml"
    path.write_text("clients:\n  robot_a: short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_credentials(path)
    path.write_text("clients:\n  ../evil: 0123456789abcdef0123\n")
    with pytest.raises(ConfigError, match="client id"):
        load_credentials(path)
    path.write_text("clients:\n  robot_a: 0123456789abcdef0123\n")
    assert load_credentials(path) == {"robot_a": "0123456789abcdef0123"}


def test_fault_suite_rejects_each_bad_upload_with_its_reason(tmp_path):
    server = make_server(tmp_path / "server", rounds=5, quorum=3)
    for client_id in ("robot_0", "robot_1"):
        secret = SECRETS[client_id]
        assert server.join(client_id, server.spec.trunk_hash, sign(secret, "join", client_id, 0, server.spec.trunk_hash)).ok
    # Close round 0 with two uploads (quorum 2 for this one), so "stale round" has a closed round.
    server.config.quorum = 2
    for i, client_id in enumerate(("robot_0", "robot_1")):
        assert upload(server, client_id, encode_update(random_update(server, client_id, seed=i), server.spec)).ok
    assert server.tick() is not None and server.round == 1
    server.config.quorum = 3
    accepted = encode_update(random_update(server, "robot_1", seed=9), server.spec)
    assert upload(server, "robot_1", accepted).ok
    before = {k: v.clone() for k, v in server.global_trunk.items()}
    state_before = json.loads((tmp_path / "server/state.json").read_text())["accepted"]

    cases = fault_cases(server, accepted)
    assert len(cases) >= 20
    for name, reason, call in cases:
        reply = call()
        assert not reply.ok, name
        assert reply.reason == reason, f"{name}: got {reply.reason} ({reply.detail})"
        assert reply.detail, name
    assert server.tick() is None  # nothing invalid counts toward the quorum
    assert sorted(server.accepted) == ["robot_1"]
    assert all(torch.equal(before[k], server.global_trunk[k]) for k in before)
    assert json.loads((tmp_path / "server/state.json").read_text())["accepted"] == state_before
    assert sum(server.rejections.values()) >= len(cases)


def test_int8_delta_with_a_huge_scale_is_refused_and_the_state_dir_restarts(tmp_path):
    """A finite scale of 3e38 would rebuild to ±inf: refused before it counts, the round closes
    with finite weights, and a server restarted from its state_dir resumes it."""
    server = make_server(tmp_path / "server")
    join_all(server)
    reply = upload(server, "robot_0", huge_scale_delta(server))
    assert reply.reason == "out_of_range" and "scale." in reply.detail
    assert "robot_0" not in server.accepted
    for i, client_id in enumerate(SECRETS):
        assert upload(server, client_id, encode_update(random_update(server, client_id, seed=i), server.spec)).ok
    assert server.tick() is not None
    assert all(bool(torch.isfinite(v).all()) for v in server.global_trunk.values())
    resumed = make_server(tmp_path / "server")
    assert resumed.round == 1 and resumed.rejections["out_of_range"] == 1
    assert all(torch.equal(resumed.global_trunk[k], v) for k, v in server.global_trunk.items())


def test_a_non_finite_aggregate_is_never_installed_or_persisted(tmp_path, monkeypatch):
    from fedvla.federation.aggregator import Aggregator

    server = make_server(tmp_path / "server")
    join_all(server)
    before = {k: v.clone() for k, v in server.global_trunk.items()}
    for i, client_id in enumerate(SECRETS):
        assert upload(server, client_id, encode_update(random_update(server, client_id, seed=i), server.spec)).ok
    real = Aggregator.combine
    monkeypatch.setattr(Aggregator, "combine",
                        lambda *a, **k: {n: torch.full_like(t, float("inf")) for n, t in real(*a, **k).items()})
    assert server.tick() is None
    assert server.round == 0 and not (tmp_path / "server/global/round_00001.safetensors").exists()
    assert all(torch.equal(before[k], server.global_trunk[k]) for k in before)
    assert server.status().accepted == [] and server.rejections["not_finite"] == 3
    monkeypatch.setattr(Aggregator, "combine", real)
    # The clients' updates were set aside: a client trains and uploads again, and the round closes.
    client = make_client(server, 0, tmp_path)
    client.last_uploaded_round = 0  # it had uploaded to round 0
    assert client.step() is not None and "robot_0" in server.accepted
    resumed = make_server(tmp_path / "server")
    assert resumed.round == 0 and sorted(resumed.accepted) == ["robot_0"]


def test_the_server_refuses_client_ids_that_are_not_file_names(tmp_path):
    policy = seeded_policy(PolicyConfig.from_yaml(TINY, image_size=32, language_dim=8), 0)
    for client_id in ("../../x", "a/b", "robot.0", ""):
        with pytest.raises(ConfigError, match="client id"):
            FederationServer(FederationServerConfig(state_dir=str(tmp_path / "server")), trunk_spec(policy),
                             policy.trunk.state_dict(), {client_id: "0123456789abcdef0123"}, Trunk.layer_of)
    assert not (tmp_path / "server").exists() and not (tmp_path / "x").exists()


def test_concurrent_requests_acknowledge_each_client_once_and_persist_all(tmp_path):
    """Transports call the server from several threads: every client's upload is acknowledged once,
    whatever the interleaving, and state.json lists every acknowledged client."""
    import threading

    server = make_server(tmp_path / "server", rounds=3, quorum=3)
    join_all(server)
    for round_index in range(3):
        blobs = {c: encode_update(random_update(server, c, seed=10 * round_index + i), server.spec)
                 for i, c in enumerate(SECRETS)}
        calls = [c for c in SECRETS for _ in range(4)]  # each client's upload sent four times at once
        barrier, replies = threading.Barrier(len(calls)), []

        def send(client_id):
            barrier.wait()
            replies.append((client_id, upload(server, client_id, blobs[client_id])))
            server.status()

        threads = [threading.Thread(target=send, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        acknowledged = sorted(c for c, r in replies if r.ok)
        assert acknowledged == sorted(SECRETS), acknowledged
        # (a second begin_upload of a client replaces its first, whose chunks then find it gone)
        assert {r.reason for _, r in replies if not r.ok} <= {"duplicate_upload", "unknown_upload"}
        persisted = json.loads((tmp_path / "server/state.json").read_text())["accepted"]
        assert sorted(persisted) == acknowledged
        assert server.tick() is not None and server.round == round_index + 1
