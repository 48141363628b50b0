"""rosbag2 reading and writing with the ``rosbags`` library (no ROS installation needed).

Message definitions come from the ROS 2 Kilted type store that ``rosbags`` ships; types it does
not know (the stack's own ``fedvla_interfaces``, or any other package) are registered from
their ``.msg`` files in ``share/<package>/msg`` of the installed prefixes, so the definitions in
a bag are the ones the publishers were built from.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedvla import topics as names  # (`topics` is also a field name here)
from fedvla.config import require, require_positive
from fedvla.paths import ament_prefixes, run_directory

log = logging.getLogger(__name__)

STORAGE_FORMATS = ("mcap", "sqlite3")
DEFAULT_STORAGE = "mcap"  # rosbag2's default since Iron
COMPRESSIONS = ("zstd", "none")
# zstd on by default: MCAP compresses each chunk (rosbag2's mcap storage presets do the same),
# sqlite3 each message (rosbag2's per-message compression); readers decompress transparently.
DEFAULT_COMPRESSION = "zstd"


class BagError(RuntimeError):
    """A bag cannot be read or written."""


@dataclasses.dataclass(kw_only=True)
class RecorderConfig:
    """Settings of the bag recorder; field names are the ``bag_recorder`` node's parameters."""

    output_path: str = ""  # empty: runs/bag_<date>_<time> in the working directory
    storage: str = DEFAULT_STORAGE
    compression: str = DEFAULT_COMPRESSION
    exclude_topics: tuple[str, ...] = (names.ROSOUT, names.PARAMETER_EVENTS)
    discovery_period_s: float = 0.5

    def __post_init__(self) -> None:
        require(self.storage in STORAGE_FORMATS, "storage", f"unknown format {self.storage!r}",
                ", ".join(STORAGE_FORMATS))
        require(self.compression in COMPRESSIONS, "compression", f"unknown compression {self.compression!r}",
                ", ".join(COMPRESSIONS))
        require_positive(self.discovery_period_s, "discovery_period_s")
        if self.output_path:
            require(not Path(self.output_path).expanduser().exists(), "output_path",
                    f"{self.output_path} exists already (rosbag2 never overwrites)", "a new directory path")

    def resolved_output_path(self) -> Path:
        if self.output_path:
            return Path(self.output_path).expanduser()
        return run_directory("bag")


@dataclasses.dataclass(kw_only=True)
class PlayerConfig:
    """Settings of the bag player (``ros2 bag play`` for machines without rosbag2); field names are
    the ``bag_player`` node's parameters.

    The recorded outputs of the nodes a replay runs again (by default the policy's action chunks
    and expert activations) are published under ``recorded_prefix``, so that the live node and the
    recording never share a topic."""

    bag_path: str = ""
    rate: float = 1.0  # playback speed: 2.0 plays twice as fast
    topics: tuple[str, ...] = ()  # empty: every recorded topic but exclude_topics
    exclude_topics: tuple[str, ...] = (names.ROSOUT, names.PARAMETER_EVENTS, names.CLOCK)
    recorded_prefix: str = names.REPLAY_RECORDED_PREFIX
    republish_recorded: tuple[str, ...] = (names.node_topic(names.POLICY_NODE, names.ACTION_CHUNK),
                                           names.node_topic(names.POLICY_NODE, names.EXPERT_ACTIVATION))
    latched_topics: tuple[str, ...] = (names.INSTRUCTION, names.ROBOT_DESCRIPTION, names.TF_STATIC)
    publish_clock: bool = True  # rosgraph_msgs/Clock on /clock at bag time, for use_sim_time nodes
    clock_period_s: float = 0.01
    wait_for_subscribers: tuple[str, ...] = ()  # output topics that need a subscriber before playing
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("topics", "exclude_topics", "republish_recorded", "latched_topics", "wait_for_subscribers"):
            setattr(self, name, tuple(getattr(self, name)))
        require(bool(self.bag_path), "bag_path", "no bag given", "a rosbag2 directory (bag:=...)")
        require(Path(self.bag_path).expanduser().is_dir(), "bag_path", f"{self.bag_path} is not a directory",
                "a rosbag2 directory (with metadata.yaml)")
        require_positive(self.rate, "rate")
        require_positive(self.clock_period_s, "clock_period_s")
        require_positive(self.startup_timeout_s, "startup_timeout_s")
        require(self.recorded_prefix.startswith("/"), "recorded_prefix", f"{self.recorded_prefix!r} is relative",
                "an absolute namespace such as /replay/recorded")

    def plays(self, topic: str) -> bool:
        return topic not in self.exclude_topics and (not self.topics or topic in self.topics)

    def output_topic(self, topic: str) -> str:
        """Where a recorded topic is published again."""
        return self.recorded_prefix.rstrip("/") + topic if topic in self.republish_recorded else topic


class TypeRegistry:
    """A ``rosbags`` type store that learns unknown message types from installed .msg files."""

    def __init__(self, prefixes: Sequence[Path] | None = None) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._prefixes = list(prefixes) if prefixes is not None else ament_prefixes()

    def ensure(self, msgtype: str) -> None:
        """Make ``msgtype`` ("pkg/msg/Name") known, with the message types it depends on."""
        from rosbags.typesys import get_types_from_msg

        pending = [msgtype]
        while pending:
            name = pending.pop()
            if name in self.typestore.types:
                continue
            text = self._find_definition(name)
            types = get_types_from_msg(text, name)
            self.typestore.register(types)
            for _, fields in types.values():
                pending.extend(_referenced_types(fields))

    def _find_definition(self, msgtype: str) -> str:
        package, kind, name = _split_type(msgtype)
        for prefix in self._prefixes:
            path = prefix / "share" / package / kind / f"{name}.{kind}"
            if path.is_file():
                return path.read_text()
        raise BagError(f"no definition of {msgtype}: {package}/{kind}/{name}.{kind} is not installed "
                       f"under {', '.join(map(str, self._prefixes))}")


def _split_type(msgtype: str) -> tuple[str, str, str]:
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise BagError(f"{msgtype!r} is not a ROS 2 type name like 'sensor_msgs/msg/Image'")
    return parts[0], parts[1], parts[2]


def _referenced_types(fields: Any) -> Iterator[str]:
    """Names of message types referenced by a rosbags field list (nested, arrays, sequences)."""
    from rosbags.typesys.base import Nodetype

    for _, (node_type, detail) in fields:
        if node_type == Nodetype.NAME:
            yield detail
        elif node_type in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            inner_type, inner_detail = detail[0]
            if inner_type == Nodetype.NAME:
                yield inner_detail


class BagWriter:
    """Writes already-serialized (CDR) messages, as received by a raw ROS 2 subscription."""

    def __init__(self, path: str | Path, storage: str = DEFAULT_STORAGE, registry: TypeRegistry | None = None,
                 compression: str = DEFAULT_COMPRESSION) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if storage not in STORAGE_FORMATS:
            raise BagError(f"storage {storage!r} is not supported (allowed: {', '.join(STORAGE_FORMATS)})")
        if compression not in COMPRESSIONS:
            raise BagError(f"compression {compression!r} is not supported (allowed: {', '.join(COMPRESSIONS)})")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already: rosbag2 never overwrites; choose a new path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.registry = registry or TypeRegistry()
        self.storage, self.compression = storage, compression
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if compression == "zstd":
            mode = CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._connections:
            return
        self.registry.ensure(msgtype)
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.registry.typestore)
        self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, cdr: bytes) -> None:
        self._writer.write(self._connections[topic], stamp_ns, cdr)
        self.counts[topic] += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int

    def rate_hz(self, duration_s: float) -> float:
        return (self.count - 1) / duration_s if duration_s > 0 and self.count > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class BagSummary:
    path: Path
    storage: str
    duration_s: float
    topics: tuple[TopicSummary, ...]
    compression: str = "none"  # zstd: MCAP chunks or sqlite3 messages compressed
    size_bytes: int = 0  # the bag's files on disk

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics)

    def topic(self, name: str) -> TopicSummary:
        for t in self.topics:
            if t.name == name:
                return t
        raise KeyError(f"{name} is not in {self.path} (topics: {', '.join(t.name for t in self.topics)})")


def summarize_bag(path: str | Path) -> BagSummary:
    """Topics, types, message counts and duration of a rosbag2 directory."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    try:
        with Reader(path) as reader:
            topics = tuple(sorted(
                (TopicSummary(name=c.topic, msgtype=c.msgtype, count=c.msgcount) for c in reader.connections),
                key=lambda t: t.name))
            storage = "mcap" if any(f.suffix == ".mcap" for f in path.iterdir()) else "sqlite3"
            return BagSummary(path=path, storage=storage,
                              duration_s=reader.duration / 1e9 if reader.message_count else 0.0, topics=topics,
                              compression=_compression(path, storage, reader.compression_format),
                              size_bytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file()))
    except Exception as err:  # rosbags raises several types for missing/corrupt bags
        raise BagError(f"cannot read the rosbag2 directory {path}: {err}") from err


def _compression(path: Path, storage: str, message_format: str | None) -> str:
    """A bag's compression: sqlite3 names it in metadata.yaml; MCAP in each chunk record, read with
    the ``mcap`` library (rosbag2's chunk compression leaves the metadata's fields empty)."""
    if message_format:
        return message_format
    if storage != "mcap":
        return "none"
    from mcap.reader import make_reader

    for file in sorted(path.glob("*.mcap")):
        with open(file, "rb") as stream:
            summary = make_reader(stream).get_summary()
        chunks = [] if summary is None else summary.chunk_indexes
        if any(chunk.compression for chunk in chunks):
            return next(chunk.compression for chunk in chunks if chunk.compression)
    return "none"


def convert_bag(source: str | Path, destination: str | Path, storage: str = DEFAULT_STORAGE,
                compression: str = DEFAULT_COMPRESSION, registry: TypeRegistry | None = None,
                on_message=None) -> BagSummary:
    """Write every message of ``source`` (serialized as recorded, same receive stamps) to a new bag
    in another storage or compression, like ``ros2 bag convert``; the new bag's summary."""
    from rosbags.rosbag2 import Reader

    registry = registry or TypeRegistry()
    with Reader(Path(source)) as reader, BagWriter(destination, storage, registry, compression) as writer:
        for connection in reader.connections:
            writer.add_topic(connection.topic, connection.msgtype)
        for connection, stamp_ns, raw in reader.messages():
            writer.write(connection.topic, stamp_ns, bytes(raw))
            if on_message is not None:
                on_message()
    return summarize_bag(destination)


def read_raw_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(topic, stamp_ns, serialized CDR)`` in time order, without deserializing."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection, stamp_ns, raw in reader.messages(connections=connections):
            yield connection.topic, stamp_ns, bytes(raw)


def read_messages(path: str | Path, topics: Sequence[str] | None = None,
                  registry: TypeRegistry | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(topic, stamp_ns, message)`` in time order, deserialized with rosbags."""
    from rosbags.rosbag2 import Reader

    registry = registry or TypeRegistry()
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection in connections:
            registry.ensure(connection.msgtype)
        for connection, stamp_ns, raw in reader.messages(connections=connections):
            yield connection.topic, stamp_ns, registry.typestore.deserialize_cdr(raw, connection.msgtype)
