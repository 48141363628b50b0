"""Skills core: the residual formula against an independent computation, the router's top-K and
balance loss, library versions and signature refusal, per-skill aggregation and upload checks."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvla.federation.protocol import RejectReason
from fedvla.federation.round_client import FederationError
from fedvla.skills.aggregation import (SkillDelta, SkillUploadError, aggregate_skill_deltas,
                                       check_skill_delta)
from fedvla.skills.library import SkillLibrary, SkillLibraryError, SkillSignature, SkillSignatureError
from fedvla.skills.modules import (ResidualSkill, Routing, SkillConfig, SkillRouter, apply_skills, balance_loss,
                                   parameter_count)

REPO = Path(__file__).resolve().parents[3]
CONFIG = SkillConfig(observation_dim=16, action_dim=4, hidden_dim=32, num_skills=5, top_k=2, instruction_dim=12,
                     router_hidden_dim=8)


def _trained_skills(seed: int = 0) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    skills = torch.nn.ModuleList(ResidualSkill(CONFIG) for _ in range(CONFIG.num_skills))
    for skill in skills:  # non-zero decoders (a fresh skill adds nothing)
        torch.nn.init.normal_(skill.decoder.weight, std=0.1)
        torch.nn.init.normal_(skill.decoder.bias, std=0.1)
    return skills


def _by_hand(skill: ResidualSkill, observation: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """One skill as plain numpy: relu(relu([o, a] W1ᵀ + b1) W2ᵀ + b2) W3ᵀ + b3, per chunk step."""
    w = {k: v.detach().double().numpy() for k, v in skill.state_dict().items()}
    out = np.zeros_like(actions)
    for h in range(actions.shape[0]):
        x = np.concatenate([observation, actions[h]])
        x = np.maximum(w["encoder.weight"] @ x + w["encoder.bias"], 0)
        x = np.maximum(w["hidden.weight"] @ x + w["hidden.bias"], 0)
        out[h] = w["decoder.weight"] @ x + w["decoder.bias"]
    return out


def test_the_residual_formula_matches_an_independent_computation() -> None:
    skills = _trained_skills()
    g = torch.Generator().manual_seed(1)
    observation, base = torch.randn(3, 16, generator=g), torch.randn(3, 6, 4, generator=g)
    routing = Routing(indices=torch.tensor([[0, 3], [3, 1], [4, 0]]),
                      weights=torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]]), probabilities=torch.full((3, 5), 0.2))
    with torch.no_grad():
        final = apply_skills(base, observation, skills, routing).double().numpy()
    for b in range(3):
        expected = base[b].double().numpy().copy()
        for k in range(2):
            skill = skills[int(routing.indices[b, k])]
            expected += float(routing.weights[b, k]) * _by_hand(skill, observation[b].double().numpy(),
                                                                base[b].double().numpy())
        np.testing.assert_allclose(final[b], expected, rtol=1e-5, atol=1e-6)


def test_a_new_skill_leaves_the_base_unchanged_and_is_small() -> None:
    skill = ResidualSkill(SkillConfig(observation_dim=256, action_dim=7))
    assert parameter_count(skill) < 1_000_000
    base = torch.randn(2, 5, 7)
    assert torch.equal(skill(torch.randn(2, 256), base), torch.zeros_like(base))


def test_the_router_takes_the_top_k_logits_and_softmaxes_them() -> None:
    torch.manual_seed(0)
    router = SkillRouter(CONFIG)
    instruction = torch.randn(4, 12)
    routing = router(instruction)
    logits = router.gate(instruction).detach()
    for b in range(4):
        order = torch.argsort(logits[b], descending=True)[:2]
        assert routing.indices[b].tolist() == order.tolist()
        top = logits[b, order]
        torch.testing.assert_close(routing.weights[b].detach(), torch.exp(top) / torch.exp(top).sum())
    # equal to the paper's form: top-K of the full softmax, renormalised
    full = torch.softmax(logits, -1)
    picked = torch.gather(full, 1, routing.indices)
    torch.testing.assert_close(routing.weights.detach(), picked / picked.sum(1, keepdim=True))


def test_the_balance_loss_is_one_when_balanced_and_grows_with_collapse() -> None:
    uniform = Routing(indices=torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]), weights=torch.full((5, 2), 0.5),
                      probabilities=torch.full((5, 5), 0.2))
    assert float(balance_loss(uniform)) == pytest.approx(1.0)
    collapsed = Routing(indices=torch.tensor([[0, 1]] * 5), weights=torch.full((5, 2), 0.5),
                        probabilities=torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]] * 5))
    # f = (0.5, 0.5, 0, 0, 0), P = (0.5, 0.5, 0, 0, 0): N·Σ f·P = 5 · 0.5
    assert float(balance_loss(collapsed)) == pytest.approx(2.5)


def _signature(base_hash: str = "a" * 64) -> SkillSignature:
    return SkillSignature(base_hash=base_hash, action_space={"kind": "ee_delta"}, observation_dim=16, action_dim=4,
                          horizon=6)


def test_the_library_versions_skills_and_refuses_another_base(tmp_path) -> None:
    library = SkillLibrary(tmp_path / "lib", _signature())
    skills = _trained_skills()
    first = {k: v.clone() for k, v in skills[0].state_dict().items()}
    assert library.publish({"wipe": first}, {"wipe": ["clean_up"]}, {"wipe": {"success": 0.4}}) == {"wipe": 1}
    second = {k: v + 1 for k, v in first.items()}
    assert library.publish({"wipe": second}, {"wipe": ["trash_collection"]}) == {"wipe": 2}
    reopened = SkillLibrary(tmp_path / "lib")
    assert [v.version for v in reopened.skills["wipe"]] == [1, 2]
    assert reopened.latest("wipe").tasks == ["clean_up", "trash_collection"]
    loaded = reopened.load_skill("wipe", _signature())
    assert all(torch.equal(loaded[k], second[k]) for k in second)
    assert torch.equal(reopened.load_skill("wipe", _signature(), version=1)["decoder.bias"], first["decoder.bias"])
    with pytest.raises(SkillSignatureError, match="base_hash: 'bbbb.*' here, 'aaaa.*' in the library"):
        reopened.load_skill("wipe", _signature("b" * 64))
    with pytest.raises(SkillLibraryError, match="no skill 'grasp'"):
        reopened.latest("grasp")
    with pytest.raises(SkillLibraryError, match="holds no skill library"):
        SkillLibrary(tmp_path / "empty")


def _delta(client: str, skill: str, value: float, samples: int) -> SkillDelta:
    template = ResidualSkill(CONFIG).state_dict()
    return SkillDelta(client, skill, {k: torch.full_like(v, value) for k, v in template.items()}, samples)


def test_each_skill_is_the_sample_weighted_mean_over_the_clients_that_trained_it() -> None:
    uploads = [_delta("a", "wipe", 1.0, 10), _delta("b", "wipe", 4.0, 30), _delta("b", "grasp", 2.0, 30)]
    merged = aggregate_skill_deltas(uploads)
    assert set(merged) == {"wipe", "grasp"}
    for tensor in merged["wipe"].values():
        torch.testing.assert_close(tensor, torch.full_like(tensor, (10 * 1.0 + 30 * 4.0) / 40))
    for tensor in merged["grasp"].values():
        torch.testing.assert_close(tensor, torch.full_like(tensor, 2.0))


@pytest.mark.parametrize("upload,routed,signature_ok,reason", [
    (_delta("a", "grasp", 1.0, 10), ["wipe"], True, RejectReason.NOT_ROUTED),
    (_delta("a", "wipe", 1.0, 10), ["wipe"], False, RejectReason.WRONG_MODEL),
    (_delta("a", "wipe", float("nan"), 10), ["wipe"], True, RejectReason.NOT_FINITE),
    (_delta("a", "wipe", 1.0, 0), ["wipe"], True, RejectReason.BAD_NUM_SAMPLES),
])
def test_bad_skill_uploads_are_refused_with_their_reason(upload, routed, signature_ok, reason) -> None:
    template = ResidualSkill(CONFIG).state_dict()
    with pytest.raises(SkillUploadError) as refused:
        check_skill_delta(upload, routed, template, signature_ok, max_bytes=10**7)
    assert refused.value.reason is reason


def test_oversize_and_misshapen_skill_uploads_are_refused() -> None:
    template = ResidualSkill(CONFIG).state_dict()
    with pytest.raises(SkillUploadError, match="too_large"):
        check_skill_delta(_delta("a", "wipe", 1.0, 5), ["wipe"], template, True, max_bytes=100)
    wrong = SkillDelta("a", "wipe", {"encoder.weight": torch.zeros(2, 2)}, 5)
    with pytest.raises(SkillUploadError, match="wrong_shape"):
        check_skill_delta(wrong, ["wipe"], template, True, max_bytes=10**7)


def test_encrypted_aggregation_matches_the_plaintext_one_within_ckks_precision() -> None:
    pytest.importorskip("tenseal")
    from fedvla.skills.encryption import decrypt_mean, encrypt_delta, make_client_context, public_context, sum_encrypted

    g = torch.Generator().manual_seed(5)
    template = ResidualSkill(CONFIG).state_dict()
    uploads = [SkillDelta(c, "wipe", {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in template.items()}, n)
               for c, n in (("a", 12), ("b", 30), ("c", 7))]
    expected = aggregate_skill_deltas(uploads)["wipe"]
    client_context = make_client_context()
    server_context = public_context(client_context)
    encrypted = [encrypt_delta(client_context, u.client_id, u.skill_id, u.delta, u.num_samples) for u in uploads]
    parameters = sum(v.numel() for v in template.values())
    summed, samples = sum_encrypted(server_context, encrypted, parameters)
    assert samples == 49
    result = decrypt_mean(client_context, summed, samples, template)
    for name, value in expected.items():
        torch.testing.assert_close(result[name], value, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="holds the secret key"):
        sum_encrypted(client_context, encrypted, parameters)


def test_training_skills_lowers_the_loss_and_never_touches_the_frozen_base() -> None:
    from fedvla.data.episodes import fit_normalizer
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import seeded_policy
    from fedvla.model.train import TrainConfig
    from fedvla.skills.training import freeze, predict_with_skills, train_skills
    from support.federation import tiny_config

    config = tiny_config()
    base = seeded_policy(config, 0)
    data = SquareReachDataset(config, 32, seed=3)
    fit_normalizer(base, data)
    freeze(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    skill_config = SkillConfig(observation_dim=config.embed_dim, action_dim=config.action_dim, hidden_dim=32,
                               num_skills=3, top_k=2, instruction_dim=config.language_dim, router_hidden_dim=16)
    torch.manual_seed(0)
    skills = torch.nn.ModuleList(ResidualSkill(skill_config) for _ in range(3))
    router = SkillRouter(skill_config)
    result = train_skills(base, skills, router, data, TrainConfig(epochs=4, batch_size=8, lr=3e-3, seed=0), skill_config)
    assert result.epoch_losses[-1] < result.epoch_losses[0] and result.num_samples == 32
    assert sum(result.routed.values()) > 0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the base is unchanged
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    assert predict_with_skills(base, skills, router, batch).shape == (4, config.horizon, config.action_dim)
    unfrozen = seeded_policy(config, 0)
    with pytest.raises(ValueError, match="must be frozen"):
        train_skills(unfrozen, skills, router, data, TrainConfig(epochs=1), skill_config)


def _skill_federation(tmp_path, rounds: int = 2, quorum: int = 2, keys=None):
    """A skill server over a frozen tiny base and two clients of different tasks (in process: the
    server object is the transport); ``keys``: a key directory (encryption.write_keys) to run it
    under CKKS."""
    from fedvla.data.episodes import fit_normalizer
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import seeded_policy
    from fedvla.model.train import TrainConfig
    from fedvla.skills.federation import SkillFederationClient, SkillFederationServer, SkillServerConfig
    from fedvla.skills.library import state_dict_hash
    from fedvla.skills.training import freeze
    from support.federation import tiny_config

    config = tiny_config()
    base = freeze(seeded_policy(config, 0))
    fit_normalizer(base, SquareReachDataset(config, 16, seed=1))
    signature = SkillSignature(base_hash=state_dict_hash(base.state_dict()), action_space={}, observation_dim=config.embed_dim,
                               action_dim=config.action_dim, horizon=config.horizon)
    skill_config = SkillConfig(observation_dim=config.embed_dim, action_dim=config.action_dim, hidden_dim=16, num_skills=4,
                               top_k=1, instruction_dim=config.language_dim, router_hidden_dim=8)
    credentials = {f"robot_{i}": f"secret-of-robot-{i}-0123456789" for i in range(3)}
    from fedvla.skills.encryption import read_robot_key, read_server_key

    server = SkillFederationServer(SkillServerConfig(rounds=rounds, quorum=quorum, state_dir=str(tmp_path / "server")),
                                   skill_config, signature, credentials,
                                   public_key=read_server_key(keys) if keys else None)
    clients = []
    for i, task in enumerate(("wipe", "grasp")):
        data = SquareReachDataset(config, 16, seed=10 + i)
        clients.append(SkillFederationClient(f"robot_{i}", credentials[f"robot_{i}"], server, base, signature, data,
                                             TrainConfig(epochs=1, batch_size=8, lr=1e-3, seed=i), tasks=[task],
                                             robot_key=read_robot_key(keys) if keys else None))
    return server, clients, signature, credentials


def test_federated_skill_rounds_publish_new_versions_of_the_routed_skills(tmp_path) -> None:
    from fedvla.skills.federation import SkillFederationClient, SkillFederationServer, run_skill_rounds
    from fedvla.skills.wire import ROUTER_ID

    server, clients, signature, credentials = _skill_federation(tmp_path)
    history = run_skill_rounds(server, clients)
    assert [h["record"].round for h in history] == [0, 1] and server.finished
    routed = set().union(*[set(r.routed) for h in history for r in h["reports"].values()])
    library = SkillLibrary(tmp_path / "server" / "library")
    for name in routed:
        assert library.latest(name).version == 3  # trained, aggregated and published in both rounds
    untouched = {f"skill_{i}" for i in range(4)} - routed
    assert all(library.latest(name).version == 1 for name in untouched)  # nobody trained them
    assert library.router_version == 3 and library.published_round == 1 and not server.rejections
    assert ROUTER_ID not in library.skills
    record = history[0]["record"]
    assert record.aggregation == "skills" and record.rows[-1] == ROUTER_ID and record.clients == ["robot_0", "robot_1"]
    # each row's weights are the sample shares of the clients that trained it
    for row, weights in zip(record.rows, record.layer_weights):
        assert sum(weights) == pytest.approx(1.0)
    assert all(r.upload_bytes > 0 and r.fetch_bytes > 0 for h in history for r in h["reports"].values())
    # a client fetched only the skills its instruction routed to
    assert all(len(r.routed) == 1 for h in history for r in h["reports"].values())
    # the server restarts from its state directory: same round, same library
    again = SkillFederationServer(server.config, server.skill_config, signature, credentials)
    assert again.round == 2 and again.finished and len(again.history) == 2
    # a robot whose base is another policy is refused when it joins
    other = dataclasses.replace(signature, base_hash="0" * 64)
    stranger = SkillFederationClient("robot_2", credentials["robot_2"], server, clients[0].base, other,
                                     clients[0].dataset, clients[0].train_config)
    with pytest.raises(FederationError, match="wrong_model"):
        stranger.join()


def _hostile(client, status, mutate) -> str:
    """Upload a delta of ``client`` for the current round after ``mutate(deltas)``; the refusal reason."""
    from fedvla.skills.wire import ROUTER_ID, SkillUploadBlob, encode_upload, signature_hash

    manifest, _ = client.fetch_manifest(status.round, status.chunk_size)
    routed = client.route(manifest)
    skills, _ = client.fetch_skills(manifest, routed, status.chunk_size)
    deltas = {name: {k: torch.zeros_like(v) for k, v in skills[int(name.split("_")[1])].state_dict().items()}
              for name in routed}
    deltas[ROUTER_ID] = {k: torch.zeros_like(v) for k, v in manifest.router.items()}
    blob = SkillUploadBlob(client.client_id, status.round, 16, ["wipe"], signature_hash(client.signature), deltas)
    mutate(blob, routed)
    try:
        client.upload(encode_upload(blob), status.round)
    except FederationError as err:
        return err.reply.reason
    return "accepted"


def _not_routed(blob, routed) -> None:
    other = next(f"skill_{i}" for i in range(4) if f"skill_{i}" not in routed)
    blob.deltas[other] = {k: v.clone() for k, v in blob.deltas[routed[0]].items()}


def _nan(blob, routed) -> None:
    name = next(iter(blob.deltas[routed[0]]))
    blob.deltas[routed[0]][name][0] = float("nan")


def _oversize(blob, routed) -> None:
    name = next(iter(blob.deltas[routed[0]]))
    blob.deltas[routed[0]][name] = torch.zeros(2048, 2048)


def _wrong_signature(blob, routed) -> None:
    blob.signature_hash = "f" * 64


@pytest.mark.parametrize("mutate,reason", [(_not_routed, "not_routed"), (_nan, "not_finite"),
                                           (_oversize, "too_large"), (_wrong_signature, "wrong_model"),
                                           (lambda blob, routed: None, "accepted")])
def test_hostile_skill_uploads_are_refused_with_their_reason_and_logged(tmp_path, mutate, reason, core_warnings) -> None:
    from fedvla.skills.federation import SkillServerConfig

    server, clients, _, _ = _skill_federation(tmp_path)
    server.config = SkillServerConfig(**{**dataclasses.asdict(server.config), "max_skill_upload_bytes": 1 << 20})
    client = clients[0]
    client.join()
    assert _hostile(client, server.status(), mutate) == reason
    if reason != "accepted":
        assert server.rejections[reason] == 1 and not server.accepted
        assert any(m.startswith(f"rejected {reason} from robot_0") for m in core_warnings)


def test_an_encrypted_skill_federation_publishes_the_plaintext_aggregate_the_server_cannot_read(tmp_path) -> None:
    """skill_encryption ckks: the same rounds as in the clear give the same library within CKKS
    precision, while the library on the server holds ciphertexts only (its first version, the
    untrained skills it issued, excepted)."""
    pytest.importorskip("tenseal")
    from fedvla.skills.encryption import CIPHERTEXT, decrypt_state, read_robot_key, write_keys
    from fedvla.skills.federation import run_skill_rounds
    from fedvla.skills.modules import SkillRouter

    write_keys(tmp_path / "keys")
    plain_server, plain_clients, signature, _ = _skill_federation(tmp_path / "plain")
    server, clients, _, _ = _skill_federation(tmp_path / "ckks", keys=tmp_path / "keys")
    run_skill_rounds(plain_server, plain_clients)
    history = run_skill_rounds(server, clients)
    assert server.finished and not server.rejections and len(history) == 2
    secret, _ = read_robot_key(tmp_path / "keys")
    plain, library = plain_server.library, server.library
    for name in plain.skills:
        assert library.latest(name).version == plain.latest(name).version
        stored = library.load_skill(name, signature)
        expected = plain.load_skill(name, signature)
        assert library.latest(name).encrypted == (library.latest(name).version > 1) == (CIPHERTEXT in stored)
        for key, value in decrypt_state(secret, stored, expected).items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5)
    router = decrypt_state(secret, library.load_router(signature), SkillRouter(server.skill_config).state_dict())
    for key, value in plain.load_router(signature).items():
        torch.testing.assert_close(router[key], value, rtol=0, atol=1e-5)
    # the encrypted uploads cost bytes: CKKS ciphertexts against float32
    uploaded = [r.upload_bytes for h in history for r in h["reports"].values()]
    assert min(uploaded) > 10 * max(sum(v.numel() * 4 for v in expected.values()), 1)


def test_encryption_mismatches_are_refused_before_anything_is_trained(tmp_path) -> None:
    pytest.importorskip("tenseal")
    from fedvla.config import ConfigError
    from fedvla.skills.encryption import EncryptionError, read_robot_key, read_server_key, write_keys
    from fedvla.skills.federation import SkillFederationClient

    write_keys(tmp_path / "keys")
    write_keys(tmp_path / "other")
    with pytest.raises(EncryptionError, match="already holds a key pair"):
        write_keys(tmp_path / "keys")
    assert (tmp_path / "keys" / "secret.ckks").stat().st_mode & 0o077 == 0  # its owner's only
    server, clients, signature, credentials = _skill_federation(tmp_path / "fed", keys=tmp_path / "keys")
    status = server.status()

    def robot(key):
        made = SkillFederationClient("robot_0", credentials["robot_0"], server, clients[0].base, signature,
                                     clients[0].dataset, clients[0].train_config, robot_key=key)
        made.join()
        return made

    with pytest.raises(ConfigError, match="skill_encryption.*'ckks', this robot is set to 'none'"):
        robot(None).fetch_manifest(status.round, status.chunk_size)
    with pytest.raises(ConfigError, match="skill_keys.*the server's key is"):
        robot(read_robot_key(tmp_path / "other")).fetch_manifest(status.round, status.chunk_size)
    plain_server, plain_clients, _, _ = _skill_federation(tmp_path / "plain")
    plain = SkillFederationClient("robot_0", credentials["robot_0"], plain_server, clients[0].base, signature,
                                  clients[0].dataset, clients[0].train_config, robot_key=read_robot_key(tmp_path / "keys"))
    plain.join()
    with pytest.raises(ConfigError, match="'none', this robot is set to 'ckks'"):  # never sends weights in the clear
        plain.fetch_manifest(plain_server.status().round, plain_server.status().chunk_size)
    # the server never holds the secret key, and a server restarted without encryption is refused
    (tmp_path / "leaked").mkdir()
    (tmp_path / "leaked" / "public.ckks").write_bytes((tmp_path / "keys" / "secret.ckks").read_bytes())
    with pytest.raises(EncryptionError, match="holds the secret key"):
        read_server_key(tmp_path / "leaked")
    from fedvla.skills.federation import SkillFederationServer

    with pytest.raises(ConfigError, match="skill_keys"):
        SkillFederationServer(server.config, server.skill_config, signature, credentials)


def _ciphertext_junk(blob, routed) -> None:
    blob.deltas[routed[0]] = {"ckks": torch.randint(0, 255, (4096,), dtype=torch.uint8)}


def _ciphertext_short(blob, routed) -> None:
    from fedvla.skills.encryption import encrypt_vector, read_robot_key

    secret, _ = read_robot_key(blob.keys)
    blob.deltas[routed[0]] = {"ckks": torch.frombuffer(bytearray(encrypt_vector(secret, np.zeros(5))), dtype=torch.uint8)}


@pytest.mark.parametrize("mutate", [_ciphertext_junk, _ciphertext_short, _not_routed])
def test_hostile_encrypted_skill_uploads_are_refused_with_their_reason(tmp_path, mutate, core_warnings) -> None:
    """What the server can check of a ciphertext it cannot read: that it is one, of the skill's
    size, for its ring; and, as in the clear, the routing. (A ciphertext under another key of the
    same parameters cannot be told apart: like any poisoned upload, it corrupts the sum.)"""
    pytest.importorskip("tenseal")
    from fedvla.skills.encryption import encrypt_state, read_robot_key, write_keys
    from fedvla.skills.wire import ROUTER_ID, SkillUploadBlob, encode_upload, signature_hash

    write_keys(tmp_path / "keys")
    server, clients, _, _ = _skill_federation(tmp_path / "fed", keys=tmp_path / "keys")
    client, status = clients[0], server.status()
    client.join()
    manifest, _ = client.fetch_manifest(status.round, status.chunk_size)
    routed = client.route(manifest)
    skills, _ = client.fetch_skills(manifest, routed, status.chunk_size)
    secret, _ = read_robot_key(tmp_path / "keys")
    plain = {name: skills[int(name.split("_")[1])].state_dict() for name in routed}
    plain[ROUTER_ID] = manifest.router
    blob = SkillUploadBlob(client.client_id, status.round, 16, ["wipe"], signature_hash(client.signature),
                           {name: encrypt_state(secret, state, 16) for name, state in plain.items()})
    blob.keys = tmp_path / "keys"
    mutate(blob, routed)
    with pytest.raises(FederationError) as refused:
        client.upload(encode_upload(blob), status.round)
    reason = "not_routed" if mutate is _not_routed else "malformed"
    assert refused.value.reply.reason == reason and server.rejections[reason] == 1 and not server.accepted
    assert any(m.startswith(f"rejected {reason} from robot_0") for m in core_warnings)


def test_the_skill_aggregation_bench_compares_ckks_and_secagg_on_the_same_deltas() -> None:
    pytest.importorskip("tenseal")
    from fedvla.skills.aggregation_cost import skill_round_figures

    ckks, secagg = skill_round_figures(clients=3, parameters=5000)
    assert (ckks.method, secagg.method) == ("CKKS (TenSEAL)", "SecAgg masks")
    assert ckks.max_error < 1e-6 and secagg.max_error < 1e-6
    assert ckks.upload_bytes > secagg.upload_bytes > 0 and ckks.client_s > 0 and secagg.server_s > 0


def test_a_saved_skill_set_adds_the_routed_residuals_to_the_base_and_refuses_another_base(tmp_path) -> None:
    from fedvla.model.checkpoint import seeded_policy
    from fedvla.skills.federation import run_skill_rounds
    from fedvla.skills.inference import SkillSet
    from fedvla.skills.training import freeze
    from support.federation import tiny_config

    server, clients, _, _ = _skill_federation(tmp_path)
    run_skill_rounds(server, clients)
    client = clients[0]
    saved = json.loads((client.save_skills(tmp_path / "set") / "skills.json").read_text())
    skill_set = SkillSet(tmp_path / "set", client.base)
    batch = torch.utils.data.default_collate([client.dataset[i] for i in range(3)])
    chunk, routing = skill_set.predict(client.base, batch)
    # independently: the base's normalised chunk, plus w · s(o, a) of the router's top-1, denormalised
    with torch.no_grad():
        features, _ = client.base.forward_features(batch)
        base_chunk = client.base.head(features)
        logits = skill_set.router.gate(batch["language"].float())
        top = int(logits[0].argmax())
        expected = base_chunk[0] + 1.0 * skill_set.skills[top](features[:1], base_chunk[:1])[0]
        if top not in skill_set.held:
            expected = base_chunk[0]
    torch.testing.assert_close(chunk[0], client.base.normalizer.denormalize_action(expected[None])[0])
    assert routing.skills == (f"skill_{top}",) and saved["routed"] == client.route(client.fetch_manifest(2, 4096)[0])
    assert routing.missing == (() if top in skill_set.held else (f"skill_{top}",))
    other = freeze(seeded_policy(tiny_config(), 7))  # another base: its weights differ
    with pytest.raises(SkillSignatureError, match="trained on base"):
        SkillSet(tmp_path / "set", other)


def test_the_policy_runtime_runs_a_skill_set_on_its_checkpoint_and_reports_the_routing(tmp_path) -> None:
    from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
    from fedvla.config import ConfigError
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.skills.inference import write_skill_set
    from fedvla.skills.library import base_signature

    tiny = PolicyConfig.from_yaml(REPO / "config" / "model" / "tiny.yaml", image_size=32)
    policy = seeded_policy(tiny, 3)
    data = SquareReachDataset(tiny, 8)
    policy.normalizer.fit(data.actions, data.proprio)
    checkpoint = save_checkpoint(policy, tmp_path / "base")
    _, signature = base_signature(checkpoint)
    config = SkillConfig(observation_dim=tiny.embed_dim, action_dim=tiny.action_dim, hidden_dim=8, num_skills=3, top_k=1,
                         instruction_dim=tiny.language_dim, router_hidden_dim=4)
    torch.manual_seed(0)
    skills = [ResidualSkill(config) for _ in range(3)]
    for skill in skills:
        torch.nn.init.normal_(skill.decoder.weight, std=0.5)
    write_skill_set(tmp_path / "set", SkillRouter(config).state_dict(), {f"skill_{i}": s.state_dict() for i, s in enumerate(skills)},
                    config, signature)
    images, proprio = [np.zeros((32, 32, 3), np.uint8)] * len(tiny.camera_names), np.zeros(tiny.proprio_dim)
    plain = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(checkpoint))).step(images, proprio, "wipe the table")
    skilled = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(checkpoint), skills_path=str(tmp_path / "set")))
    step = skilled.step(images, proprio, "wipe the table")
    assert plain.routing is None and step.routing.skills[0] in {"skill_0", "skill_1", "skill_2"}
    assert step.routing.weights == (1.0,) and not step.routing.missing
    assert not np.allclose(step.chunk, plain.chunk)  # the residual changed the chunk
    with pytest.raises(ConfigError, match="step_backend"):
        PolicyRuntimeConfig(checkpoint_path=str(checkpoint), skills_path=str(tmp_path / "set"), step_backend="compile")


def test_the_skill_keys_command_writes_a_fleet_key_pair_once(tmp_path, capsys) -> None:
    pytest.importorskip("tenseal")
    from fedvla.cli import main
    from fedvla.skills.encryption import read_robot_key, read_server_key

    assert main(["federation", "skill-keys", str(tmp_path / "keys")]) == 0
    assert "never put it on the server" in capsys.readouterr().out
    secret, fingerprint = read_robot_key(tmp_path / "keys")
    assert secret and len(fingerprint) == 64 and read_server_key(tmp_path / "keys")
    assert main(["federation", "skill-keys", str(tmp_path / "keys")]) != 0  # never overwritten
    printed = capsys.readouterr()
    assert "already holds a key pair" in " ".join((printed.out + printed.err).split())
