"""A small policy for the twin's robot (camera "camera", the driver's 7 joint states, the expert's
4-d end-effector deltas), trained in seconds on a synthetic dataset whose actions are a slow
drift: enough to move the arm through the graph without leaving the workspace in a test."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DRIFT = np.array([0.0, 0.12, 0.0, 1.0], np.float32)  # +3 mm along y per 0.1 s step, gripper open


def train_small_twin_checkpoint(directory: Path, steps: int = 40, epochs: int = 2) -> Path:
    from fedvla import topics
    from fedvla.data.episodes import ChunkDataset, EpisodeWriter, dataset_action_space, fit_normalizer
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.model.train import TrainConfig, train_policy
    from fedvla.twin.expert import CONTROL_RATE_HZ, EXPERT_ACTION_SPACE, PROPRIO_JOINTS

    directory = Path(directory)
    config = PolicyConfig.from_yaml(Path(__file__).resolve().parents[2] / "config" / "model" / "tiny.yaml",
                                    camera_names=[topics.TWIN_CAMERA], image_size=32, proprio_dim=len(PROPRIO_JOINTS),
                                    action_dim=EXPERT_ACTION_SPACE.action_dim)
    writer = EpisodeWriter(directory / "data", camera_names=[topics.TWIN_CAMERA], image_size=32,
                           proprio_dim=config.proprio_dim, action_dim=config.action_dim, control_rate_hz=CONTROL_RATE_HZ,
                           action_space=EXPERT_ACTION_SPACE.to_dict())
    rng = np.random.default_rng(0)
    for _ in range(2):
        actions = DRIFT + rng.normal(0, 0.01, (steps, 4)).astype(np.float32)
        writer.add_episode(rng.integers(0, 256, (steps, 1, 3, 32, 32), dtype=np.uint8),
                           rng.normal(0, 0.5, (steps, config.proprio_dim)).astype(np.float32), actions,
                           instruction="open the drawer", language=np.zeros(config.language_dim, np.float32))
    dataset = ChunkDataset(directory / "data", config.horizon)
    policy = seeded_policy(config, 0)
    fit_normalizer(policy, dataset)
    train_policy(policy, dataset, TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, seed=0), show_progress=False)
    return save_checkpoint(policy, directory / "checkpoint", metadata={"action_space": dataset_action_space(dataset)})
