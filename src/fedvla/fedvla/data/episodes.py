"""Episode datasets: what a robot (real or simulated) records and a client trains on.

On disk, a dataset is a directory::

    dataset.json                 camera names, image size, proprio/action sizes, control rate,
                                 and per episode: file, length, instruction
    episode_000000.safetensors   images (T, V, 3, H, W) uint8, proprio (T, P), actions (T, A),
                                 language (D,) the instruction's sentence embedding

safetensors only (no pickle). The instruction's embedding is stored with the episode, so that
training never needs the language model; the encoder that produced it is named in the metadata.

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
from torch.utils.data import Dataset

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
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise DatasetError(f"{where} is malformed: {err}") from err


class EpisodeWriter:
    """Appends episodes to a dataset directory (created on first use)."""

    def __init__(self, directory: str | Path, *, camera_names: Sequence[str], image_size: int, proprio_dim: int,
                 action_dim: int, control_rate_hz: float, language_encoder: str = "all-MiniLM-L6-v2") -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if meta_path.exists():
            self.meta = DatasetMeta.from_json(meta_path.read_text(), meta_path)
            wanted = (list(camera_names), image_size, proprio_dim, action_dim)
            have = (self.meta.camera_names, self.meta.image_size, self.meta.proprio_dim, self.meta.action_dim)
            if wanted != have:
                raise DatasetError(f"{self.directory} holds episodes of another shape {have}, not {wanted}")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.meta = DatasetMeta(camera_names=list(camera_names), image_size=image_size, proprio_dim=proprio_dim,
                                    action_dim=action_dim, control_rate_hz=control_rate_hz,
                                    language_encoder=language_encoder)

    def add_episode(self, images: np.ndarray, proprio: np.ndarray, actions: np.ndarray, instruction: str,
                    language: np.ndarray) -> EpisodeInfo:
        m = self.meta
        steps = len(actions)
        expected = {"images": (steps, len(m.camera_names), 3, m.image_size, m.image_size),
                    "proprio": (steps, m.proprio_dim), "actions": (steps, m.action_dim)}
        for name, array in (("images", images), ("proprio", proprio), ("actions", actions)):
            if tuple(array.shape) != expected[name]:
                raise DatasetError(f"episode {name} has shape {tuple(array.shape)}, expected {expected[name]}")
        if steps == 0:
            raise DatasetError("an episode needs at least one step")
        if images.dtype != np.uint8:
            raise DatasetError(f"episode images must be uint8, got {images.dtype}")
        info = EpisodeInfo(file=f"episode_{len(m.episodes):06d}.safetensors", length=steps, instruction=instruction)
        save_file({"images": np.ascontiguousarray(images), "proprio": proprio.astype(np.float32),
                   "actions": actions.astype(np.float32), "language": np.asarray(language, dtype=np.float32)},
                  str(self.directory / info.file))
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

    def __init__(self, directory: str | Path, horizon: int, episodes: Sequence[int] | None = None) -> None:
        self.directory = Path(directory)
        self.meta = load_meta(self.directory)
        self.horizon = horizon
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
        return {"images": ep["images"][t], "proprio": ep["proprio"][t], "language": ep["language"],
                "actions": ep["actions"][steps]}

    def all_actions(self) -> torch.Tensor:
        return torch.cat([ep["actions"] for ep in self.episodes])

    def all_proprio(self) -> torch.Tensor:
        return torch.cat([ep["proprio"] for ep in self.episodes])
