"""Episodes → rosbag2: a dataset episode, or a closed-loop rollout as it happens, written as a bag
on the stack's topics (the layout and sampling :mod:`fedvla.data.bag_import` reads back: export →
import gives back the same arrays). No ROS installation needed (``rosbags``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedvla.bag import DEFAULT_STORAGE, BagWriter, TypeRegistry
from fedvla.config import require
from fedvla.data.bag_import import NS_PER_S, IMAGE_TYPE, JOINT_STATE_TYPE, STRING_TYPE, BagEpisodeConfig
from fedvla.data.episodes import load_meta
from fedvla.data.messages import (ACTION_CHUNK_TYPE, PARSED_SCENE_TYPE, SCENE_OBJECT_TYPE, action_chunk_fields,
                                  parsed_scene_fields)
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.types import SelectedTokens


class BagMessageFactory:
    """rosbags message objects of the types an episode bag holds, serialized to CDR."""

    def __init__(self, registry: TypeRegistry) -> None:
        self.registry = registry
        for msgtype in (IMAGE_TYPE, JOINT_STATE_TYPE, STRING_TYPE, ACTION_CHUNK_TYPE, PARSED_SCENE_TYPE, SCENE_OBJECT_TYPE):
            registry.ensure(msgtype)
        self.types = registry.typestore.types

    def header(self, stamp_ns: int, frame_id: str = "") -> Any:
        time = self.types["builtin_interfaces/msg/Time"](sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)
        return self.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def cdr(self, msg: Any) -> bytes:
        return bytes(self.registry.typestore.serialize_cdr(msg, msg.__msgtype__))

    def image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> bytes:
        hwc = np.ascontiguousarray(rgb, dtype=np.uint8)
        return self.cdr(self.types[IMAGE_TYPE](
            header=self.header(stamp_ns, frame_id), height=hwc.shape[0], width=hwc.shape[1], encoding="rgb8",
            is_bigendian=0, step=hwc.shape[1] * 3, data=hwc.reshape(-1)))

    def joint_state(self, names: Sequence[str], positions: np.ndarray, stamp_ns: int) -> bytes:
        empty = np.zeros(0, dtype=np.float64)
        return self.cdr(self.types[JOINT_STATE_TYPE](
            header=self.header(stamp_ns), name=list(names), position=np.ascontiguousarray(positions, dtype=np.float64),
            velocity=empty, effort=empty))

    def string(self, text: str) -> bytes:
        return self.cdr(self.types[STRING_TYPE](data=text))

    def action_chunk(self, chunk: np.ndarray, stamp_ns: int, period_s: float) -> bytes:
        return self.cdr(self.types[ACTION_CHUNK_TYPE](header=self.header(stamp_ns), **action_chunk_fields(chunk, period_s)))

    def parsed_scene(self, camera: str, instruction: str, grid: tuple[int, int], selection: SelectedTokens,
                     stamp_ns: int) -> bytes:
        """The recorded selection alone: the objects and targets behind it are not kept in a dataset."""
        parse = CameraParse(camera=camera, instruction=instruction, detections=[], groups=[], targets=[],
                            selection=selection, grid=grid, timings_ms={}, object_tokens=[])
        return self.cdr(self.types[PARSED_SCENE_TYPE](
            header=self.header(stamp_ns), **parsed_scene_fields(parse, "recorded", self.types[SCENE_OBJECT_TYPE])))


class EpisodeBagWriter:
    """Writes an episode as it happens (a closed-loop rollout, or a stored episode) to a bag on the
    stack's topics: step n at ``start_ns + n·period``, the instants the importer samples. A chunk
    is written at the step it was issued (horizon-1 chunks for demonstrations)."""

    def __init__(self, path: str | Path, *, camera_names: Sequence[str], control_rate_hz: float, instruction: str,
                 proprio_joint_names: Sequence[str], start_ns: int = 0, storage: str = DEFAULT_STORAGE,
                 iosp: bool = False, registry: TypeRegistry | None = None) -> None:
        self.config = BagEpisodeConfig(camera_names=tuple(camera_names), proprio_dim=len(proprio_joint_names),
                                       control_rate_hz=control_rate_hz, iosp=iosp)
        self.period_ns = round(NS_PER_S / control_rate_hz)
        self.start_ns, self.instruction = start_ns, instruction
        self.joint_names = list(proprio_joint_names)
        self.steps = 0
        self._writer = BagWriter(path, storage, registry)
        self._make = BagMessageFactory(self._writer.registry)
        self._camera_topics = [self.config.camera_topic(n) for n in self.config.camera_names]
        for topic in self._camera_topics:
            self._writer.add_topic(topic, IMAGE_TYPE)
        for topic, msgtype in ((self.config.joint_states_topic, JOINT_STATE_TYPE),
                               (self.config.instruction_topic, STRING_TYPE),
                               (self.config.action_topic, ACTION_CHUNK_TYPE)):
            self._writer.add_topic(topic, msgtype)
        if iosp:
            self._writer.add_topic(self.config.parsed_scene_topic, PARSED_SCENE_TYPE)
        self._writer.write(self.config.instruction_topic, start_ns, self._make.string(instruction))

    @property
    def path(self) -> Path:
        return self._writer.path

    def add_step(self, images: Sequence[np.ndarray], proprio: np.ndarray, chunk: np.ndarray | None = None,
                 selections: Sequence[SelectedTokens] | None = None, iosp_grid: tuple[int, int] | None = None) -> None:
        """One control step: RGB images (H, W, 3) per camera, proprio, the chunk issued at this step
        (H, A) if any, and with IOSP the selection per camera on ``iosp_grid``."""
        stamp = self.start_ns + self.steps * self.period_ns
        make, write = self._make, self._writer.write
        for v, (name, topic) in enumerate(zip(self.config.camera_names, self._camera_topics)):
            write(topic, stamp, make.image(images[v], stamp, f"{name}_color_optical_frame"))
            if self.config.iosp:
                write(self.config.parsed_scene_topic, stamp, make.parsed_scene(
                    name, self.instruction, iosp_grid, selections[v], stamp))
        write(self.config.joint_states_topic, stamp, make.joint_state(self.joint_names, proprio, stamp))
        if chunk is not None:
            write(self.config.action_topic, stamp, make.action_chunk(np.atleast_2d(chunk), stamp,
                                                                     self.period_ns / NS_PER_S))
        self.steps += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EpisodeBagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_episode(dataset: str | Path, episode: int, bag_path: str | Path, *, start_ns: int = 0,
                   proprio_joint_names: Sequence[str] = (), storage: str = DEFAULT_STORAGE,
                   registry: TypeRegistry | None = None) -> Path:
    """Write one dataset episode as a bag (:class:`EpisodeBagWriter`): each stored action as the
    horizon-1 chunk of its step, the instruction once at the start."""
    from safetensors.numpy import load_file

    meta = load_meta(dataset)
    require(0 <= episode < len(meta.episodes), "episode", f"{episode} is not an episode of {dataset}",
            f"0 ... {len(meta.episodes) - 1}")
    info = meta.episodes[episode]
    arrays = load_file(str(Path(dataset) / info.file))
    names = list(proprio_joint_names) or [f"proprio_{i}" for i in range(meta.proprio_dim)]
    require(len(names) == meta.proprio_dim, "proprio_joint_names", f"{len(names)} names for {meta.proprio_dim} "
            "proprio dimensions", "one name per dimension")
    with EpisodeBagWriter(bag_path, camera_names=meta.camera_names, control_rate_hz=meta.control_rate_hz,
                          instruction=info.instruction, proprio_joint_names=names, start_ns=start_ns, storage=storage,
                          iosp=meta.has_iosp, registry=registry) as writer:
        for t in range(info.length):
            selections = None
            if meta.has_iosp:
                selections = [SelectedTokens(indices=arrays["iosp_indices"][t, v], valid=arrays["iosp_valid"][t, v],
                                             scores=np.zeros(arrays["iosp_valid"][t, v].shape, np.float32))
                              for v in range(len(meta.camera_names))]
            writer.add_step(list(np.transpose(arrays["images"][t], (0, 2, 3, 1))), arrays["proprio"][t],
                            arrays["actions"][t], selections, meta.iosp_grid)
    return Path(bag_path)


def export_dataset(dataset: str | Path, output: str | Path, episodes: Sequence[int] | None = None, *,
                   on_episode: Callable[[Path], None] | None = None, **options: Any) -> list[Path]:
    """One bag per episode under ``output`` (``episode_000000``, ...); ``options`` as :func:`export_episode`."""
    chosen = range(len(load_meta(dataset).episodes)) if episodes is None else episodes
    bags = []
    for episode in chosen:
        bags.append(export_episode(dataset, episode, Path(output) / f"episode_{episode:06d}", **options))
        if on_episode is not None:
            on_episode(bags[-1])
    return bags
