"""Training skills and the router on a robot's demonstrations, the base policy frozen.

The loss is the base's own (Huber on normalised action chunks, ``huber_delta`` of the base's
config) on ``a_final``, plus ``balance_weight`` times the router's load-balancing loss. The base
runs in eval mode under ``torch.no_grad``: its weights never get a gradient and never change,
which :func:`train_skills` checks (it refuses a base whose parameters require gradients).
"""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig, seed_everything
from fedvla.skills.modules import SkillConfig, SkillRouter, apply_skills, balance_loss


@dataclasses.dataclass
class SkillTrainResult:
    epoch_losses: list[float]
    routed: dict[int, int]  # skill index → batch items routed to it (any of their K slots)
    num_samples: int
    seconds: float


def freeze(policy: Policy) -> Policy:
    """The base as skills see it: eval mode, no parameter takes a gradient."""
    policy.eval()
    for parameter in policy.parameters():
        parameter.requires_grad_(False)
    return policy


@torch.no_grad()
def base_outputs(policy: Policy, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(observation embedding (B, D), normalised base chunk (B, H, A)) of a frozen base."""
    features, _ = policy.forward_features(batch)
    return features, policy.head(features)


def skill_chunk(policy: Policy, skills: nn.ModuleList, router: SkillRouter, batch: dict):
    """The base's chunk with the routed skills' residuals (normalised units), and the routing."""
    observation, base = base_outputs(policy, batch)
    routing = router(batch["language"].float())
    return apply_skills(base, observation, skills, routing), routing


@torch.no_grad()
def predict_with_skills(policy: Policy, skills: nn.ModuleList, router: SkillRouter, batch: dict) -> torch.Tensor:
    """Action chunk in robot units: the base's normaliser undoes the normalisation."""
    final, _ = skill_chunk(policy, skills, router, batch)
    return policy.normalizer.denormalize_action(final)


def train_skills(policy: Policy, skills: nn.ModuleList, router: SkillRouter, dataset: Dataset, config: TrainConfig,
                 skill_config: SkillConfig, train_router: bool = True) -> SkillTrainResult:
    if any(p.requires_grad for p in policy.parameters()):
        raise ValueError("the base policy must be frozen (fedvla.skills.training.freeze): skills never train it")
    seed_everything(config.seed)
    started = time.perf_counter()
    parameters = list(skills.parameters()) + (list(router.parameters()) if train_router else [])
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed), drop_last=len(dataset) > config.batch_size)
    skills.train()
    router.train(train_router)
    losses, routed = [], {}
    for _ in range(config.epochs):
        total, batches = 0.0, 0
        for batch in loader:
            final, routing = skill_chunk(policy, skills, router, batch)
            target = policy.normalizer.normalize_action(batch["actions"].float())
            loss = F.huber_loss(final, target, delta=policy.config.huber_delta)
            if train_router:
                loss = loss + skill_config.balance_weight * balance_loss(routing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
            for index in routing.indices.unique().tolist():
                routed[index] = routed.get(index, 0) + int((routing.indices == index).any(dim=1).sum())
        losses.append(total / max(batches, 1))
    return SkillTrainResult(losses, routed, len(dataset), time.perf_counter() - started)
