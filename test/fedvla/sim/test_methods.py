"""The study's methods: the trunk-matched FedAvg baseline has as many trunk parameters as FedVLA's
MoE trunk, at every scale."""
import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.graph import find_config_dir
from fedvla.model.checkpoint import seeded_policy
from fedvla.sim.study import MethodConfig, Study, load_method, load_scale


def _study(tmp_path, scale_name: str) -> Study:
    from fedvla.data.episodes import EpisodeWriter

    scale = load_scale(find_config_dir(), scale_name)
    study = Study(find_config_dir(), scale, tmp_path / scale_name)
    writer = EpisodeWriter(study.data_dir / study.tasks[0], camera_names=["corner", "top", "shoulder"], image_size=64,
                           proprio_dim=4, action_dim=4, control_rate_hz=80.0, iosp_grid=(4, 4), iosp_tokens_per_group=4)
    writer.add_episode(np.zeros((2, 3, 3, 64, 64), np.uint8), np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32),
                       instruction="x", language=np.zeros(384, np.float32),
                       iosp_indices=np.zeros((2, 3, 3, 4), np.int64), iosp_valid=np.ones((2, 3, 3, 4), bool))
    return study


@pytest.mark.parametrize("scale_name", ["smoke", "cpu", "paper"])
def test_the_matched_fedavg_trunk_is_as_large_as_fedvlas(tmp_path, scale_name) -> None:
    study = _study(tmp_path, scale_name)
    sizes = {}
    for name in ("fedvla", "fedavg", "fedavg_matched"):
        config = study.model_config(load_method(study.config_dir, name))
        sizes[name] = sum(p.numel() for p in seeded_policy(config, 0).trunk.parameters())
    assert sizes["fedavg"] < 0.5 * sizes["fedvla"]  # the plain baseline is much smaller ...
    assert sizes["fedavg_matched"] == pytest.approx(sizes["fedvla"], rel=0.02)  # ... the matched one is not


def test_matching_needs_a_dense_trunk(tmp_path) -> None:
    study = _study(tmp_path, "smoke")
    with pytest.raises(ConfigError, match="match_trunk_of: needs a dense trunk"):
        study.model_config(MethodConfig(name="odd", model={"feed_forward": "dgmoe"}, match_trunk_of="fedvla"))


def test_the_evidence_scale_meets_the_issues_bar() -> None:
    """Issue 23: every method of Tables 1-3 plus the matched FedAvg, 3 seeds for Centralized, FedAvg,
    FedVLA and w/o EDA, and 15 trials x 5 repeats per task; FedVLA and w/o EDA on 12 Dirichlet(0.5)
    clients and on 12 clients whose sizes span 10x; FedVLA on a trained detector."""
    from fedvla.graph import find_config_dir
    from fedvla.sim.study import load_scale

    scale = load_scale(find_config_dir(), "evidence")
    assert set(scale.methods) == {"centralized", "fedavg", "fedavg_matched", "fedvla", "wo_iosp", "wo_dgmoe", "wo_eda",
                                  "fedvla_dirichlet", "wo_eda_dirichlet", "fedvla_sizes", "wo_eda_sizes", "fedvla_detector"}
    assert all(scale.seeds.get(m) == 3 for m in ("centralized", "fedavg", "fedvla", "wo_eda"))
    assert (scale.evaluate["trials"], scale.evaluate["repeats"]) == (15, 5)
    methods = {name: load_method(find_config_dir(), name) for name in scale.methods}
    dirichlet = scale.client_split(methods["fedvla_dirichlet"])
    assert (dirichlet.kind.value, dirichlet.count, dirichlet.alpha) == ("dirichlet", 12, 0.5)
    sizes = scale.client_split(methods["wo_eda_sizes"])
    assert (sizes.kind.value, sizes.count, sizes.size_ratio) == ("sizes", 12, 10)
    assert scale.client_split(methods["fedvla"]).kind.value == "task" and methods["fedvla_detector"].detector
