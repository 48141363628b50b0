"""rosbag2 → episodes: a bag recorded on a robot is a training episode (:mod:`.bag_export` writes
episodes back out as bags). No ROS installation needed (``rosbags``).

A bag holds one episode on the stack's own topics, so a recording of the running stack
(``record:=true``) is an episode as it is:

=================================  ===============================  =================================
``/camera/<name>/color/image_raw``  sensor_msgs/Image                one per policy camera (any size)
``/joint_states``                   sensor_msgs/JointState           proprio: the named joints'
                                                                     positions, or the first P
``/instruction``                    std_msgs/String                  the task instruction
``/policy/action_chunk``            fedvla_interfaces/ActionChunk    what the robot executed (a
                                                                     demonstrator publishes horizon-1
                                                                     chunks on the same topic)
``/scene_parser/parsed_scene``      fedvla_interfaces/ParsedScene    IOSP selections (``iosp``)
=================================  ===============================  =================================

Sampling (documented choice): steps are taken at ``control_rate_hz`` (by default the step period
of the recorded action chunks: the rate the robot executed them at) on the bag's clock (the
receive time the recorder stamped, as ``ros2 bag play`` uses), from the first moment every input
has arrived. Each step takes the newest message of every input at or before it; the executed
action is the element of the newest chunk that the executor was running then
(``floor((t - t_chunk) / step_period_s)``). A step with an input older than ``max_input_age_s``
or a chunk already used up is dropped and counted, never filled in. Exported episodes are written
at exactly these instants, so export → import gives back the same arrays.

``step_times="chunks"`` takes the steps at the executed chunk elements' own instants instead:
``t_chunk + i * step_period_s`` for each element ``i`` run before the next chunk arrived. For a
demonstrator that publishes one horizon-1 chunk per step (``fedvla twin demos``) every chunk is
then one step; on a fixed grid, receive-time jitter of a few milliseconds put a grid instant
just after a chunk's single step ran out, before the next chunk arrived, and 10-25 % of the
steps of a twin demonstration were dropped as "chunk used up".
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedvla import topics
from fedvla.bag import TypeRegistry, read_messages, summarize_bag
from fedvla.config import require, require_positive
from fedvla.data.episodes import META_FILE, DatasetError, EpisodeWriter, load_meta
from fedvla.data.messages import parse_action_chunk, parse_parsed_scene
from fedvla.data.observations import image_from_message, policy_images, proprio_from_joint_state
from fedvla.iosp.types import SelectedTokens

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
NS_PER_S = 1_000_000_000
STEP_TIMES = ("grid", "chunks")


@dataclasses.dataclass(kw_only=True)
class BagEpisodeConfig:
    """Which topics of a bag make an episode, and how it is sampled (see the module docstring)."""

    camera_names: tuple[str, ...]
    proprio_dim: int
    control_rate_hz: float = 0.0  # 0: 1 / step_period_s of the recorded action chunks
    proprio_joint_names: tuple[str, ...] = ()  # JointState names in proprio order; empty: the first proprio_dim
    action_topic: str = topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)
    joint_states_topic: str = topics.JOINT_STATES
    instruction_topic: str = topics.INSTRUCTION
    parsed_scene_topic: str = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)
    instruction: str = ""  # used when the bag has no instruction message
    iosp: bool = False  # read IOSP selections from the parsed scenes
    max_input_age_s: float = 0.5
    step_times: str = "grid"  # grid: every 1 / control rate; chunks: the executed chunk elements' instants

    def __post_init__(self) -> None:
        self.camera_names = tuple(self.camera_names)
        self.proprio_joint_names = tuple(self.proprio_joint_names)
        require(len(self.camera_names) > 0, "camera_names", "no camera given", "the policy's camera names")
        require(len(set(self.camera_names)) == len(self.camera_names), "camera_names",
                f"{list(self.camera_names)} names a camera twice", "distinct camera names")
        require_positive(self.proprio_dim, "proprio_dim")
        require(self.control_rate_hz >= 0, "control_rate_hz", f"{self.control_rate_hz} is negative",
                "a rate in Hz, or 0 for the recorded chunks' step period")
        require_positive(self.max_input_age_s, "max_input_age_s")
        require(self.step_times in STEP_TIMES, "step_times", f"unknown sampling {self.step_times!r}",
                " or ".join(STEP_TIMES))
        require(self.step_times == "grid" or self.control_rate_hz == 0, "step_times",
                f"chunks sampling runs at the chunks' own step period, not control_rate_hz={self.control_rate_hz:g}",
                "control_rate_hz 0 with step_times chunks")
        require(not self.proprio_joint_names or len(self.proprio_joint_names) == self.proprio_dim,
                "proprio_joint_names", f"{len(self.proprio_joint_names)} names for proprio_dim={self.proprio_dim}",
                "one joint name per proprio dimension, or none")

    def camera_topic(self, name: str) -> str:
        return topics.camera_topic(name, topics.COLOR_IMAGE)

    def input_topics(self) -> list[str]:
        names = [self.camera_topic(n) for n in self.camera_names] + [self.joint_states_topic]
        return names + ([self.parsed_scene_topic] if self.iosp else [])


@dataclasses.dataclass
class BagStep:
    """One sampled step: raw camera images (H, W, 3) in camera order, proprio, the instruction, the
    executed action, and with IOSP one token selection per camera."""

    stamp_ns: int
    images: list[np.ndarray]
    proprio: np.ndarray
    instruction: str
    action: np.ndarray
    selections: list[SelectedTokens] | None = None
    iosp_grid: tuple[int, int] | None = None  # the patch grid of the selections


@dataclasses.dataclass
class BagSampling:
    """Counts of one pass over a bag: steps kept, steps dropped per reason."""

    steps: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    period_ns: int = 0  # the sampling period used

    @property
    def rate_hz(self) -> float:
        return NS_PER_S / self.period_ns if self.period_ns else 0.0

    def describe(self) -> str:
        dropped = ", ".join(f"{n} ({reason})" for reason, n in self.dropped.most_common())
        return f"{self.steps} steps at {self.rate_hz:g} Hz" + (f"; dropped {dropped}" if dropped else "")


def executed_action(chunk_stamp_ns: int, actions: np.ndarray, step_period_s: float, t_ns: int) -> np.ndarray | None:
    """The step of a chunk (issued at ``chunk_stamp_ns``) that an executor running it at
    ``step_period_s`` per step is executing at ``t_ns``; None once the chunk is used up."""
    j = int((t_ns - chunk_stamp_ns) / (step_period_s * NS_PER_S) + 1e-6) if step_period_s > 0 else 0
    return actions[j] if 0 <= j < len(actions) else None


def _proprio(msg: Any, config: BagEpisodeConfig) -> np.ndarray:
    try:
        return proprio_from_joint_state(msg.name, msg.position, config.proprio_joint_names, config.proprio_dim)
    except ValueError as err:
        raise DatasetError(f"{config.joint_states_topic} {err}") from None


class _Latest:
    """The newest message of every input, with its bag time, and the step it samples to."""

    def __init__(self, config: BagEpisodeConfig) -> None:
        self.config = config
        self.by_topic: dict[str, tuple[int, Any]] = {}
        self.scenes: dict[str, tuple[int, Any]] = {}
        self.instruction = config.instruction

    def update(self, topic: str, stamp_ns: int, msg: Any) -> None:
        if topic == self.config.instruction_topic:
            self.instruction = msg.data
        elif topic == self.config.parsed_scene_topic:
            self.scenes[msg.camera_name] = (stamp_ns, msg)
        else:
            self.by_topic[topic] = (stamp_ns, msg)

    def complete(self) -> bool:
        c = self.config
        have = all(t in self.by_topic for t in c.input_topics() if t != c.parsed_scene_topic)
        have = have and c.action_topic in self.by_topic and bool(self.instruction)
        return have and (not c.iosp or all(n in self.scenes for n in c.camera_names))

    def sample(self, t_ns: int) -> tuple[BagStep | None, str]:
        """The step at ``t_ns``, or None and why it is dropped."""
        c = self.config
        max_age = round(c.max_input_age_s * NS_PER_S)
        named = [(f"camera {n}", self.by_topic[c.camera_topic(n)]) for n in c.camera_names]
        named.append(("joint states", self.by_topic[c.joint_states_topic]))
        if c.iosp:
            named += [(f"scene parse of {n}", self.scenes[n]) for n in c.camera_names]
        for what, (stamp, _) in named:
            if t_ns - stamp > max_age:
                return None, f"stale {what}"
        chunk_stamp, chunk = self.by_topic[c.action_topic]
        try:
            content = parse_action_chunk(chunk)
        except ValueError:
            return None, "malformed action chunk"
        action = executed_action(chunk_stamp, content.actions, content.step_period_s, t_ns)
        if action is None:
            return None, "action chunk used up"
        selections, grid = None, None
        if c.iosp:
            selections, grids = [], set()
            for name in c.camera_names:
                try:
                    scene = parse_parsed_scene(self.scenes[name][1])
                except ValueError:
                    return None, f"malformed scene parse of {name}"
                selections.append(scene.selection)
                grids.add(scene.grid)
            if len(grids) > 1:
                return None, "scene parses on different patch grids"
            grid = grids.pop()
        images = [image_from_message(self.by_topic[c.camera_topic(n)][1]) for n in c.camera_names]
        proprio = _proprio(self.by_topic[c.joint_states_topic][1], c)
        return BagStep(stamp_ns=t_ns, images=images, proprio=proprio, instruction=self.instruction, action=action,
                       selections=selections, iosp_grid=grid), ""


def read_bag_steps(path: str | Path, config: BagEpisodeConfig, sampling: BagSampling | None = None,
                   registry: TypeRegistry | None = None) -> Iterator[BagStep]:
    """The bag's steps, sampled as the module docstring says; ``sampling`` collects the counts."""
    path = Path(path)
    summary = summarize_bag(path)
    recorded = {t.name for t in summary.topics}
    required = config.input_topics() + [config.action_topic]
    missing = [t for t in required if t not in recorded]
    if missing:
        raise DatasetError(f"{path} has no {', '.join(missing)} (it has {', '.join(sorted(recorded))}); check the "
                           "camera names and topics of the bag episode config")
    sampling = sampling if sampling is not None else BagSampling()
    latest = _Latest(config)
    wanted = required + [config.instruction_topic]
    on_chunks = config.step_times == "chunks"
    next_t: int | None = None
    end_t: int | None = None  # chunks: after the current chunk's last element
    last_ns = 0
    for topic, stamp_ns, msg in read_messages(path, wanted, registry=registry):
        last_ns = stamp_ns
        if next_t is not None:
            while next_t < stamp_ns and (end_t is None or next_t < end_t):  # every input at or before next_t is in
                yield from _emit(latest, next_t, sampling)
                next_t += sampling.period_ns
        latest.update(topic, stamp_ns, msg)
        if on_chunks and (next_t is not None and topic == config.action_topic or next_t is None and latest.complete()):
            chunk_ns, chunk = latest.by_topic[config.action_topic]
            sampling.period_ns = _period_ns(config, chunk, path)
            end_t = chunk_ns + sampling.period_ns * max(1, int(chunk.horizon))
            # its first element not before now (the chunk's own instant when this message is the chunk)
            next_t = chunk_ns - (chunk_ns - stamp_ns) // sampling.period_ns * sampling.period_ns
        elif next_t is None and latest.complete():
            next_t = stamp_ns
            sampling.period_ns = _period_ns(config, latest.by_topic[config.action_topic][1], path)
    if next_t is None:
        raise DatasetError(f"{path}: never had every input at once (cameras, joint states, an action chunk, an "
                           "instruction" + (", scene parses" if config.iosp else "") + "); give `instruction` if the "
                           "bag has none")
    if next_t == last_ns:
        yield from _emit(latest, next_t, sampling)  # a step at the very last message's time


def _period_ns(config: BagEpisodeConfig, chunk: Any, path: Path) -> int:
    if config.control_rate_hz > 0:
        return round(NS_PER_S / config.control_rate_hz)
    if not chunk.step_period_s > 0:
        raise DatasetError(f"{path}: the action chunks on {config.action_topic} have no step period: give the "
                           "control rate")
    return round(chunk.step_period_s * NS_PER_S)


def _emit(latest: _Latest, t_ns: int, sampling: BagSampling) -> Iterator[BagStep]:
    step, why = latest.sample(t_ns)
    if step is None:
        sampling.dropped[why] += 1
        return
    sampling.steps += 1
    yield step


@dataclasses.dataclass
class ImportedEpisode:
    bag: Path
    file: str
    sampling: BagSampling


def import_bag(path: str | Path, writer: EpisodeWriter, config: BagEpisodeConfig, encoder) -> ImportedEpisode:
    """Append the bag's episode to a dataset. ``encoder``: the instruction encoder whose embedding is
    stored with the episode (fedvla.language)."""
    meta = writer.meta
    if list(config.camera_names) != meta.camera_names or config.proprio_dim != meta.proprio_dim:
        raise DatasetError(f"the bag config has cameras {list(config.camera_names)} and proprio_dim "
                           f"{config.proprio_dim}; the dataset {meta.camera_names} and {meta.proprio_dim}")
    if config.iosp != meta.has_iosp:
        raise DatasetError(f"the dataset {'records' if meta.has_iosp else 'has no'} IOSP selections; import with "
                           f"iosp={meta.has_iosp}")
    sampling = BagSampling()
    images, proprio, actions, indices, valid, instructions = [], [], [], [], [], set()
    for step in read_bag_steps(path, config, sampling):
        if len(step.action) != meta.action_dim:
            raise DatasetError(f"{path}: actions have {len(step.action)} dimensions, the dataset {meta.action_dim}")
        images.append(policy_images(step.images, meta.image_size))
        proprio.append(step.proprio)
        actions.append(step.action)
        instructions.add(step.instruction)
        if step.selections is not None:
            k = step.selections[0].indices.shape[1]
            if (k, step.iosp_grid) != (meta.iosp_tokens_per_group, meta.iosp_grid):
                raise DatasetError(f"{path}: scene parses select {k} tokens per group on a {step.iosp_grid} patch grid, "
                                   f"the dataset {meta.iosp_tokens_per_group} on {meta.iosp_grid}")
            indices.append(np.stack([s.indices for s in step.selections]))
            valid.append(np.stack([s.valid for s in step.selections]))
    if not actions:
        raise DatasetError(f"{path}: no complete step ({sampling.describe()})")
    if len(instructions) > 1:
        raise DatasetError(f"{path}: the instruction changes within the bag ({sorted(instructions)}); one bag is one "
                           "episode of one task: split it")
    instruction = instructions.pop()
    if abs(sampling.rate_hz - meta.control_rate_hz) > 1e-6:  # (step_times "chunks": each bag's own period)
        raise DatasetError(f"{path}: its steps come at {sampling.rate_hz:g} Hz, the dataset's at "
                           f"{meta.control_rate_hz:g} Hz; import it into a dataset of its own")
    extra = {"iosp_indices": np.stack(indices), "iosp_valid": np.stack(valid)} if meta.has_iosp else {}
    info = writer.add_episode(np.stack(images), np.stack(proprio), np.stack(actions), instruction=instruction,
                              language=encoder.encode(instruction), **extra)
    return ImportedEpisode(bag=Path(path), file=info.file, sampling=sampling)


def import_bags(bags: Sequence[str | Path], output: str | Path, config: BagEpisodeConfig, encoder, *,
                image_size: int = 0, on_episode: Callable[[ImportedEpisode], None] | None = None,
                action_space: dict | None = None) -> list[ImportedEpisode]:
    """Append one episode per bag to the dataset at ``output``. A new dataset takes ``image_size``,
    and its action size and IOSP grid from the first bag; an existing one keeps its own.
    ``action_space`` (:meth:`fedvla.robot.retarget.ActionSpace.to_dict`): what the recorded actions
    mean, kept with a new dataset and checked against an existing one's."""
    output = Path(output)
    if not bags:
        raise DatasetError("no bag to import")
    if (output / META_FILE).is_file():
        meta = load_meta(output)
        writer = EpisodeWriter(output, camera_names=meta.camera_names, image_size=meta.image_size,
                               proprio_dim=meta.proprio_dim, action_dim=meta.action_dim,
                               control_rate_hz=meta.control_rate_hz, language_encoder=meta.language_encoder,
                               iosp_grid=meta.iosp_grid, iosp_tokens_per_group=meta.iosp_tokens_per_group,
                               action_space=action_space)
    else:
        require(image_size > 0, "image_size", "a new dataset needs its image size", "the policy's image size, e.g. 128")
        sampling = BagSampling()
        first = next(read_bag_steps(bags[0], config, sampling), None)
        if first is None:
            raise DatasetError(f"{bags[0]}: no complete step to learn the action size from")
        k = first.selections[0].indices.shape[1] if first.selections else 0
        writer = EpisodeWriter(output, camera_names=config.camera_names, image_size=image_size,
                               proprio_dim=config.proprio_dim, action_dim=len(first.action),
                               control_rate_hz=sampling.rate_hz, iosp_grid=first.iosp_grid,
                               iosp_tokens_per_group=k, action_space=action_space)
        if config.step_times == "grid":
            config = dataclasses.replace(config, control_rate_hz=sampling.rate_hz)  # every bag on the same clock
    imported = []
    for bag in bags:
        imported.append(import_bag(bag, writer, config, encoder))
        if on_episode is not None:
            on_episode(imported[-1])
    return imported


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """Bag directories among ``paths``: each path is a bag (has metadata.yaml) or a directory of bags."""
    bags: list[Path] = []
    for path in map(Path, paths):
        if (path / "metadata.yaml").is_file():
            bags.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.glob("*/metadata.yaml"))
            if not found:
                raise DatasetError(f"{path} is neither a rosbag2 directory nor a directory of them")
            bags.extend(found)
        else:
            raise DatasetError(f"{path} does not exist")
    return bags


def dataset_bag_config(dataset: str | Path, **overrides: Any) -> BagEpisodeConfig:
    """The bag config that reads episodes into ``dataset``'s shape (cameras, proprio, rate, IOSP)."""
    meta = load_meta(dataset)
    fields = dict(camera_names=meta.camera_names, proprio_dim=meta.proprio_dim,
                  control_rate_hz=meta.control_rate_hz, iosp=meta.has_iosp)
    return BagEpisodeConfig(**{**fields, **overrides})
