"""Secure aggregation inside federation rounds: the server's aggregate equals plaintext EDA, it
never holds a client's trunk, dropouts and restarts are recovered, bad messages are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvla.config import ConfigError
from fedvla.federation.client import CountPrivacy, private_counts, run_until_finished
from fedvla.federation.eda import aggregate_trunks, expert_driven_weights
from fedvla.federation.secure_round import dump_payload, encode_masked
from fedvla.federation.wire import encode_update, sha256_hex, sign
from fedvla.model.trunk import Trunk
from support.federation import SECRETS, FakeClock, join_all, make_client, make_server, random_update, upload

ATOL = 3 * 2.0**-25 + 1e-6  # fixed point (n clients · 2^-25) + float32 rounding of the result


def _clients(server, tmp_path, **options):
    return [make_client(server, i, tmp_path / "clients", **options) for i in range(3)]


def _trained_trunks(clients) -> dict[str, dict]:
    return {c.client_id: c._trained.trunk for c in clients if c._trained is not None}


def _step(clients, server, times: int = 1) -> None:
    for _ in range(times):
        for client in clients:
            client.step()
        server.tick()


def _plain_eda(trunks, counts) -> dict[str, torch.Tensor]:
    names = sorted(trunks)
    return aggregate_trunks([trunks[n] for n in names], expert_driven_weights(np.stack([counts[n] for n in names])),
                            Trunk.layer_of)


def _secure_request(server, client_id, op, payload=b"", attempt=0, round_index=None):
    round_index = server.round if round_index is None else round_index
    digest = f"{attempt}:{sha256_hex(payload)}"
    return server.secure_request(op, client_id, round_index, attempt, payload,
                                 sign(SECRETS[client_id], f"secure-{op}", client_id, round_index, digest))


def test_secure_rounds_give_the_plaintext_eda_aggregate_without_the_server_seeing_a_trunk(tmp_path):
    secure_server = make_server(tmp_path / "secure", rounds=1, secure_aggregation=True)
    clients = _clients(secure_server, tmp_path / "s")
    # Drive by hand so the trained trunks can be read before the round closes.
    _step(clients, secure_server)  # everyone trains and reports (counts + keys)
    trained = {k: {n: t.clone() for n, t in v.items()} for k, v in _trained_trunks(clients).items()}
    counts = {c.client_id: c._trained.train.expert_counts.numpy() for c in clients}
    assert secure_server.status().phase == "shares"
    run_until_finished(secure_server, clients)
    assert secure_server.finished and len(secure_server.history) == 1
    record = secure_server.history[0]
    assert record.secure and record.attempts == 1 and record.clients == sorted(SECRETS) and not record.dropped
    expected = _plain_eda(trained, counts)
    for name, value in expected.items():
        torch.testing.assert_close(secure_server.global_trunk[name], value, rtol=0, atol=ATOL)
    np.testing.assert_allclose(record.layer_weights, expert_driven_weights(np.stack([counts[c] for c in sorted(counts)])),
                               atol=1e-6)
    # The server kept no client trunk: no plain update, and no stored upload decodes near one.
    assert secure_server._updates == {} and secure_server.accepted == {}
    masked_files = list((tmp_path / "secure" / "updates").rglob("*.masked"))
    assert len(masked_files) == 3
    first = trained["robot_0"]["blocks.0.ff.router.weight"].reshape(-1).double().numpy()
    for path in masked_files:
        raw = np.frombuffer(path.read_bytes()[-8 * secure_server.spec.num_parameters:], dtype=np.uint64)
        as_fixed = raw.view(np.int64)[: first.size].astype(np.float64) / 2.0**24
        assert np.abs(as_fixed - first).min() > 1.0  # masked values are nowhere near the weights
    # Clients end with the aggregate, and each finished the round once.
    for client in clients:
        assert client.last_uploaded_round == 0 and client.load_global_trunk() == 1


def test_a_participant_dropping_after_its_shares_is_recovered_and_the_weights_renormalised(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path / "server", clock=clock, rounds=1, secure_aggregation=True, phase_timeout_s=60,
                         liveness_timeout_s=1000)
    clients = _clients(server, tmp_path)
    _step(clients, server)  # report
    trained = _trained_trunks(clients)
    counts = np.stack([c._trained.train.expert_counts.numpy() for c in clients])
    _step(clients, server)  # shares → masked phase
    assert server.status().phase == "masked"
    _step(clients[:2], server)  # robot_2 vanishes before uploading its masked trunk
    assert server.status().phase == "masked"  # still waiting for it (it was live a moment ago)
    clock.now += 61
    server.tick()
    assert server.status().phase == "unmask"
    _step(clients[:2], server)
    assert server.finished
    record = server.history[0]
    assert record.clients == ["robot_0", "robot_1"] and record.dropped == ["robot_2"]
    full = expert_driven_weights(counts)
    # The round's EDA weights, renormalised over the survivors: per layer, and for the parameters
    # outside the layers the survivors' mean-of-layers weights.
    weights = full[:, :2] / full[:, :2].sum(axis=1, keepdims=True)
    outside = full.mean(axis=0)[:2] / full.mean(axis=0)[:2].sum()
    for name, value in server.global_trunk.items():
        layer = Trunk.layer_of(name)
        w = outside if layer is None else weights[layer]
        expected = w[0] * trained["robot_0"][name].double() + w[1] * trained["robot_1"][name].double()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(record.layer_weights, weights, atol=1e-6)


def test_server_restarted_mid_secure_round_resumes_its_phase(tmp_path):
    clock = FakeClock()
    options = dict(clock=clock, rounds=1, secure_aggregation=True, liveness_timeout_s=1000)
    server = make_server(tmp_path / "server", **options)
    clients = _clients(server, tmp_path)
    _step(clients, server, times=2)  # report, shares
    trained = _trained_trunks(clients)
    counts = {c.client_id: c._trained.train.expert_counts.numpy() for c in clients}
    _step(clients[:2], server)  # two masked uploads are in when the server dies
    del server
    resumed = make_server(tmp_path / "server", **options)
    assert resumed.status().phase == "masked" and resumed.status().accepted == ["robot_0", "robot_1"]
    for client in clients:
        client.server = resumed
    run_until_finished(resumed, clients)
    for name, value in _plain_eda(trained, counts).items():
        torch.testing.assert_close(resumed.global_trunk[name], value, rtol=0, atol=ATOL)


def test_too_few_left_aborts_the_attempt_and_clients_rereport_without_retraining(tmp_path):
    clock = FakeClock()
    server = make_server(tmp_path / "server", clock=clock, rounds=1, secure_aggregation=True, phase_timeout_s=60,
                         liveness_timeout_s=1000, secagg_threshold=1.0)
    clients = _clients(server, tmp_path)
    _step(clients, server)  # report: threshold 3 of 3
    first_training = [c._trained for c in clients]
    _step(clients[:2], server)  # robot_2 never shares
    clock.now += 61
    server.tick()
    status = server.status()
    assert status.phase == "report" and status.attempt == 1 and server.aborted_attempts[0]["phase"] == "shares"
    run_until_finished(server, clients)
    assert server.history[0].attempts == 2
    assert all(c._trained is None for c in clients)
    assert [t.train for t in first_training] and all(c.last_uploaded_round == 0 for c in clients)


def test_bad_secure_messages_are_refused_with_their_reason(tmp_path):
    server = make_server(tmp_path / "server", rounds=2, secure_aggregation=True)
    join_all(server)
    keys = {"cipher_key": "11" * 32, "mask_key": "22" * 32}
    counts = np.ones((server.spec.num_layers, server.spec.num_experts)).tolist()
    report = lambda **kw: dump_payload({"counts": counts, "num_samples": 8, **keys, **kw})  # noqa: E731
    cases = [
        ("plain update in a secure round", "wrong_round",
         lambda: upload(server, "robot_0", encode_update(random_update(server, "robot_0"), server.spec))),
        ("negative counts", "bad_counts", lambda: _secure_request(server, "robot_0", "report",
                                                                   report(counts=(-np.ones((2, 4))).tolist()))),
        ("counts of another shape", "bad_counts", lambda: _secure_request(server, "robot_0", "report",
                                                                           report(counts=[[1, 2]]))),
        ("short key", "malformed", lambda: _secure_request(server, "robot_0", "report", report(mask_key="ab"))),
        ("zero samples", "bad_num_samples", lambda: _secure_request(server, "robot_0", "report", report(num_samples=0))),
        ("not JSON", "malformed", lambda: _secure_request(server, "robot_0", "report", b"\x80\x04pickle")),
        ("unknown op", "malformed", lambda: _secure_request(server, "robot_0", "evil")),
        ("out of phase", "wrong_round", lambda: _secure_request(server, "robot_0", "roster")),
        ("stale attempt", "wrong_round", lambda: _secure_request(server, "robot_0", "report", report(), attempt=3)),
        ("forged", "bad_signature", lambda: server.secure_request("report", "robot_0", 0, 0, report(), "0" * 64)),
    ]
    for name, reason, call in cases:
        reply = call()
        assert not reply.ok and reply.reason == reason, (name, reply)
    assert _secure_request(server, "robot_0", "report", report()).ok
    assert _secure_request(server, "robot_0", "report", report()).reason == "duplicate_upload"
    assert _secure_request(server, "robot_1", "report", report()).ok
    # Everyone reported with keys that are not real X25519 points; move on to the masked phase by
    # hand to check the upload checks.
    server.secure.fix_participants(np.full((server.spec.num_layers, 2), 0.5), np.full(2, 0.5))
    server.secure.server.share_senders = {"robot_0", "robot_1"}
    server.secure.advance()
    n = server.spec.num_parameters
    short = encode_masked(np.zeros(n - 1, np.uint64), server.spec, "robot_0", 0, 0)
    assert upload(server, "robot_0", short).reason == "wrong_shape"
    assert upload(server, "robot_0", encode_masked(np.zeros(n, np.uint64), server.spec, "robot_1", 0, 0)).reason == "wrong_sender"
    assert upload(server, "robot_0", encode_masked(np.zeros(n, np.uint64), server.spec, "robot_0", 0, 4)).reason == "wrong_round"
    assert upload(server, "robot_2", encode_masked(np.zeros(n, np.uint64), server.spec, "robot_2", 0, 0)).reason == "round_closed"
    assert upload(server, "robot_0", encode_masked(np.zeros(n, np.uint64), server.spec, "robot_0", 0, 0)).ok
    assert upload(server, "robot_0", encode_masked(np.zeros(n, np.uint64), server.spec, "robot_0", 0, 0)).reason == "duplicate_upload"
    # A plain server refuses secure requests, and secure aggregation needs two participants.
    plain = make_server(tmp_path / "plain")
    join_all(plain)
    assert _secure_request(plain, "robot_0", "report", report()).reason == "wrong_format"
    with pytest.raises(ConfigError, match="quorum"):
        make_server(tmp_path / "one", secure_aggregation=True, quorum=1)


def test_count_privacy_normalized_keeps_eda_weights_and_noisy_moves_them_a_little():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 500, size=(3, 4, 8)).astype(np.float64)
    exact = expert_driven_weights(counts)
    normalized = np.stack([private_counts(c, CountPrivacy.NORMALIZED, 0.0, rng) for c in counts])
    np.testing.assert_allclose(normalized.sum(axis=2), 1.0)
    np.testing.assert_allclose(expert_driven_weights(normalized), exact, atol=1e-12)
    noisy = np.stack([private_counts(c, CountPrivacy.NOISY, 0.05, rng) for c in counts])
    error = np.abs(expert_driven_weights(noisy) - exact).max()
    assert 0 < error < 0.05
