"""DGMoE against an independent dense computation of the paper's equations 3–6."""
import numpy as np
import pytest
import torch

from fedvla.model.moe import DGMoE, FeedForwardKind, make_feed_forward

D, K, H = 16, 8, 32


def numpy_dgmoe(layer: DGMoE, x: np.ndarray, prev_logits: np.ndarray | None):
    """Eqs. 3–6 in numpy, every expert evaluated on every token (dense)."""
    W_t = layer.router.weight.detach().numpy()
    W_g = layer.residual.weight.detach().numpy()
    W_e = layer.threshold.detach().numpy()
    G = x @ W_t.T if prev_logits is None else x @ W_t.T + prev_logits @ W_g.T
    s_t = np.exp(G - G.max(-1, keepdims=True))
    s_t /= s_t.sum(-1, keepdims=True)
    s_e = np.sign(s_t - layer.lam * W_e)
    accepted = s_e > 0
    empty = ~accepted.any(-1, keepdims=True)
    accepted = accepted | (empty & (s_t == s_t.max(-1, keepdims=True)))  # the documented arg-max rule
    g = np.where(accepted, s_t, 0.0)
    with torch.no_grad():
        outs = np.stack([e(torch.from_numpy(x)).numpy() for e in layer.experts], axis=-2)  # (..., K, D)
    y = (g[..., None] * outs).sum(-2)
    return G, g, accepted, y


@pytest.fixture
def layer() -> DGMoE:
    torch.manual_seed(0)
    return DGMoE(D, K, H, lam=0.5)


def test_first_layer_matches_equations(layer) -> None:
    x = torch.randn(2, 5, D)
    out = layer(x)
    G, g, accepted, y = numpy_dgmoe(layer, x.numpy(), None)
    np.testing.assert_allclose(out.logits.detach().numpy(), G, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.active.numpy(), accepted)
    np.testing.assert_allclose(out.gates.detach().numpy(), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.y.detach().numpy(), y, rtol=1e-4, atol=1e-5)


def test_residual_logits_chain_across_layers() -> None:
    torch.manual_seed(1)
    first, second = DGMoE(D, K, H), DGMoE(D, K, H)
    with torch.no_grad():
        second.residual.weight.normal_()  # make W_g matter
    x = torch.randn(3, 4, D)
    h = first(x)
    out = second(x, prev_logits=h.logits)
    G, g, accepted, y = numpy_dgmoe(second, x.numpy(), h.logits.detach().numpy())
    np.testing.assert_allclose(out.logits.detach().numpy(), G, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.active.numpy(), accepted)
    np.testing.assert_allclose(out.y.detach().numpy(), y, rtol=1e-4, atol=1e-5)


def test_a_higher_threshold_accepts_fewer_tokens(layer) -> None:
    x = torch.randn(4, 16, D)
    before = layer(x).active.sum()
    with torch.no_grad():
        layer.threshold.add_(0.1)
    assert layer(x).active.sum() < before


def test_threshold_init_scale_sets_the_initial_acceptance_level() -> None:
    from fedvla.model.config import PolicyConfig
    from fedvla.model.trunk import Trunk

    config = PolicyConfig(num_blocks=2, embed_dim=16, num_heads=2, expert_hidden_dim=32, threshold_init_scale=1.5)
    for block in Trunk(config).blocks:
        # λ·W_e = 1.5/K: an expert accepts a token whose score is 1.5 × uniform.
        torch.testing.assert_close(config.lam * block.ff.threshold.detach(), torch.full((K,), 1.5 / K))
    torch.manual_seed(0)
    x = torch.randn(4, 16, D)
    default, sparse = DGMoE(D, K, H), DGMoE(D, K, H, threshold_init_scale=1.5)
    sparse.load_state_dict({k: v for k, v in default.state_dict().items() if k != "threshold"}, strict=False)
    assert sparse(x).active.sum() < default(x).active.sum()


def test_threshold_and_router_receive_gradient(layer) -> None:
    x = torch.randn(2, 6, D)
    out = layer(x)
    out.y.pow(2).sum().backward()
    assert layer.threshold.grad is not None and layer.threshold.grad.abs().sum() > 0
    assert layer.router.weight.grad.abs().sum() > 0


def test_sparse_dispatch_equals_dense_evaluation(layer) -> None:
    x = torch.randn(2, 7, D)
    out = layer(x)
    with torch.no_grad():
        dense = sum(out.gates[..., i : i + 1] * e(x) for i, e in enumerate(layer.experts))
    torch.testing.assert_close(out.y, dense, rtol=1e-5, atol=1e-6)


def test_counts_are_the_accepted_token_expert_pairs(layer) -> None:
    total = torch.zeros(K, dtype=torch.long)
    for _ in range(3):
        out = layer(torch.randn(2, 5, D))
        total += out.active.reshape(-1, K).sum(0)
    assert torch.equal(layer.counts, total)
    layer.reset_counts()
    assert layer.counts.sum() == 0


def test_every_token_is_processed_under_the_argmax_rule(layer) -> None:
    with torch.no_grad():
        layer.threshold.fill_(10.0)  # no expert accepts anything by threshold
    out = layer(torch.randn(2, 5, D))
    assert torch.equal(out.active.sum(-1), torch.ones(2, 5, dtype=torch.long))


def test_group_statistics(layer) -> None:
    x = torch.randn(1, 6, D)
    groups = torch.tensor([[0, 0, 1, 1, 2, -1]])  # -1: a token outside any IOSP group
    out = layer(x, groups=groups)
    per_token = out.active.sum(-1)[0].double()
    expected = torch.stack([per_token[0:2].mean(), per_token[2:4].mean(), per_token[4:5].mean()])
    torch.testing.assert_close(layer.experts_per_token(), expected)


@pytest.mark.parametrize("kind", list(FeedForwardKind))
def test_every_kind_has_the_same_interface(kind) -> None:
    torch.manual_seed(0)
    layer = make_feed_forward(kind, D, K, H)
    out = layer(torch.randn(2, 3, D))
    assert out.y.shape == (2, 3, D)
    assert out.active.dtype == torch.bool and out.gates.shape == out.active.shape
    if kind in (FeedForwardKind.TOPK, FeedForwardKind.ADAMOE):
        assert torch.equal(out.active.sum(-1), torch.full((2, 3), 2))
        assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert layer.counts.sum() == out.active.sum()


def test_load_balancing_loss_is_one_when_balanced_and_larger_when_not() -> None:
    from fedvla.model.moe import load_balancing_loss

    logits = torch.zeros(8, K)  # uniform router
    balanced = torch.zeros(8, K, dtype=torch.bool)
    balanced[torch.arange(8), torch.arange(8)] = True
    assert load_balancing_loss(logits, balanced, k=1).item() == pytest.approx(1.0)
    skewed_logits = torch.zeros(8, K)
    skewed_logits[:, 0] = 5.0
    skewed = torch.zeros(8, K, dtype=torch.bool)
    skewed[:, 0] = True
    assert load_balancing_loss(skewed_logits, skewed, k=1).item() > 5.0


@pytest.mark.parametrize("kind", [FeedForwardKind.DGMOE, FeedForwardKind.TOPK, FeedForwardKind.ADAMOE])
def test_grouped_inference_equals_the_per_expert_loop_and_follows_weight_updates(kind) -> None:
    from fedvla.model.moe import dispatch, dispatch_grouped

    torch.manual_seed(2)
    layer = make_feed_forward(kind, D, K, H).eval()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        out = layer(x)  # inference path
        loop = dispatch(x, out.gates, out.active, layer.experts)
        torch.testing.assert_close(out.y, loop, rtol=1e-5, atol=1e-6)
        grouped = dispatch_grouped(x, out.gates, out.active, layer._stacked.get(layer.experts))
        torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-6)
        layer.experts[0][0].weight.add_(1.0)  # e.g. a new trunk from the server
        out2 = layer(x)
        torch.testing.assert_close(out2.y, dispatch(x, out2.gates, out2.active, layer.experts), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spread", ["dominant", "two experts", "idle experts", "even"])
def test_grouped_inference_is_exact_whatever_the_spread_of_the_tokens(spread) -> None:
    """One expert taking every token, two taking them all (what a trained router often does),
    experts with no token before, between and after the busy ones, and an even load."""
    from fedvla.model.moe import StackedExperts, dispatch, dispatch_grouped

    torch.manual_seed(3)
    layer = DGMoE(D, K, H).eval()
    x = torch.randn(1, 40, D)
    active = torch.zeros(1, 40, K, dtype=torch.bool)
    if spread == "dominant":
        active[..., 0] = True
        active[0, torch.arange(K), torch.arange(K)] = True
    elif spread == "two experts":
        active[..., 2] = True
        active[0, :5, 6] = True
    elif spread == "idle experts":
        active[0, :, 3] = True
        active[0, ::2, 5] = True
    else:
        active[0, torch.arange(40), torch.arange(40) % K] = True
    gates = active.float() * torch.rand(1, 40, K)
    with torch.no_grad():
        grouped = dispatch_grouped(x, gates, active, StackedExperts().get(layer.experts))
        torch.testing.assert_close(grouped, dispatch(x, gates, active, layer.experts), rtol=1e-5, atol=1e-6)
