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


# What the driver and the twin log about the loop's timing: stalls, watchdog stops, the loop's
# priority, faults. A failed graph test shows these first (CI prints a part of a long message).
_TIMING_EVENTS = ("control loop at normal priority", "control loop runs with real-time priority", "control loop stalled",
                  "watchdog:", "program stopped", "arm fault", "lost the arm", "[ERROR]")


def graph_log_digest(directory: Path, limit: int = 40) -> str:
    """Each ``graph.log`` under ``directory``: how many lines name each timing event, and the first
    ``limit`` such lines (their text after the node's stamp)."""
    parts = []
    for log in sorted(Path(directory).rglob("graph.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if any(e in line for e in _TIMING_EVENTS)]
        counts = {e: sum(e in line for line in lines) for e in _TIMING_EVENTS}
        parts.append(f"{log.relative_to(directory)}: " + ", ".join(f"{e!r} x{n}" for e, n in counts.items() if n))
        parts += [f"  {line.split(']: ', 1)[-1][:200]}" for line in lines[:limit]]
    return "\n".join(parts) or f"no graph.log under {directory}"


def failure_report(run, directory: Path) -> str:
    """A failed command's report: the graph logs' timing digest first, then its output's tails."""
    return f"{graph_log_digest(directory)}\n--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-3000:]}"
