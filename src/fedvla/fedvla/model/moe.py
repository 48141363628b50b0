"""Feed-forward layers of the policy trunk: Dual-Gating MoE (FedVLA eqs. 3–6) and the baselines
it is compared with, behind one interface.

Every layer maps ``x`` (B, T, D) to :class:`MoEOutput` and counts, per expert, the tokens it
processed (``counts``, since the last :meth:`reset_counts`); the stacked counts of a trunk are the
matrix ``V`` that a federated client uploads for Expert-Driven Aggregation.

DGMoE, exactly as the paper (section 3.2):

* token gate, eq. 3:  ``G_t^1(x) = W_t x``;  ``G_t^j(x) = W_t x + W_g G_t^{j-1}(x)`` — ``router`` is
  ``W_t`` (D→K), ``residual`` is ``W_g`` (K→K), and ``prev_logits`` the previous DGMoE layer's
  ``G_t`` for the same token;
* ``s_t = softmax(G_t)``; expert gate, eq. 4:  ``s_e = sign(s_t − λ·W_e)`` — ``threshold`` is
  ``W_e`` (one learnable value per expert), λ = ``lam`` (0.5 in the paper);
* eq. 5:  ``g = s_t`` where ``s_e > 0``, else 0;  eq. 6:  ``y = Σ_i g_i E_i(x)``.

Choices where the paper is silent (each a constructor argument):

* **Tokens no expert accepts** (``empty_token_rule``): ``"argmax"`` (default) routes them to their
  highest-scoring expert with gate ``s_t`` of that expert, so every token is processed;
  ``"drop"`` leaves them with ``y = 0`` (the residual connection around the layer carries them).
* **Gradient of ``W_e``**: ``sign`` has zero gradient, so the hard 0/1 acceptance mask is used
  in the forward pass and a sigmoid surrogate ``σ((s_t − λW_e)/τ)`` in the backward pass
  (straight-through, ``ste_temperature`` τ). Because dispatch is sparse, the gradient reaches
  ``W_e`` through the (token, expert) pairs the layer computes.
* **``W_e`` initialisation** (``threshold_init``, or ``threshold_init_scale`` c): ``c/(λK)``, so
  that at initialisation an expert accepts the tokens whose score is above c × uniform
  (``s_t > c/K``). c = 1 (the constructor's default) starts near 2.5–3 experts per token with an
  untrained router; the model configs use a larger c (config ``threshold_init_scale``) to start
  sparse, as a DGMoE trained for long is (the paper reports ≈ 1.22 experts per token); training
  moves ``W_e`` either way. ``fedvla bench policy`` prints experts per token before and after.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeedForwardKind(str, enum.Enum):
    DGMOE = "dgmoe"
    TOPK = "topk"
    ADAMOE = "adamoe"
    DENSE = "dense"  # the "w/o DGMoE" ablation: a plain FFN


class EmptyTokenRule(str, enum.Enum):
    ARGMAX = "argmax"
    DROP = "drop"


@dataclasses.dataclass
class MoEOutput:
    y: Tensor  # (B, T, D)
    logits: Tensor  # (B, T, K): the router's scores (G_t for DGMoE)
    gates: Tensor  # (B, T, K): g, the weight of each expert's output (0 where inactive)
    active: Tensor  # (B, T, K) bool: which experts processed which tokens
    aux_loss: Tensor | None = None  # load-balancing loss (top-k), to be added to the task loss


class Expert(nn.Sequential):
    """One expert: the transformer feed-forward block D → hidden → D."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim))


class CountingLayer(nn.Module):
    """Keeps per-expert token counts (and per-group counts when token groups are given)."""

    def __init__(self, num_experts: int, num_groups: int = 3) -> None:
        super().__init__()
        self.num_experts = num_experts
        # Not persistent: counts are per-round statistics, never part of a checkpoint or the trunk.
        self.register_buffer("counts", torch.zeros(num_experts, dtype=torch.long), persistent=False)
        self.register_buffer("group_counts", torch.zeros(num_groups, num_experts, dtype=torch.long), persistent=False)
        self.register_buffer("group_tokens", torch.zeros(num_groups, dtype=torch.long), persistent=False)
        self._stacked = StackedExperts()
        # At inference the experts run as one grouped call (_experts_grouped); False runs each on its
        # own tokens, as in training (fedvla bench policy measures the two).
        self.grouped_inference = True

    def reset_counts(self) -> None:
        self.counts.zero_()
        self.group_counts.zero_()
        self.group_tokens.zero_()

    @torch.no_grad()
    def _count(self, active: Tensor, groups: Tensor | None) -> None:
        flat = active.reshape(-1, active.shape[-1])
        self.counts += flat.sum(0)
        if groups is not None:
            g = groups.reshape(-1)
            valid = (g >= 0) & (g < self.group_tokens.numel())
            self.group_counts.index_add_(0, g[valid], flat[valid].long())
            self.group_tokens += torch.bincount(g[valid], minlength=self.group_tokens.numel())

    def _dispatch(self, x: Tensor, gates: Tensor, active: Tensor) -> Tensor:
        """Grouped at inference (one cache of stacked weights per layer), a loop when training;
        the routing is computed once either way."""
        r = route(x, gates, active)
        if r.token_index.numel() == 0:
            return torch.zeros_like(x)
        if self.grouped_inference and not torch.is_grad_enabled() and not self.training and len(self.experts) > 1:
            out = _experts_grouped(r, self._stacked.get(self.experts))
        else:
            out = _experts_loop(r, self.experts)
        return _combine(x, r, out)

    def experts_per_token(self) -> Tensor:
        """Mean number of experts per token in each group (NaN for a group never seen)."""
        tokens = self.group_tokens.double()
        return torch.where(tokens > 0, self.group_counts.sum(1).double() / tokens.clamp(min=1), torch.nan)


class StackedExperts:
    """The experts' weights stacked as (K, ...) tensors, for grouped inference.

    Rebuilt whenever an expert parameter changes (tensor version counters), so a policy that is
    trained, loaded or receives a new trunk from the server never runs with stale weights.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self.w1 = self.b1 = self.w2 = self.b2 = None

    def get(self, experts: nn.ModuleList) -> StackedExperts:
        params = list(experts.parameters())
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key:
            first = [e[0] for e in experts]
            second = [e[3] for e in experts]
            self.w1 = torch.stack([m.weight.t() for m in first])  # (K, D, H)
            self.b1 = torch.stack([m.bias for m in first])  # (K, H)
            self.w2 = torch.stack([m.weight.t() for m in second])  # (K, H, D)
            self.b2 = torch.stack([m.bias for m in second])  # (K, D)
            self._key = key
        return self


@dataclasses.dataclass
class Routing:
    """The accepted (token, expert) pairs of one layer call, grouped by expert."""

    flat_x: Tensor  # (N, D)
    expert_index: Tensor  # (P,), sorted
    token_index: Tensor  # (P,)
    counts: Tensor  # (K,) pairs per expert
    weights: Tensor  # (P, 1) the gate of each pair


def route(x: Tensor, gates: Tensor, active: Tensor) -> Routing:
    num_experts = active.shape[-1]
    # Transposed nonzero: pairs come out sorted by expert, then token.
    expert_index, token_index = active.reshape(-1, num_experts).t().nonzero(as_tuple=True)
    return Routing(flat_x=x.reshape(-1, x.shape[-1]), expert_index=expert_index, token_index=token_index,
                   counts=torch.bincount(expert_index, minlength=num_experts),
                   weights=gates.reshape(-1, num_experts)[token_index, expert_index].unsqueeze(1))


def _experts_loop(r: Routing, experts: nn.ModuleList) -> Tensor:
    """Each expert once, on its contiguous slice of the gathered tokens."""
    counts = r.counts.tolist()
    chunks = r.flat_x.index_select(0, r.token_index).split(counts)
    return torch.cat([experts[i](chunk) for i, chunk in enumerate(chunks) if counts[i]])


def _experts_grouped(r: Routing, stacked: StackedExperts) -> Tensor:
    """Every accepted pair through its expert in two grouped matrix products
    (``torch.nn.functional.grouped_mm``: each expert's pairs are one contiguous group, since pairs
    are sorted by expert), whatever the spread of the tokens: no Python loop over the experts, no
    padding and no host sync for the group sizes. Inference only: its CPU backward is missing."""
    offsets = torch.cumsum(r.counts, 0, dtype=torch.int32)
    gathered = r.flat_x.index_select(0, r.token_index)
    hidden = F.grouped_mm(gathered, stacked.w1, offs=offsets).add_(stacked.b1.index_select(0, r.expert_index))
    return F.grouped_mm(F.gelu(hidden), stacked.w2, offs=offsets).add_(stacked.b2.index_select(0, r.expert_index))


def _combine(x: Tensor, r: Routing, out: Tensor) -> Tensor:
    """One weighted scatter-add of the pairs' outputs back onto their tokens."""
    return torch.zeros_like(r.flat_x).index_add_(0, r.token_index, out * r.weights).reshape(x.shape)


def dispatch(x: Tensor, gates: Tensor, active: Tensor, experts: nn.ModuleList) -> Tensor:
    """``Σ_i g_i E_i(x)`` computing each expert only on the tokens it accepted: one gather of the
    accepted pairs, each expert on its slice, one scatter-add (the op count per layer does not
    grow with how the tokens are spread, which matters at batch 1)."""
    r = route(x, gates, active)
    if r.token_index.numel() == 0:
        return torch.zeros_like(x)
    return _combine(x, r, _experts_loop(r, experts))


def dispatch_grouped(x: Tensor, gates: Tensor, active: Tensor, stacked: StackedExperts) -> Tensor:
    """Inference-only :func:`dispatch` with stacked expert weights in grouped matrix products."""
    r = route(x, gates, active)
    if r.token_index.numel() == 0:
        return torch.zeros_like(x)
    return _combine(x, r, _experts_grouped(r, stacked))


def load_balancing_loss(logits: Tensor, active: Tensor, k: int) -> Tensor:
    """Switch-Transformer balance ``K · Σ_i f_i · P_i``: f_i the fraction of routing slots that
    went to expert i, P_i its mean router probability; 1 when perfectly balanced."""
    num_experts = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1).reshape(-1, num_experts)
    routed = active.reshape(-1, num_experts).float()
    return num_experts * (routed.mean(0) / k * probs.mean(0)).sum()


class DGMoE(CountingLayer):
    """Dual-Gating Mixture of Experts (FedVLA eqs. 3–6); see the module docstring."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, lam: float = 0.5, *,
                 empty_token_rule: EmptyTokenRule | str = EmptyTokenRule.ARGMAX, ste_temperature: float = 0.05,
                 threshold_init: float | None = None, threshold_init_scale: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__(num_experts)
        if lam <= 0:
            raise ValueError(f"lam must be positive, got {lam}")
        self.lam = lam
        self.empty_token_rule = EmptyTokenRule(empty_token_rule)
        self.ste_temperature = ste_temperature
        self.router = nn.Linear(dim, num_experts, bias=False)  # W_t
        self.residual = nn.Linear(num_experts, num_experts, bias=False)  # W_g
        init = threshold_init if threshold_init is not None else threshold_init_scale / (lam * num_experts)
        self.threshold = nn.Parameter(torch.full((num_experts,), float(init)))  # W_e
        self.experts = nn.ModuleList(Expert(dim, hidden_dim, dropout) for _ in range(num_experts))

    def forward(self, x: Tensor, prev_logits: Tensor | None = None, groups: Tensor | None = None) -> MoEOutput:
        logits = self.router(x)  # eq. 3, first DGMoE layer
        if prev_logits is not None:
            logits = logits + self.residual(prev_logits)  # eq. 3, later layers
        s_t = torch.softmax(logits, dim=-1)
        margin = s_t - self.lam * self.threshold  # eq. 4 before sign()
        active = margin > 0
        if self.empty_token_rule is EmptyTokenRule.ARGMAX:
            empty = ~active.any(dim=-1, keepdim=True)
            if bool(empty.any()):
                active = active | (empty & F.one_hot(s_t.argmax(dim=-1), self.num_experts).bool())
        mask = active.to(s_t.dtype)
        if torch.is_grad_enabled():
            surrogate = torch.sigmoid(margin / self.ste_temperature)
            mask = mask + surrogate - surrogate.detach()  # value: the hard mask; gradient: surrogate's
        gates = s_t * mask  # eq. 5
        y = self._dispatch(x, gates, active)  # eq. 6
        self._count(active, groups)
        return MoEOutput(y=y, logits=logits, gates=gates, active=active)


class TopKMoE(CountingLayer):
    """Vanilla top-k MoE (k = 2): softmax over the k best router scores, Switch-style
    load-balancing loss ``K · Σ_i f_i · P_i`` (f: fraction of routed tokens, P: mean probability)."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, k: int = 2, dropout: float = 0.0) -> None:
        super().__init__(num_experts)
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be in 1..{num_experts}, got {k}")
        self.k = k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden_dim, dropout) for _ in range(num_experts))

    def forward(self, x: Tensor, prev_logits: Tensor | None = None, groups: Tensor | None = None) -> MoEOutput:
        logits = self.router(x)
        top_values, top_index = logits.topk(self.k, dim=-1)
        active = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_index, True)
        gates = torch.zeros_like(logits).scatter(-1, top_index, torch.softmax(top_values, dim=-1))
        y = self._dispatch(x, gates, active)
        self._count(active, groups)
        return MoEOutput(y=y, logits=logits, gates=gates, active=active,
                         aux_loss=load_balancing_loss(logits, active, self.k))


class AdaMoE(CountingLayer):
    """AdaMoE (decoupled selection and weighting): the router picks the top-k experts; an
    independent scale adapter (Linear D→K) sets their weights, ``g_i = sigmoid(a_i(x))`` for
    the selected experts. The weights are not normalised across experts, so several experts can
    contribute fully (no winner-takes-all); the paper does not fix the adapter's squashing, the
    sigmoid is our choice."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, k: int = 2, dropout: float = 0.0) -> None:
        super().__init__(num_experts)
        self.k = k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.scale_adapter = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(Expert(dim, hidden_dim, dropout) for _ in range(num_experts))

    def forward(self, x: Tensor, prev_logits: Tensor | None = None, groups: Tensor | None = None) -> MoEOutput:
        logits = self.router(x)
        top_index = logits.topk(self.k, dim=-1).indices
        active = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_index, True)
        gates = torch.sigmoid(self.scale_adapter(x)) * active
        y = self._dispatch(x, gates, active)
        self._count(active, groups)
        # The router's top-k choice has no gradient through the gates (the adapter sets them): it
        # learns from the same load-balancing term as top-k.
        return MoEOutput(y=y, logits=logits, gates=gates, active=active,
                         aux_loss=load_balancing_loss(logits, active, self.k))


class DenseFFN(CountingLayer):
    """A plain feed-forward block with the MoE interface: one expert that takes every token."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__(1)
        self.experts = nn.ModuleList([Expert(dim, hidden_dim, dropout)])

    def forward(self, x: Tensor, prev_logits: Tensor | None = None, groups: Tensor | None = None) -> MoEOutput:
        ones = x.new_ones(*x.shape[:-1], 1)
        active = ones.bool()
        self._count(active, groups)
        return MoEOutput(y=self.experts[0](x), logits=ones, gates=ones, active=active)


_LAYERS: dict[FeedForwardKind, type[CountingLayer]] = {
    FeedForwardKind.DGMOE: DGMoE,
    FeedForwardKind.TOPK: TopKMoE,
    FeedForwardKind.ADAMOE: AdaMoE,
    FeedForwardKind.DENSE: DenseFFN,
}


def make_feed_forward(kind: FeedForwardKind | str, dim: int, num_experts: int, hidden_dim: int,
                      **options: Any) -> CountingLayer:
    """Build the feed-forward layer of one trunk block; ``options`` go to that layer's constructor."""
    return _LAYERS[FeedForwardKind(kind)](dim, num_experts, hidden_dim, **options)
