"""The study's client splits: every training episode with exactly one client, none empty,
reproducible, and skewed the way each setting says."""
import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.sim.partition import ClientSplit, evaluating_client, partition

EPISODES = {task: list(range(18)) for task in ("drawer", "sweep", "window", "button")}


def _assignments(result):
    return sorted((task, i) for tasks in result.values() for task, indices in tasks.items() for i in indices)


def test_the_paper_split_is_one_client_per_task() -> None:
    result = partition(EPISODES, ClientSplit())
    assert result == {task: {task: list(range(18))} for task in EPISODES}
    assert evaluating_client(result, "sweep") == "sweep"


@pytest.mark.parametrize("kind", ["dirichlet", "sizes"])
def test_every_episode_goes_to_exactly_one_client_and_no_client_is_empty(kind) -> None:
    split = ClientSplit(kind=kind, count=12, seed=3)
    result = partition(EPISODES, split)
    assert len(result) == 12 and all(result.values())
    assert _assignments(result) == sorted((t, i) for t, indices in EPISODES.items() for i in indices)
    assert partition(EPISODES, split) == result  # seeded
    assert partition(EPISODES, ClientSplit(kind=kind, count=12, seed=4)) != result


def test_dirichlet_shares_are_skewed_towards_few_tasks_per_client() -> None:
    result = partition(EPISODES, ClientSplit(kind="dirichlet", count=12, alpha=0.5, seed=0))
    # the largest task's share of each client's data: near 1/4 would be an even mix
    dominant = [max(len(v) for v in tasks.values()) / sum(len(v) for v in tasks.values()) for tasks in result.values()]
    assert np.mean(dominant) > 0.6
    for task in EPISODES:
        holder = evaluating_client(result, task)
        assert len(result[holder][task]) == max(len(tasks.get(task, ())) for tasks in result.values())


def test_sizes_span_the_ratio() -> None:
    result = partition(EPISODES, ClientSplit(kind="sizes", count=6, size_ratio=10.0, seed=0))
    sizes = [sum(len(v) for v in tasks.values()) for tasks in result.values()]
    assert sizes == sorted(sizes) and sum(sizes) == 72
    assert 8 <= sizes[-1] / sizes[0] <= 14  # 10x, up to rounding a handful of episodes


def test_impossible_splits_are_refused() -> None:
    with pytest.raises(ConfigError, match="clients.count: 100 clients for 72 training episodes"):
        partition(EPISODES, ClientSplit(kind="dirichlet", count=100))
    with pytest.raises(ConfigError, match="clients.kind"):
        ClientSplit(kind="random")


def test_the_study_trains_one_dataset_per_client_of_its_split(tmp_path) -> None:
    """A study scale with a Dirichlet split: each client's dataset is its share of the training
    episodes (validation held out first), and each task is evaluated by its largest holder."""
    from fedvla.data.episodes import EpisodeWriter
    from fedvla.graph import find_config_dir
    from fedvla.sim.study import Study, StudyScale

    tasks = ["drawer-close-v3", "sweep-into-v3"]
    for task in tasks:
        writer = EpisodeWriter(tmp_path / "study" / "data" / task, camera_names=["corner", "top", "shoulder"],
                               image_size=64, proprio_dim=4, action_dim=4, control_rate_hz=80.0)
        for episode in range(10):
            steps = 3 + episode % 3
            writer.add_episode(np.zeros((steps, 3, 3, 64, 64), np.uint8), np.zeros((steps, 4), np.float32),
                               np.zeros((steps, 4), np.float32), instruction=task, language=np.zeros(384, np.float32))
    scale = StudyScale(name="test", model_config="tiny.yaml", validation_fraction=0.2, methods=("wo_iosp",),
                       collect={"tasks": tasks}, clients={"kind": "dirichlet", "count": 3})
    study = Study(find_config_dir(), scale, tmp_path / "study")
    model = study.model_config(study.methods[0])
    training = {task: study.split(task, model)[0] for task in study.tasks}
    datasets, holders, held = study.client_datasets(model, training)
    assert sorted(datasets) == ["client_00", "client_01", "client_02"]
    assert sum(n for tasks in held.values() for n in tasks.values()) == 16  # 8 training episodes per task
    for client, (_, data) in datasets.items():
        steps = sum(3 + e % 3 for task, n in held[client].items()
                    for e in partition({t: list(range(8)) for t in study.tasks}, scale.client_split())[client][task])
        assert len(data) == steps
    for task, client in holders.items():
        assert held[client].get(task, 0) == max(tasks.get(task, 0) for tasks in held.values())
