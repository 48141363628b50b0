"""Local training of one client's policy (also centralized training, on the union of datasets).

Adam on the Huber loss of normalised action chunks, seeded, with a progress bar. Returns the
per-epoch losses and the expert-activation matrix ``V`` accumulated during this training (what a
federated client uploads with its trunk).
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fedvla.config import require, require_positive
from fedvla.model.policy import Policy


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    num_workers: int = 0

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}", "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}", "an integer >= 1")
        require_positive(self.lr, "lr")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclasses.dataclass
class TrainResult:
    epoch_losses: list[float]
    expert_counts: torch.Tensor  # (L, K) tokens per expert during this training
    num_samples: int
    steps: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_loss(policy: Policy, dataset: Dataset, batch_size: int = 64) -> float:
    """Mean Huber loss over a dataset (validation)."""
    policy.eval()
    device = next(policy.parameters()).device
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, _ = policy.compute_loss(batch)
        n = next(iter(batch.values())).shape[0]
        total, count = total + loss.item() * n, count + n
    return total / max(count, 1)


def train_policy(policy: Policy, dataset: Dataset, config: TrainConfig, *, show_progress: bool = True,
                 description: str = "train") -> TrainResult:
    """Train ``policy`` in place on ``dataset`` (samples: dicts with images/proprio/language/actions)."""
    seed_everything(config.seed)
    device = config.torch_device()
    policy.to(device).train()
    if not bool(policy.normalizer.fitted):
        raise ValueError("fit the normaliser on this client's data first (policy.normalizer.fit)")
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
                        num_workers=config.num_workers, drop_last=len(dataset) > config.batch_size)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    policy.reset_expert_counts()
    epoch_losses, steps = [], 0
    with tqdm(total=config.epochs * len(loader), desc=description, disable=not show_progress, leave=False) as bar:
        for _ in range(config.epochs):
            total, count = 0.0, 0
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, info = policy.compute_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip_norm)
                optimizer.step()
                n = batch["actions"].shape[0]
                total, count, steps = total + info["loss"] * n, count + n, steps + 1
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}")
            epoch_losses.append(total / count)
    policy.eval()
    return TrainResult(epoch_losses=epoch_losses, expert_counts=policy.expert_counts().cpu(),
                       num_samples=len(dataset), steps=steps)
