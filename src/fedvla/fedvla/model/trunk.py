"""The trunk: the only part of the policy that federated clients exchange.

``num_blocks`` pre-norm transformer blocks; each block's feed-forward layer is an MoE layer
(:mod:`fedvla.model.moe`, by config). DGMoE layers pass their gate logits ``G_t`` to the next
block (eq. 3's residual). The output is the mean of the tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fedvla.model.config import PolicyConfig
from fedvla.model.moe import CountingLayer, make_feed_forward, FeedForwardKind


class TrunkBlock(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ff_norm = nn.LayerNorm(dim)
        options: dict = {"dropout": config.dropout}
        if config.feed_forward is FeedForwardKind.DGMOE:
            options.update(lam=config.lam, empty_token_rule=config.empty_token_rule,
                           threshold_init_scale=config.threshold_init_scale)
        elif config.feed_forward in (FeedForwardKind.TOPK, FeedForwardKind.ADAMOE):
            options.update(k=config.top_k)
        self.ff: CountingLayer = make_feed_forward(config.feed_forward, dim, config.num_experts,
                                                   config.expert_hidden_dim, **options)

    def forward(self, x: Tensor, prev_logits: Tensor | None, groups: Tensor | None):
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        out = self.ff(self.ff_norm(x), prev_logits=prev_logits, groups=groups)
        return x + out.y, out


class Trunk(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.uses_gate_residual = config.feed_forward is FeedForwardKind.DGMOE
        self.blocks = nn.ModuleList(TrunkBlock(config) for _ in range(config.num_blocks))
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, tokens: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, T, D) tokens → ((B, D) features, summed auxiliary loss)."""
        x, prev_logits = tokens, None
        aux = tokens.new_zeros(())
        for block in self.blocks:
            x, out = block(x, prev_logits, groups)
            prev_logits = out.logits if self.uses_gate_residual else None
            if out.aux_loss is not None:
                aux = aux + out.aux_loss
        return self.norm(x).mean(dim=1), aux

    @property
    def moe_layers(self) -> list[CountingLayer]:
        return [block.ff for block in self.blocks]

    def expert_counts(self) -> Tensor:
        """V ∈ N^{L×K}: tokens each expert of each layer processed since the last reset."""
        return torch.stack([layer.counts for layer in self.moe_layers]).clone()

    def reset_expert_counts(self) -> None:
        for layer in self.moe_layers:
            layer.reset_counts()

    def experts_per_token_by_group(self) -> Tensor:
        """(L, G): mean experts per token of each IOSP group (NaN where a group was not seen)."""
        return torch.stack([layer.experts_per_token() for layer in self.moe_layers])

    @staticmethod
    def layer_of(parameter_name: str) -> int | None:
        """The block (= MoE layer) index a trunk parameter belongs to; None for the final norm."""
        parts = parameter_name.split(".")
        if parts[0] == "blocks":
            return int(parts[1])
        return None
