"""Action head: trunk features → a chunk of ``horizon`` normalised actions."""
from __future__ import annotations

from torch import Tensor, nn

from fedvla.model.config import PolicyConfig


class ChunkHead(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.horizon, self.action_dim = config.horizon, config.action_dim
        self.net = nn.Sequential(nn.Linear(config.embed_dim, config.head_hidden_dim), nn.GELU(),
                                 nn.Linear(config.head_hidden_dim, config.horizon * config.action_dim))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).view(-1, self.horizon, self.action_dim)
