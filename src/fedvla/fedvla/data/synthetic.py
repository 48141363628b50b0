"""A small synthetic reaching task whose actions depend on the observation (for tests,
benchmarks and smoke runs of the trainer).

Each sample shows a bright square at a random place in every camera view; the action chunk
moves towards it: ``a_t = (t+1)/H · (u, v, proprio[0], proprio[1])``, with (u, v) the square's
normalised position. A constant prediction cannot fit it; a policy that looks can. With an
IOSP policy config, each sample also carries the IOSP token selection of the square (the target
object) by the box rule.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from fedvla.model.config import PolicyConfig


class SquareReachDataset(Dataset):
    def __init__(self, config: PolicyConfig, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        views, s, h = len(config.camera_names), config.image_size, config.horizon
        square = max(4, s // 8)
        self.images = torch.zeros(size, views, 3, s, s, dtype=torch.uint8)
        uv = torch.rand(size, 2, generator=g)
        corners = (uv * (s - square)).long()
        for i in range(size):
            u, v = corners[i].tolist()
            self.images[i, :, :, v : v + square, u : u + square] = 255
        self.proprio = torch.randn(size, config.proprio_dim, generator=g)
        self.language = torch.randn(1, config.language_dim, generator=g).expand(size, -1).clone()
        target = torch.cat([uv * 2 - 1, self.proprio[:, :2]], dim=1)[:, : config.action_dim]
        ramp = torch.arange(1, h + 1, dtype=torch.float32).view(1, h, 1) / h
        self.actions = ramp * target.unsqueeze(1)
        self.iosp = self._iosp_selections(config, corners, square) if config.iosp else None

    @staticmethod
    def _iosp_selections(config: PolicyConfig, corners: torch.Tensor, square: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The square is the target object (the only one): IOSP's box rule picks its patches."""
        from fedvla.iosp.tokens import TokenSelectionConfig, select_by_overlap
        from fedvla.iosp.types import Detection, ObjectGroup

        selection = TokenSelectionConfig(tokens_per_group=config.iosp_tokens_per_group, min_coverage=0.25)
        size, views = config.image_size, len(config.camera_names)
        indices, valid = [], []
        for u, v in corners.tolist():
            square_box = Detection(name="square", box=(u, v, u + square, v + square))
            chosen = select_by_overlap([square_box], [ObjectGroup.TARGET], (size, size), config.patch_grid, selection)
            indices.append(torch.from_numpy(chosen.indices))
            valid.append(torch.from_numpy(chosen.valid))
        expand = (-1, views, -1, -1)
        return torch.stack(indices).unsqueeze(1).expand(*expand).clone(), torch.stack(valid).unsqueeze(1).expand(*expand).clone()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"images": self.images[i], "proprio": self.proprio[i], "language": self.language[i],
                  "actions": self.actions[i]}
        if self.iosp is not None:
            sample["iosp_indices"], sample["iosp_valid"] = self.iosp[0][i], self.iosp[1][i]
        return sample
