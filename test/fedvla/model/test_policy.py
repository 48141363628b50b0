"""The HPT-style policy: partition, training on a task that needs the observation, checkpoints."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedvla.config import ConfigError
from fedvla.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.moe import FeedForwardKind
from fedvla.model.policy import ObservationError, Policy
from fedvla.model.train import TrainConfig, evaluate_loss, train_policy
from fedvla.data.synthetic import SquareReachDataset

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config" / "model"


@pytest.fixture(scope="module")
def tiny() -> PolicyConfig:
    return PolicyConfig.from_yaml(CONFIG_DIR / "tiny.yaml")


def fitted_policy(config: PolicyConfig, data: SquareReachDataset, seed: int = 0) -> Policy:
    policy = seeded_policy(config, seed)
    policy.normalizer.fit(data.actions, data.proprio)
    return policy


def test_configs_load_and_data_derived_values_are_required() -> None:
    small = PolicyConfig.from_yaml(CONFIG_DIR / "hpt_small.yaml", proprio_dim=9, action_dim=4)
    assert (small.embed_dim, small.num_blocks, small.num_experts) == (128, 16, 8)
    with pytest.raises(ConfigError, match=r"^proprio_dim: must be set \(it is \?\?\? in hpt_small.yaml\)"):
        PolicyConfig.from_yaml(CONFIG_DIR / "hpt_small.yaml")
    with pytest.raises(ConfigError, match="num_heads: 5 does not divide embed_dim 32"):
        PolicyConfig.from_yaml(CONFIG_DIR / "tiny.yaml", num_heads=5)


def test_only_the_trunk_is_shared(tiny) -> None:
    policy = Policy(tiny)
    trunk = policy.trunk_state_dict()
    assert trunk and all(k.startswith("trunk.") for k in trunk)
    everything = set(policy.state_dict())
    assert set(trunk) == {k for k in everything if k.startswith("trunk.")}
    assert not any(k.startswith(("stems.", "head.", "normalizer.")) for k in trunk)
    # Every MoE parameter maps to its block; the final norm belongs to no MoE layer.
    layers = {policy.trunk.layer_of(k.removeprefix("trunk.")) for k in trunk}
    assert layers == {0, 1, None}


def test_trunk_exchange_round_trip(tiny) -> None:
    a, b = seeded_policy(tiny, 1), seeded_policy(tiny, 2)
    b.load_trunk_state_dict(a.trunk_state_dict())
    for key, value in a.trunk_state_dict().items():
        torch.testing.assert_close(b.trunk_state_dict()[key], value)
    assert not torch.equal(a.head.net[0].weight, b.head.net[0].weight)  # the head stayed personal
    with pytest.raises(ValueError, match="trunk state does not match"):
        b.load_trunk_state_dict({"trunk.nope": torch.zeros(1)})


def test_observation_mismatch_is_a_clear_error(tiny) -> None:
    policy = Policy(tiny)
    with pytest.raises(ObservationError, match=r"images: expected \(B, 3, 3, H, W\) for cameras"):
        policy.predict_action_chunk({"images": torch.zeros(1, 2, 3, 64, 64), "proprio": torch.zeros(1, 4),
                                     "language": torch.zeros(1, 384)})


def test_expert_counts_cover_every_token(tiny) -> None:
    data = SquareReachDataset(tiny, size=8)
    policy = fitted_policy(tiny, data)
    policy.reset_expert_counts()
    batch = {k: v for k, v in data[0].items()}
    policy({k: v.unsqueeze(0) for k, v in batch.items()})
    counts = policy.expert_counts()
    assert counts.shape == (tiny.num_blocks, tiny.num_experts)
    # The arg-max rule gives every token at least one expert in every layer.
    assert (counts.sum(1) >= tiny.num_tokens).all()


@pytest.mark.parametrize("kind", [FeedForwardKind.DGMOE, FeedForwardKind.DENSE])
def test_training_learns_what_a_constant_cannot(tiny, kind) -> None:
    config = PolicyConfig.from_dict({**tiny.to_dict(), "feed_forward": kind.value, "image_size": 32})
    train, val = SquareReachDataset(config, 256, seed=0), SquareReachDataset(config, 64, seed=1)
    policy = fitted_policy(config, train)
    # The best constant predicts the mean action: the normalised targets' Huber loss around 0.
    target = policy.normalizer.normalize_action(val.actions)
    constant_loss = F.huber_loss(torch.zeros_like(target), target).item()
    result = train_policy(policy, train, TrainConfig(epochs=25, batch_size=32, lr=2e-3, seed=0), show_progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert evaluate_loss(policy, val) < 0.5 * constant_loss
    assert result.expert_counts.shape == (config.num_blocks, config.num_experts if kind is FeedForwardKind.DGMOE else 1)
    assert result.num_samples == 256 and result.steps == 25 * 8


def test_checkpoint_round_trip_gives_identical_actions(tiny, tmp_path) -> None:
    data = SquareReachDataset(tiny, 16)
    policy = fitted_policy(tiny, data, seed=3).eval()
    obs = {k: v for k, v in next(iter(torch.utils.data.DataLoader(data, batch_size=4))).items() if k != "actions"}
    save_checkpoint(policy, tmp_path / "ckpt", metadata={"client": "a"})
    loaded = load_checkpoint(tmp_path / "ckpt", expected=tiny, action_dim=4)
    torch.testing.assert_close(loaded.predict_action_chunk(obs), policy.predict_action_chunk(obs), rtol=0, atol=0)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors",
                                                              "normalizer.safetensors"}


def test_mismatched_checkpoints_are_refused(tiny, tmp_path) -> None:
    data = SquareReachDataset(tiny, 8)
    save_checkpoint(fitted_policy(tiny, data), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="predicts 4 action dimensions, this robot needs 7"):
        load_checkpoint(tmp_path / "ckpt", action_dim=7)
    other = PolicyConfig.from_dict({**tiny.to_dict(), "num_experts": 8})
    with pytest.raises(CheckpointError, match=r"num_experts=4 \(expected 8\)"):
        load_checkpoint(tmp_path / "ckpt", expected=other)
    with pytest.raises(CheckpointError, match="normalizer.safetensors is missing"):
        (tmp_path / "ckpt" / "normalizer.safetensors").unlink()
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="the normaliser was never fitted"):
        save_checkpoint(Policy(tiny), tmp_path / "unfitted")


def test_select_action_replans_every_execute_steps(tiny) -> None:
    data = SquareReachDataset(tiny, 4)
    policy = fitted_policy(tiny, data).eval()
    obs = {k: v[:1] for k, v in next(iter(torch.utils.data.DataLoader(data, batch_size=4))).items() if k != "actions"}
    chunk = policy.predict_action_chunk(obs)
    policy.reset()
    first, second = policy.select_action(obs), policy.select_action(obs)
    torch.testing.assert_close(first, chunk[:, 0])
    torch.testing.assert_close(second, chunk[:, 1])
