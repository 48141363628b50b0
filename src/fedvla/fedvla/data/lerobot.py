"""Episode datasets to and from LeRobotDataset v3.0 (``fedvla dataset export|import --format lerobot``).

Written here from LeRobot's published format (its docs and code, lerobot 0.4-0.6), not with the
``lerobot`` package: lerobot 0.4.4 pins torch < 2.11 and would replace this stack's torch. The
layout::

    meta/info.json                 codebase_version v3.0, fps, totals, path templates, features
    meta/stats.json                per feature: min, max, mean, std, count, q01 ... q99
    meta/tasks.parquet             the instructions (pandas index "task", column task_index)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its rows
                                   and video frames are, its own stats
    meta/fedvla.json               what LeRobot has no field for (action space, IOSP grid, the
                                   instruction encoder); other readers ignore it
    data/chunk-000/file-000.parquet            observation.state, action, [IOSP tokens],
                                   timestamp, frame_index, episode_index, index, task_index
    videos/observation.images.<camera>/chunk-000/file-000.mp4

Episodes are never split across files; a new data or video file starts once the current one
passes ``data_files_size_in_mb`` / ``video_files_size_in_mb``. A video file is one continuous
stream over its episodes (constant rate = fps, pts from 0), so an episode's frames start at
``from_timestamp = frames before it / fps``, which is how LeRobot seeks them.

Mapping: images (T, V, 3, H, W) → one video per camera, ``observation.images.<camera>``;
proprio → ``observation.state``; actions → ``action``; the instruction → the task string. With
IOSP, each camera's selection is ``observation.iosp_tokens.<camera>``: int64 (3·k,), the patch
indices per group (target, surrounding, background; k each, -1 where none). The instruction's
embedding is not exported (LeRobot keeps the string); import recomputes it with the encoder.

Choices where the format leaves room (each a field of :class:`LeRobotExportConfig`): video codec
AV1 (libsvtav1, LeRobot's default), yuv420p, GOP 2, CRF 30. Quantiles in ``stats.json`` are exact
per episode; the dataset's quantiles are the count-weighted mean of the episodes' (as lerobot 0.4
aggregates them); min, max, mean and std are exact.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedvla.data.episodes import DatasetError, EpisodeWriter, load_meta
from fedvla.data.messages import default_dimension_names
from fedvla.scheduling import no_new_real_time_threads

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
FEDVLA_META = "meta/fedvla.json"
IMAGE_KEY = "observation.images.{camera}"
IOSP_KEY = "observation.iosp_tokens.{camera}"
STATE_KEY, ACTION_KEY = "observation.state", "action"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}
GROUP_NAMES = ("target", "surrounding", "background")


class LeRobotFormatError(DatasetError):
    """A directory is not a LeRobotDataset this reader understands."""


@dataclasses.dataclass(kw_only=True)
class LeRobotExportConfig:
    vcodec: str = "libsvtav1"  # LeRobot's default encoder (AV1)
    pix_fmt: str = "yuv420p"
    gop: int = 2  # keyframe every 2 frames: random access for training, as LeRobot encodes
    crf: int = 30
    robot_type: str = "ur3"
    chunks_size: int = 1000  # files per chunk directory
    data_files_size_in_mb: int = 100
    video_files_size_in_mb: int = 200


@dataclasses.dataclass
class _FileCursor:
    """Where the next episode goes: chunk and file index, advanced when a file is full."""
    chunk_index: int = 0
    file_index: int = 0

    def advance(self, chunks_size: int) -> None:
        if self.file_index == chunks_size - 1:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0
        else:
            self.file_index += 1


def _stats(values: np.ndarray, axis: tuple[int, ...] = (0,)) -> dict[str, np.ndarray]:
    """min, max, mean, std (population), count and quantiles over ``axis``."""
    flat = np.moveaxis(values, axis, tuple(range(len(axis)))).reshape(-1, *[s for i, s in enumerate(values.shape)
                                                                              if i not in axis])
    stats = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0),
             "count": np.array([len(values)])}
    for q in QUANTILES:
        stats[f"q{round(q * 100):02d}"] = np.quantile(flat, q, axis=0)
    return stats


def _image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, 3, H, W) uint8 frames scaled to [0, 1], shaped (3, 1, 1) as LeRobot's;
    on the frames LeRobot samples (up to max(min(100, T), min(T^0.75, 10000)), evenly spaced)."""
    steps = len(images)
    n = max(min(100, steps), min(int(steps ** 0.75), 10_000))
    chosen = images[np.unique(np.round(np.linspace(0, steps - 1, n)).astype(int))].astype(np.float64) / 255.0
    stats = _stats(chosen, axis=(0, 2, 3))
    shaped = {k: v.reshape(3, 1, 1) for k, v in stats.items() if k != "count"}
    return {**shaped, "count": np.array([len(chosen)])}


def _aggregate(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    counts = np.array([float(s["count"][0]) for s in per_episode])
    weights = counts / counts.sum()
    mean = sum(w * s["mean"] for w, s in zip(weights, per_episode))
    variance = sum(w * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for w, s in zip(weights, per_episode))
    out = {"min": np.min([s["min"] for s in per_episode], axis=0), "max": np.max([s["max"] for s in per_episode], axis=0),
           "mean": mean, "std": np.sqrt(variance), "count": np.array([int(counts.sum())])}
    for q in QUANTILES:
        key = f"q{round(q * 100):02d}"
        out[key] = sum(w * s[key] for w, s in zip(weights, per_episode))
    return out


def _jsonable(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


class _VideoFile:
    """One camera's mp4 being written: a continuous stream at ``fps`` over whole episodes."""

    def __init__(self, path: Path, fps: float, width: int, height: int, config: LeRobotExportConfig) -> None:
        import av
        from fractions import Fraction

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(config.vcodec, rate=Fraction(fps).limit_denominator(1000))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, config.pix_fmt
        self.stream.options = {"g": str(config.gop), "crf": str(config.crf)}
        self.frames = 0

    def add(self, frames_hwc: np.ndarray) -> tuple[int, int]:
        """Encode an episode's frames; (first frame, frames after) in this file. Every call into
        the encoder is kept from leaving threads real-time (SVT-AV1 raises them as root)."""
        import av

        first = self.frames
        for frame in frames_hwc:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.frames
            with no_new_real_time_threads():
                packets = self.stream.encode(video_frame)
            for packet in packets:
                self.container.mux(packet)
            self.frames += 1
        return first, self.frames

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6 if self.path.exists() else 0.0

    def close(self) -> None:
        with no_new_real_time_threads():
            packets = self.stream.encode()
        for packet in packets:
            self.container.mux(packet)
        with no_new_real_time_threads():
            self.container.close()


def export_lerobot(dataset: str | Path, output: str | Path, config: LeRobotExportConfig | None = None,
                   on_episode: Callable[[int], None] | None = None) -> Path:
    """Write the episode dataset ``dataset`` as a LeRobotDataset v3.0 under ``output`` (new)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    config = config or LeRobotExportConfig()
    meta = load_meta(dataset)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise DatasetError(f"{output} exists and is not empty: choose a new directory for the export")
    fps = float(meta.control_rate_hz)
    size = meta.image_size
    k = meta.iosp_tokens_per_group
    tasks = list(dict.fromkeys(e.instruction for e in meta.episodes))
    features = {IMAGE_KEY.format(camera=c): {
        "dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"],
        "info": {"video.height": size, "video.width": size, "video.codec": "av1" if "av1" in config.vcodec else config.vcodec,
                 "video.pix_fmt": config.pix_fmt, "video.fps": fps, "video.channels": 3, "has_audio": False,
                 "is_depth_map": False, "video.is_depth_map": False, "video.g": config.gop, "video.crf": config.crf}}
        for c in meta.camera_names}
    features[STATE_KEY] = {"dtype": "float32", "shape": [meta.proprio_dim],
                           "names": [f"proprio_{i}" for i in range(meta.proprio_dim)]}
    features[ACTION_KEY] = {"dtype": "float32", "shape": [meta.action_dim],
                            "names": default_dimension_names(meta.action_dim)}
    if meta.has_iosp:
        for c in meta.camera_names:
            features[IOSP_KEY.format(camera=c)] = {"dtype": "int64", "shape": [3 * k],
                                                   "names": [f"{g}_{j}" for g in GROUP_NAMES for j in range(k)]}
    for name, dtype in DEFAULT_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}

    data_cursor, episode_rows, stats_per_episode = _FileCursor(), [], []
    video_cursors = {c: _FileCursor() for c in meta.camera_names}
    videos: dict[str, _VideoFile] = {}
    data_writer, data_path, index = None, None, 0
    try:
        for e, info in enumerate(meta.episodes):
            arrays = load_file(str(Path(dataset) / info.file))
            steps = info.length
            columns = {STATE_KEY: arrays["proprio"].astype(np.float32), ACTION_KEY: arrays["actions"].astype(np.float32)}
            if meta.has_iosp:
                flat = np.where(arrays["iosp_valid"], arrays["iosp_indices"], -1).astype(np.int64)
                for v, c in enumerate(meta.camera_names):
                    columns[IOSP_KEY.format(camera=c)] = flat[:, v].reshape(steps, 3 * k)
            frame_index = np.arange(steps, dtype=np.int64)
            columns.update(timestamp=(frame_index / fps).astype(np.float32), frame_index=frame_index,
                           episode_index=np.full(steps, e, np.int64), index=np.arange(index, index + steps, dtype=np.int64),
                           task_index=np.full(steps, tasks.index(info.instruction), np.int64))
            table = pa.table({name: _arrow_column(values) for name, values in columns.items()})
            if data_writer is not None and data_path.stat().st_size / 1e6 >= config.data_files_size_in_mb:
                data_writer.close()
                data_writer = None
                data_cursor.advance(config.chunks_size)
            if data_writer is None:
                data_path = output / DATA_PATH.format(**vars(data_cursor))
                data_path.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(str(data_path), table.schema)
            data_writer.write_table(table)
            row = {"episode_index": e, "tasks": [info.instruction], "length": steps,
                   "data/chunk_index": data_cursor.chunk_index, "data/file_index": data_cursor.file_index,
                   "dataset_from_index": index, "dataset_to_index": index + steps}
            stats = {name: _stats(np.asarray(values, dtype=np.float64).reshape(steps, -1))
                     for name, values in columns.items()}
            for v, c in enumerate(meta.camera_names):
                key = IMAGE_KEY.format(camera=c)
                video = videos.get(c)
                if video is not None and video.size_mb() >= config.video_files_size_in_mb:
                    video.close()
                    video_cursors[c].advance(config.chunks_size)
                    video = None
                if video is None:
                    video = videos[c] = _VideoFile(output / VIDEO_PATH.format(video_key=key, **vars(video_cursors[c])),
                                                   fps, size, size, config)
                first, end = video.add(arrays["images"][:, v].transpose(0, 2, 3, 1))
                row.update({f"videos/{key}/chunk_index": video_cursors[c].chunk_index,
                            f"videos/{key}/file_index": video_cursors[c].file_index,
                            f"videos/{key}/from_timestamp": first / fps, f"videos/{key}/to_timestamp": end / fps})
                stats[key] = _image_stats(arrays["images"][:, v])
            for name, feature_stats in stats.items():
                for stat, value in feature_stats.items():
                    row[f"stats/{name}/{stat}"] = np.asarray(value).tolist()
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            episode_rows.append(row)
            stats_per_episode.append(stats)
            index += steps
            if on_episode is not None:
                on_episode(e)
    finally:
        if data_writer is not None:
            data_writer.close()
        for video in videos.values():
            video.close()
    _write_meta(output, meta, config, features, tasks, episode_rows, stats_per_episode, fps, index)
    return output


def _arrow_column(values: np.ndarray):
    """A scalar column for (T,), a fixed-size list for (T, N) (LeRobot's Sequence(length=N))."""
    import pyarrow as pa

    values = np.asarray(values)
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _write_meta(output: Path, meta, config: LeRobotExportConfig, features: dict, tasks: list[str],
                episode_rows: list[dict], stats_per_episode: list[dict], fps: float, total_frames: int) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (output / "meta").mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": config.robot_type,
            "total_episodes": len(meta.episodes), "total_frames": total_frames, "total_tasks": len(tasks),
            "chunks_size": config.chunks_size, "data_files_size_in_mb": config.data_files_size_in_mb,
            "video_files_size_in_mb": config.video_files_size_in_mb, "fps": fps,
            "splits": {"train": f"0:{len(meta.episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": features}
    (output / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    names = list(stats_per_episode[0]) if stats_per_episode else []
    stats = {name: _jsonable(_aggregate([s[name] for s in stats_per_episode])) for name in names}
    (output / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
        output / "meta" / "tasks.parquet")
    episodes_path = output / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), str(episodes_path))
    extra = {"format": "fedvla episode dataset", "camera_names": meta.camera_names, "image_size": meta.image_size,
             "language_encoder": meta.language_encoder, "iosp_grid": meta.iosp_grid,
             "iosp_tokens_per_group": meta.iosp_tokens_per_group, "action_space": meta.action_space}
    (output / FEDVLA_META).write_text(json.dumps(extra, indent=2))


# -- reading ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LeRobotEpisode:
    index: int
    task: str
    state: np.ndarray  # (T, P) float32
    action: np.ndarray  # (T, A) float32
    images: dict[str, np.ndarray]  # camera → (T, H, W, 3) uint8
    iosp_tokens: dict[str, np.ndarray]  # camera → (T, 3·k) int64, -1 where none (our exports only)


class LeRobotReader:
    """A LeRobotDataset v3.0 directory, episode by episode (ours, or any with observation.state,
    action and video cameras)."""

    def __init__(self, root: str | Path) -> None:
        import pandas as pd
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise LeRobotFormatError(f"{self.root} has no meta/info.json: not a LeRobotDataset")
        self.info = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3."):
            raise LeRobotFormatError(f"{self.root} is LeRobotDataset {version or 'of unknown version'}; this reader "
                                     "reads v3.x (convert older datasets with lerobot's converter)")
        self.features = self.info["features"]
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.features:
                raise LeRobotFormatError(f"{self.root} has no {key!r} feature (features: {', '.join(self.features)})")
        self.fps = float(self.info["fps"])
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        if not self.video_keys:
            raise LeRobotFormatError(f"{self.root} has no video camera (image features stored in parquet are not read)")
        self.cameras = [k.removeprefix("observation.images.") for k in self.video_keys]
        tasks = pd.read_parquet(self.root / "meta" / "tasks.parquet")
        self.tasks = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"])}
        episode_files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        self.episodes = [row for f in episode_files for row in pq.read_table(f).to_pylist()]
        self.episodes.sort(key=lambda r: r["episode_index"])
        extra = self.root / FEDVLA_META
        self.fedvla = json.loads(extra.read_text()) if extra.is_file() else {}
        self._data_cache: dict[Path, object] = {}
        self._video_cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def _data(self, row: dict):
        import pyarrow.parquet as pq

        path = self.root / self.info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                         file_index=row["data/file_index"])
        if path not in self._data_cache:
            self._data_cache = {path: pq.read_table(path)}  # one file at a time in memory
        return self._data_cache[path]

    def _video(self, key: str, row: dict) -> np.ndarray:
        import av

        path = self.root / self.info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                          file_index=row[f"videos/{key}/file_index"])
        if path not in self._video_cache:
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            self._video_cache = {**{p: v for p, v in self._video_cache.items() if p.parent != path.parent},
                                 path: np.stack(frames)}
        return self._video_cache[path]

    def episode(self, i: int) -> LeRobotEpisode:
        row = self.episodes[i]
        table = self._data(row)
        indices = np.asarray(table.column("index"))
        take = np.flatnonzero((indices >= row["dataset_from_index"]) & (indices < row["dataset_to_index"]))
        if len(take) != row["length"]:
            raise LeRobotFormatError(f"episode {i}: {len(take)} data rows, its metadata says {row['length']}")

        def column(name: str, dtype) -> np.ndarray:
            return np.stack([np.asarray(v, dtype=dtype) for v in table.column(name).take(take).to_pylist()])

        images = {}
        for key, camera in zip(self.video_keys, self.cameras):
            frames = self._video(key, row)
            first = int(round(row[f"videos/{key}/from_timestamp"] * self.fps))
            clip = frames[first:first + row["length"]]
            if len(clip) != row["length"]:
                raise LeRobotFormatError(f"episode {i}: {len(clip)} frames of {key} from "
                                         f"{row[f'videos/{key}/from_timestamp']:g} s, expected {row['length']}")
            images[camera] = clip
        iosp = {c: column(IOSP_KEY.format(camera=c), np.int64) for c in self.cameras
                if IOSP_KEY.format(camera=c) in self.features}
        task_index = int(np.asarray(table.column("task_index").take(take[:1]))[0])
        return LeRobotEpisode(i, self.tasks[task_index], column(STATE_KEY, np.float32), column(ACTION_KEY, np.float32),
                              images, iosp)


def import_lerobot(root: str | Path, output: str | Path, encoder, image_size: int | None = None,
                   cameras: Sequence[str] | None = None, language_encoder: str = "all-MiniLM-L6-v2",
                   on_episode: Callable[[int], None] | None = None) -> int:
    """Append a LeRobotDataset's episodes to the episode dataset ``output``; episodes imported.

    Images are resized to ``image_size`` (default: our export's size, else 128) as the policy
    does; ``cameras`` picks and orders the cameras (default all, in the dataset's order). The
    instruction embeddings come from ``encoder`` (named ``language_encoder`` in the dataset) on
    the task strings."""
    from fedvla.data.observations import policy_images

    reader = LeRobotReader(root)
    extra = reader.fedvla
    chosen = list(cameras or extra.get("camera_names") or reader.cameras)
    missing = [c for c in chosen if c not in reader.cameras]
    if missing:
        raise LeRobotFormatError(f"{root} has no camera {', '.join(missing)} (cameras: {', '.join(reader.cameras)})")
    size = image_size or extra.get("image_size") or 128
    iosp = bool(extra.get("iosp_tokens_per_group")) and all(c in reader.episode(0).iosp_tokens for c in chosen) \
        if len(reader) else False
    k = int(extra.get("iosp_tokens_per_group") or 0) if iosp else 0
    writer = None
    for i in range(len(reader)):
        episode = reader.episode(i)
        steps = len(episode.action)
        images = np.stack([policy_images(list(episode.images[c]), size) for c in chosen], axis=1)  # (T, V, 3, s, s)
        if writer is None:
            writer = EpisodeWriter(output, camera_names=chosen, image_size=size, proprio_dim=episode.state.shape[1],
                                   action_dim=episode.action.shape[1], control_rate_hz=reader.fps,
                                   language_encoder=language_encoder,
                                   iosp_grid=tuple(extra["iosp_grid"]) if iosp else None, iosp_tokens_per_group=k,
                                   action_space=extra.get("action_space"))
        options = {}
        if iosp:
            flat = np.stack([episode.iosp_tokens[c] for c in chosen], axis=1).reshape(steps, len(chosen), 3, k)
            options = {"iosp_indices": np.where(flat >= 0, flat, 0), "iosp_valid": flat >= 0}
        writer.add_episode(images, episode.state, episode.action, episode.task, encoder.encode(episode.task), **options)
        if on_episode is not None:
            on_episode(i)
    return len(reader)
