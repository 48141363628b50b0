"""Episode datasets: what a robot (real or simulated) records and a client trains on.

On disk, a dataset is a directory::

    dataset.json                 camera names, image size, proprio/action sizes, control rate,
                                 the IOSP patch grid and tokens per group (when recorded),
                                 and per episode: file, length, instruction
    episode_000000.safetensors   images (T, V, 3, H, W) uint8, proprio (T, P), actions (T, A),
                                 language (D,) the instruction's sentence embedding, and with
                                 IOSP iosp_indices (T, V, 3, k) int64 / iosp_valid (T, V, 3, k)
                                 bool: the scene parser's token selection per step and camera

safetensors only (no pickle). The instruction's embedding is stored with the episode, so that
training never needs the language model; the encoder that produced it is named in the metadata.
IOSP selections are stored for the patch grid they were made on: a policy with another grid
(image size, encoder) cannot use them (:func:`check_policy_fits`).

:class:`ChunkDataset` serves training samples: the observation at step t and the action chunk
``a[t : t + horizon]``; past the end of an episode the chunk repeats the last action (the robot
holds still), so every step of every episode is a sample.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch.utils.data import ConcatDataset, Dataset

from fedvla.model.policy import Policy

FORMAT_VERSION = 1
META_FILE = "dataset.json"


class DatasetError(ValueError):
    """A dataset directory or an episode is malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class EpisodeInfo:
    file: str
    length: int
    instruction: str


@dataclasses.dataclass
class DatasetMeta:
    camera_names: list[str]
    image_size: int
    proprio_dim: int
    action_dim: int
    control_rate_hz: float
    language_encoder: str
    episodes: list[EpisodeInfo] = dataclasses.field(default_factory=list)
    iosp_grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid the selections index
    iosp_tokens_per_group: int = 0  # k; 0: no IOSP selections recorded
    action_space: dict | None = None  # fedvla.robot.retarget.ActionSpace.to_dict(); None: unknown

    @property
    def has_iosp(self) -> bool:
        return self.iosp_tokens_per_group > 0

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT_VERSION
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, where: Path) -> DatasetMeta:
        try:
            data = json.loads(text)
            if data.pop("format_version", None) != FORMAT_VERSION:
                raise DatasetError(f"{where}: dataset format is not version {FORMAT_VERSION}")
            data["episodes"] = [EpisodeInfo(**e) for e in data["episodes"]]
            if data.get("iosp_grid") is not None:
                data["iosp_grid"] = tuple(data["iosp_grid"])
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise DatasetError(f"{where} is malformed: {err}") from err


class EpisodeWriter:
    """Appends episodes to a dataset directory (created on first use)."""

    def __init__(self, directory: str | Path, *, camera_names: Sequence[str], image_size: int, proprio_dim: int,
                 action_dim: int, control_rate_hz: float, language_encoder: str = "all-MiniLM-L6-v2",
                 iosp_grid: tuple[int, int] | None = None, iosp_tokens_per_group: int = 0,
                 action_space: dict | None = None) -> None:
        """``action_space``: what the actions mean (:class:`fedvla.robot.retarget.ActionSpace`), kept
        with the data and passed on to the checkpoints trained on it; None where unknown."""
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        grid = tuple(iosp_grid) if iosp_tokens_per_group else None
        if meta_path.exists():
            self.meta = DatasetMeta.from_json(meta_path.read_text(), meta_path)
            wanted = (list(camera_names), image_size, proprio_dim, action_dim, grid, iosp_tokens_per_group)
            have = (self.meta.camera_names, self.meta.image_size, self.meta.proprio_dim, self.meta.action_dim,
                    self.meta.iosp_grid, self.meta.iosp_tokens_per_group)
            if wanted != have:
                raise DatasetError(f"{self.directory} holds episodes of another shape {have}, not {wanted}")
            if action_space is not None and self.meta.action_space not in (None, action_space):
                raise DatasetError(f"{self.directory} holds actions of another space ({self.meta.action_space}), "
                                   f"not {action_space}")
        else:
            if iosp_tokens_per_group and (grid is None or len(grid) != 2 or min(grid) < 1):
                raise DatasetError(f"IOSP selections need their patch grid (rows, cols), got {iosp_grid}")
            self.directory.mkdir(parents=True, exist_ok=True)
            self.meta = DatasetMeta(camera_names=list(camera_names), image_size=image_size, proprio_dim=proprio_dim,
                                    action_dim=action_dim, control_rate_hz=control_rate_hz,
                                    language_encoder=language_encoder, iosp_grid=grid,
                                    iosp_tokens_per_group=iosp_tokens_per_group, action_space=action_space)

    def add_episode(self, images: np.ndarray, proprio: np.ndarray, actions: np.ndarray, instruction: str,
                    language: np.ndarray, iosp_indices: np.ndarray | None = None,
                    iosp_valid: np.ndarray | None = None) -> EpisodeInfo:
        m = self.meta
        steps = len(actions)
        views, k = len(m.camera_names), m.iosp_tokens_per_group
        expected = {"images": (steps, views, 3, m.image_size, m.image_size),
                    "proprio": (steps, m.proprio_dim), "actions": (steps, m.action_dim)}
        arrays = {"images": images, "proprio": proprio, "actions": actions}
        if m.has_iosp:
            if iosp_indices is None or iosp_valid is None:
                raise DatasetError("this dataset records IOSP selections: give iosp_indices and iosp_valid")
            expected["iosp_indices"] = expected["iosp_valid"] = (steps, views, 3, k)
            arrays.update(iosp_indices=iosp_indices, iosp_valid=iosp_valid)
        elif iosp_indices is not None or iosp_valid is not None:
            raise DatasetError("this dataset has no IOSP selections (iosp_tokens_per_group is 0)")
        for name, array in arrays.items():
            if tuple(np.shape(array)) != expected[name]:
                raise DatasetError(f"episode {name} has shape {tuple(np.shape(array))}, expected {expected[name]}")
        if steps == 0:
            raise DatasetError("an episode needs at least one step")
        if images.dtype != np.uint8:
            raise DatasetError(f"episode images must be uint8, got {images.dtype}")
        tensors = {"images": np.ascontiguousarray(images), "proprio": proprio.astype(np.float32),
                   "actions": actions.astype(np.float32), "language": np.asarray(language, dtype=np.float32)}
        if m.has_iosp:
            patches = m.iosp_grid[0] * m.iosp_grid[1]
            if np.any((iosp_indices < 0) | (iosp_indices >= patches)):
                raise DatasetError(f"iosp_indices outside the {m.iosp_grid[0]}x{m.iosp_grid[1]} patch grid")
            tensors["iosp_indices"] = np.ascontiguousarray(iosp_indices, dtype=np.int64)
            tensors["iosp_valid"] = np.ascontiguousarray(iosp_valid, dtype=bool)
        info = EpisodeInfo(file=f"episode_{len(m.episodes):06d}.safetensors", length=steps, instruction=instruction)
        save_file(tensors, str(self.directory / info.file))
        m.episodes.append(info)
        # Rewrite the index after every episode: a crash loses at most the episode being written.
        tmp = self.directory / (META_FILE + ".tmp")
        tmp.write_text(m.to_json())
        tmp.replace(self.directory / META_FILE)
        return info


def load_meta(directory: str | Path) -> DatasetMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{directory} is not a dataset: {META_FILE} is missing")
    return DatasetMeta.from_json(path.read_text(), path)


class ChunkDataset(Dataset):
    """(observation at t, action chunk from t) samples over all episodes of one dataset."""

    def __init__(self, directory: str | Path, horizon: int, episodes: Sequence[int] | None = None,
                 with_iosp: bool = False) -> None:
        """``with_iosp``: samples carry the recorded IOSP selections (for an ``iosp: true`` policy)."""
        self.directory = Path(directory)
        self.meta = load_meta(self.directory)
        if with_iosp and not self.meta.has_iosp:
            raise DatasetError(f"{self.directory} has no IOSP selections: record it with IOSP on, or train a "
                               "policy with iosp: false")
        self.horizon = horizon
        self.with_iosp = with_iosp
        chosen = range(len(self.meta.episodes)) if episodes is None else episodes
        self.episodes = [{k: torch.from_numpy(v) for k, v in load_file(str(self.directory / self.meta.episodes[i].file)).items()}
                         for i in chosen]
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep["actions"]))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, t = self.index[i]
        ep = self.episodes[e]
        steps = torch.arange(t, t + self.horizon).clamp(max=len(ep["actions"]) - 1)
        sample = {"images": ep["images"][t], "proprio": ep["proprio"][t], "language": ep["language"],
                  "actions": ep["actions"][steps]}
        if self.with_iosp:
            sample["iosp_indices"], sample["iosp_valid"] = ep["iosp_indices"][t], ep["iosp_valid"][t]
        return sample

    def all_actions(self) -> torch.Tensor:
        return torch.cat([ep["actions"] for ep in self.episodes])

    def all_proprio(self) -> torch.Tensor:
        return torch.cat([ep["proprio"] for ep in self.episodes])


def check_policy_fits(meta: DatasetMeta, config) -> None:
    """Raise DatasetError when a policy config (fedvla.model.config.PolicyConfig) cannot train on
    the dataset: other cameras, image size, sizes, or IOSP selections made on another grid."""
    problems = []
    if list(config.camera_names) != list(meta.camera_names):
        problems.append(f"cameras {list(config.camera_names)} vs the dataset's {meta.camera_names}")
    for field in ("image_size", "proprio_dim", "action_dim"):
        if getattr(config, field) != getattr(meta, field):
            problems.append(f"{field} {getattr(config, field)} vs the dataset's {getattr(meta, field)}")
    if config.iosp:
        if not meta.has_iosp:
            problems.append("the policy uses IOSP but the dataset has no IOSP selections")
        elif (tuple(config.patch_grid), config.iosp_tokens_per_group) != (meta.iosp_grid, meta.iosp_tokens_per_group):
            problems.append(f"IOSP on a {config.patch_grid} grid with k={config.iosp_tokens_per_group} vs the "
                            f"dataset's {meta.iosp_grid} with k={meta.iosp_tokens_per_group}")
    if problems:
        raise DatasetError("the policy config does not fit the dataset: " + "; ".join(problems))


def dataset_action_space(dataset: Dataset) -> dict | None:
    """The action space the episodes of ``dataset`` were recorded in (one for all of them), or None."""
    if isinstance(dataset, ConcatDataset):
        spaces = {json.dumps(dataset_action_space(d), sort_keys=True) for d in dataset.datasets}
        return json.loads(spaces.pop()) if len(spaces) == 1 else None
    meta = getattr(dataset, "meta", None)
    return meta.action_space if isinstance(meta, DatasetMeta) else None


def fit_normalizer(policy: Policy, dataset: Dataset) -> None:
    """Fit the policy's action/proprio normaliser on every sample of ``dataset``."""
    def tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(ds, ConcatDataset):
            parts = [tensors(d) for d in ds.datasets]
            return torch.cat([a.reshape(-1, a.shape[-1]) for a, _ in parts]), torch.cat([p for _, p in parts])
        if hasattr(ds, "all_actions"):
            return ds.all_actions(), ds.all_proprio()
        if hasattr(ds, "actions") and hasattr(ds, "proprio"):
            return ds.actions, ds.proprio
        raise TypeError(f"cannot read actions/proprio from a {type(ds).__name__}")

    actions, proprio = tensors(dataset)
    policy.normalizer.fit(actions, proprio)
