"""Residual skills on a frozen base policy, and the task router that picks them (skill-centric
federation, ``../shared/papers/skill-centric-fl.md`` §3.3-3.4; its ideas, not its numbers).

``a_final = a_base + Σ_{i ∈ topK} w_i · s_i(o, a_base)``:

* ``a_base`` is the base policy's action chunk (B, H, A) and ``o`` its observation embedding
  (the trunk's pooled features, (B, D)); the base is frozen (no gradients).
* A skill :class:`ResidualSkill` is an MLP on ``[o, a_base[h]]`` per chunk step ``h`` that outputs
  the step's residual; its last layer starts at zero, so a new skill leaves the base unchanged
  (a choice: the paper does not say how skills start).
* The router :class:`SkillRouter` maps the instruction's sentence embedding (MiniLM, 384-d) to
  gate logits; ``w`` is the softmax over the top-K logits (equal to the paper's top-K of the
  softmax, renormalised). Its load-balancing loss is Switch's ``N · Σ_i f_i · P_i``, with ``f_i``
  the share of the batch's K·B assignments that went to skill i and ``P_i`` skill i's mean gate
  probability (softmax over all N).

Skills act in the base's normalised action space (the one its head predicts): residuals of every
dimension have comparable scale, and the chunk is denormalised by the base's own normaliser after.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedvla.config import require


@dataclasses.dataclass(kw_only=True)
class SkillConfig:
    observation_dim: int  # the base's observation embedding (its embed_dim)
    action_dim: int
    hidden_dim: int = 256
    num_skills: int = 8
    top_k: int = 2
    instruction_dim: int = 384  # the MiniLM sentence embedding
    router_hidden_dim: int = 256
    balance_weight: float = 0.01  # of the router's load-balancing loss in the skills' training loss

    def __post_init__(self) -> None:
        for name in ("observation_dim", "action_dim", "hidden_dim", "num_skills", "instruction_dim", "router_hidden_dim"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        require(1 <= self.top_k <= self.num_skills, "top_k", f"{self.top_k} with {self.num_skills} skills",
                f"1 ... {self.num_skills}")
        require(self.balance_weight >= 0, "balance_weight", f"{self.balance_weight} is negative", ">= 0")


class ResidualSkill(nn.Module):
    """``s_i(o, a_base)``: (B, D) and (B, H, A) → the residual chunk (B, H, A)."""

    def __init__(self, config: SkillConfig) -> None:
        super().__init__()
        self.encoder = nn.Linear(config.observation_dim + config.action_dim, config.hidden_dim)
        self.hidden = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.decoder = nn.Linear(config.hidden_dim, config.action_dim)
        nn.init.zeros_(self.decoder.weight)  # a new skill adds nothing until it is trained
        nn.init.zeros_(self.decoder.bias)

    def forward(self, observation: Tensor, base_actions: Tensor) -> Tensor:
        steps = base_actions.shape[1]
        x = torch.cat([observation[:, None, :].expand(-1, steps, -1), base_actions], dim=-1)
        return self.decoder(F.relu(self.hidden(F.relu(self.encoder(x)))))


@dataclasses.dataclass(frozen=True)
class Routing:
    indices: Tensor  # (B, K) skill indices, best first
    weights: Tensor  # (B, K) softmax over the top-K logits
    probabilities: Tensor  # (B, N) softmax over all logits (the balance loss's P)


class SkillRouter(nn.Module):
    """Instruction embedding (B, E) → the top-K skills and their weights."""

    def __init__(self, config: SkillConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.gate = nn.Sequential(nn.Linear(config.instruction_dim, config.router_hidden_dim), nn.ReLU(),
                                  nn.Linear(config.router_hidden_dim, config.num_skills))

    def forward(self, instruction: Tensor) -> Routing:
        logits = self.gate(instruction)
        top, indices = torch.topk(logits, self.top_k, dim=-1)
        return Routing(indices=indices, weights=F.softmax(top, dim=-1), probabilities=F.softmax(logits, dim=-1))


def balance_loss(routing: Routing) -> Tensor:
    """Switch Transformer's load-balancing loss ``N · Σ_i f_i · P_i`` (1 when perfectly balanced)."""
    num_skills = routing.probabilities.shape[-1]
    assigned = F.one_hot(routing.indices, num_skills).float().sum(dim=(0, 1))  # (N,)
    share = assigned / assigned.sum()
    return num_skills * torch.sum(share * routing.probabilities.mean(dim=0))


def apply_skills(base_actions: Tensor, observation: Tensor, skills: nn.ModuleList, routing: Routing) -> Tensor:
    """``a_base + Σ_k w_k · s_{i_k}(o, a_base)`` for every batch item (its own K skills)."""
    result = base_actions.clone()
    for k in range(routing.indices.shape[1]):
        for skill_index in routing.indices[:, k].unique().tolist():
            rows = routing.indices[:, k] == skill_index
            residual = skills[skill_index](observation[rows], base_actions[rows])
            result[rows] = result[rows] + routing.weights[rows, k, None, None] * residual
    return result


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
