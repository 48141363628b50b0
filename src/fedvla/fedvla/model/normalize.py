"""Per-dimension normalisation of actions and proprioception, fitted on a client's training
data and stored in its checkpoint (``normalizer.safetensors``). Statistics stay with the client:
the server never averages them."""
from __future__ import annotations

import torch
from torch import Tensor, nn

# A dimension that never changes in the data (e.g. an unused gripper) must not divide by ~0.
MIN_STD = 1e-3


class Normalizer(nn.Module):
    def __init__(self, action_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, actions: Tensor, proprio: Tensor) -> None:
        """``actions`` (N, ..., action_dim), ``proprio`` (N, proprio_dim): all training samples."""
        a = actions.reshape(-1, actions.shape[-1]).double()
        p = proprio.reshape(-1, proprio.shape[-1]).double()
        self.action_mean.copy_(a.mean(0))
        self.action_std.copy_(a.std(0, unbiased=False).clamp(min=MIN_STD))
        self.proprio_mean.copy_(p.mean(0))
        self.proprio_std.copy_(p.std(0, unbiased=False).clamp(min=MIN_STD))
        self.fitted.fill_(True)

    def normalize_action(self, a: Tensor) -> Tensor:
        return (a - self.action_mean) / self.action_std

    def denormalize_action(self, a: Tensor) -> Tensor:
        return a * self.action_std + self.action_mean

    def normalize_proprio(self, p: Tensor) -> Tensor:
        return (p - self.proprio_mean) / self.proprio_std
