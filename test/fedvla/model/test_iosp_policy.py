"""The policy with IOSP group tokens (paper §3.1) and without (the "w/o IOSP" ablation)."""
from pathlib import Path

import pytest
import torch

from fedvla.data.synthetic import SquareReachDataset
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.policy import ObservationError
from fedvla.model.train import TrainConfig, evaluate_loss, train_policy

TINY = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"


def config(**overrides) -> PolicyConfig:
    return PolicyConfig.from_yaml(TINY, image_size=64, language_dim=8, **overrides)


def batch(data, n: int = 4) -> dict:
    return {k: torch.stack([data[i][k] for i in range(n)]) for k in data[0]}


def test_iosp_adds_three_groups_of_k_tokens_per_view() -> None:
    with_iosp, without = config(iosp=True, iosp_tokens_per_group=4), config()
    assert with_iosp.num_tokens - without.num_tokens == 3 * 3 * 4  # 3 cameras × 3 groups × k
    assert with_iosp.patch_grid == (4, 4)
    data = SquareReachDataset(with_iosp, 4)
    policy = seeded_policy(with_iosp, 0)
    policy.normalizer.fit(data.actions, data.proprio)
    obs = batch(data)
    assert policy(obs).shape == (4, with_iosp.horizon, with_iosp.action_dim)
    # The target group's statistics are filled from the selection; no surrounding object here.
    per_group = policy.trunk.experts_per_token_by_group()
    assert torch.isfinite(per_group[:, 0]).all() and torch.isnan(per_group[:, 1]).all()


def test_selected_patches_are_what_the_group_tokens_see() -> None:
    cfg = config(iosp=True, iosp_tokens_per_group=2)
    data = SquareReachDataset(cfg, 2)
    policy = seeded_policy(cfg, 0).eval()
    policy.normalizer.fit(data.actions, data.proprio)
    obs = batch(data, 2)
    obs["iosp_valid"][:] = True
    with torch.no_grad():
        base = policy(obs)
        moved = dict(obs, iosp_indices=(obs["iosp_indices"] + 1) % 16)
        assert not torch.allclose(policy(moved), base)  # other patches, other tokens
        obs["iosp_valid"][:] = False  # nothing selected: only the learned empty token
        empty = policy(obs)
        assert torch.allclose(policy(dict(obs, iosp_indices=moved["iosp_indices"])), empty)


def test_an_iosp_policy_refuses_observations_without_a_selection() -> None:
    cfg = config(iosp=True)
    data = SquareReachDataset(config(), 2)  # a dataset made without IOSP
    policy = seeded_policy(cfg, 0)
    policy.normalizer.fit(data.actions, data.proprio)
    with pytest.raises(ObservationError, match="iosp_indices: this policy uses IOSP"):
        policy(batch(data, 2))


def test_training_with_iosp_reaches_the_group_moes_and_learns_what_a_constant_cannot() -> None:
    import torch.nn.functional as F

    cfg = config(iosp=True, iosp_tokens_per_group=4)
    train, val = SquareReachDataset(cfg, 256, seed=0), SquareReachDataset(cfg, 64, seed=1)
    policy = seeded_policy(cfg, 0)
    policy.normalizer.fit(train.actions, train.proprio)
    target = policy.normalizer.normalize_action(val.actions)
    constant_loss = F.huber_loss(torch.zeros_like(target), target).item()
    router = policy.stems.image.group_moe[0].router.weight.detach().clone()
    train_policy(policy, train, TrainConfig(epochs=15, batch_size=32, lr=2e-3), show_progress=False)
    assert not torch.equal(router, policy.stems.image.group_moe[0].router.weight)
    assert evaluate_loss(policy, val) < 0.5 * constant_loss
