"""EDA (Algorithm 2) against hand-computed weights."""
import numpy as np
import pytest
import torch

from fedvla.federation.eda import NonLayerRule, aggregate_trunks, expert_driven_weights, fedavg_weights


def test_weights_match_a_hand_computation() -> None:
    # One layer, three clients: A and B use the same experts, C others.
    counts = np.array([[[4, 0, 0]], [[2, 0, 0]], [[0, 3, 4]]], dtype=float)
    # s = [[1,1,0],[1,1,0],[0,0,1]] → row sums 2, 2, 1 → total 5
    np.testing.assert_allclose(expert_driven_weights(counts), [[2 / 5, 2 / 5, 1 / 5]])


def test_partial_overlap_uses_cosine_similarity() -> None:
    counts = np.array([[[1, 0]], [[1, 1]]], dtype=float)
    c = 1 / np.sqrt(2)  # cos between (1,0) and (1,1)
    np.testing.assert_allclose(expert_driven_weights(counts), [[0.5, 0.5]])  # symmetric
    counts3 = np.array([[[1, 0]], [[1, 1]], [[0, 1]]], dtype=float)
    rows = np.array([1 + c + 0, c + 1 + c, 0 + c + 1])
    np.testing.assert_allclose(expert_driven_weights(counts3), [rows / rows.sum()])


def test_zero_counts_and_all_zero_layers() -> None:
    counts = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=float)
    w = expert_driven_weights(counts)
    np.testing.assert_allclose(w[0], [1.0, 0.0])  # a zero client gets no weight in that layer
    np.testing.assert_allclose(w[1], [0.5, 0.5])  # nobody counted anything: uniform
    assert w.shape == (2, 2)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        expert_driven_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        expert_driven_weights(-np.ones((2, 1, 3)))


def test_aggregation_is_per_layer_and_non_layer_parameters_use_the_documented_rule() -> None:
    trunks = [{"blocks.0.w": torch.full((2,), 1.0), "blocks.1.w": torch.full((2,), 10.0), "norm.w": torch.ones(1)},
              {"blocks.0.w": torch.full((2,), 3.0), "blocks.1.w": torch.full((2,), 30.0), "norm.w": torch.full((1,), 5.0)}]
    weights = np.array([[0.25, 0.75], [0.5, 0.5]])

    def layer_of(name: str):
        return int(name.split(".")[1]) if name.startswith("blocks.") else None

    out = aggregate_trunks(trunks, weights, layer_of)
    torch.testing.assert_close(out["blocks.0.w"], torch.full((2,), 0.25 * 1 + 0.75 * 3))
    torch.testing.assert_close(out["blocks.1.w"], torch.full((2,), 20.0))
    torch.testing.assert_close(out["norm.w"], torch.full((1,), 0.375 * 1 + 0.625 * 5))  # mean of layer rows
    fedavg = aggregate_trunks(trunks, weights, layer_of, num_samples=[1, 3], non_layer_rule=NonLayerRule.SAMPLE_COUNT)
    torch.testing.assert_close(fedavg["norm.w"], torch.full((1,), 0.25 * 1 + 0.75 * 5))


def test_fedavg_weights() -> None:
    np.testing.assert_allclose(fedavg_weights([10, 30]), [0.25, 0.75])
    with pytest.raises(ValueError):
        fedavg_weights([0, 0])


def test_eda_on_real_policy_trunks() -> None:
    from pathlib import Path

    from fedvla.model.checkpoint import seeded_policy
    from fedvla.model.config import PolicyConfig

    tiny = PolicyConfig.from_yaml(Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml")
    a, b = seeded_policy(tiny, 1), seeded_policy(tiny, 2)
    counts = np.stack([np.array([[5, 0, 0, 0], [1, 1, 0, 0]]), np.array([[0, 5, 0, 0], [1, 1, 0, 0]])])
    weights = expert_driven_weights(counts)
    np.testing.assert_allclose(weights, [[0.5, 0.5], [0.5, 0.5]])
    trunk_layer = lambda name: a.trunk.layer_of(name.removeprefix("trunk."))  # noqa: E731
    merged = aggregate_trunks([a.trunk_state_dict(), b.trunk_state_dict()], weights, trunk_layer)
    a.load_trunk_state_dict(merged)
    key = "trunk.blocks.0.ff.router.weight"
    torch.testing.assert_close(a.trunk_state_dict()[key], (seeded_policy(tiny, 1).trunk_state_dict()[key]
                                                          + b.trunk_state_dict()[key]) / 2)
