"""A policy checkpoint and a rosbag2 episode recorded from its closed loop in Meta-World: the
fixtures of the replay tests, generated (not committed)."""
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[2] / "config"
TASK = "drawer-close-v3"
CAMERAS = ("corner", "top")


def closed_loop_bag(directory: Path, steps: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """(checkpoint, bag): a tiny 2-camera policy (64 px, no IOSP) and one trial of it, recorded."""
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.sim.evaluate import EvalConfig, evaluate_checkpoint

    config = PolicyConfig.from_yaml(CONFIG / "model" / "tiny.yaml", camera_names=list(CAMERAS), image_size=64)
    policy = seeded_policy(config, seed)
    generator = torch.Generator().manual_seed(seed)
    policy.normalizer.fit(torch.rand(64, config.action_dim, generator=generator) * 2 - 1,
                          torch.rand(64, config.proprio_dim, generator=generator))
    checkpoint = save_checkpoint(policy, directory / "checkpoint")
    evaluate_checkpoint(checkpoint, TASK, EvalConfig(trials=1, repeats=1, max_steps=steps, record_trials=1),
                        bag_dir=directory / "bags")
    return checkpoint, directory / "bags" / f"{TASK}_trial_0"
