"""In-process experiments through the federation code: EDA, FedAvg and centralized by config."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset

from fedvla.config import ConfigError
from fedvla.data.synthetic import SquareReachDataset
from fedvla.data.episodes import fit_normalizer
from fedvla.federation.simulation import CENTRALIZED_CLIENT, Mode, SimulationConfig, run_simulation
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.train import TrainConfig, train_policy

TINY = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"


def tiny(**overrides) -> PolicyConfig:
    return PolicyConfig.from_yaml(TINY, image_size=32, language_dim=8, **overrides)


def datasets(n: int = 3) -> dict:
    config = tiny()
    return {f"task_{i}": (config, SquareReachDataset(config, 16, seed=10 + i)) for i in range(n)}


@pytest.mark.parametrize("mode", [Mode.EDA, Mode.FEDAVG])
def test_one_client_per_dataset_with_the_chosen_aggregation(tmp_path, mode) -> None:
    seen = []
    result = run_simulation(SimulationConfig(mode=mode, rounds=2, batch_size=8), datasets(), tmp_path,
                            on_round=lambda record, clients: seen.append(record.round), show_progress=False)
    assert seen == [0, 1] and sorted(result.clients) == ["task_0", "task_1", "task_2"]
    assert all(r.aggregation == mode.value and r.clients == ["task_0", "task_1", "task_2"] for r in result.records)
    weights = np.asarray(result.records[-1].layer_weights)
    if mode is Mode.FEDAVG:
        assert np.allclose(weights, 1 / 3)  # equal sample counts
    trunks = [c.policy.trunk.state_dict() for c in result.clients.values()]
    assert all(torch.equal(trunks[0][k], t[k]) for t in trunks[1:] for k in trunks[0])


def test_centralized_is_training_on_the_union_through_the_same_code(tmp_path) -> None:
    data = datasets(2)
    config = SimulationConfig(mode=Mode.CENTRALIZED, rounds=1, local_epochs=2, batch_size=8, seed=3)
    result = run_simulation(config, data, tmp_path, show_progress=False)
    assert list(result.clients) == [CENTRALIZED_CLIENT] and result.records[0].clients == [CENTRALIZED_CLIENT]
    # The same training by hand: the client's seeds, the server's initial trunk, the union of the data.
    model_config = tiny()
    union = ConcatDataset([d for _, d in data.values()])
    policy = seeded_policy(model_config, config.seed + 1)
    fit_normalizer(policy, union)
    policy.trunk.load_state_dict(seeded_policy(model_config, config.seed).trunk.state_dict())
    train_policy(policy, union, TrainConfig(epochs=2, batch_size=8, lr=config.lr, seed=config.seed), show_progress=False)
    federated = result.clients[CENTRALIZED_CLIENT].policy
    for name, value in policy.trunk.state_dict().items():
        torch.testing.assert_close(federated.trunk.state_dict()[name], value, rtol=0, atol=1e-6)


def test_centralized_refuses_clients_with_different_spaces(tmp_path) -> None:
    data = datasets(1)
    other = tiny(action_dim=3)
    data["other"] = (other, SquareReachDataset(other, 8))
    with pytest.raises(ConfigError, match="one observation/action space"):
        run_simulation(SimulationConfig(mode="centralized", rounds=1), data, tmp_path, show_progress=False)


def test_server_options_reach_the_server_secure_and_private_by_config(tmp_path) -> None:
    config = SimulationConfig(mode=Mode.EDA, rounds=2, batch_size=8, server_options={
        "secure_aggregation": True, "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.5})
    result = run_simulation(config, datasets(), tmp_path, show_progress=False)
    assert all(r.secure for r in result.records)
    assert 0 < result.records[0].dp_epsilon < result.records[1].dp_epsilon
    with pytest.raises(ConfigError, match="unknown option"):
        SimulationConfig(server_options={"dp_noise": 1.0})
