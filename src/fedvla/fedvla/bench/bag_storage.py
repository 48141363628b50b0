"""``fedvla bench bag``: what each rosbag2 storage and compression costs for the same recording.

The recording (by default 30 s of the ``sim`` profile, recorded the way users record: the graph's
recorder with its defaults, MCAP with zstd chunks) is rewritten message for message
(:func:`fedvla.bag.convert_bag`) in every storage × compression; per bag: size on disk, the saving
against the same storage uncompressed, the time to write it, and the time to read every message
back. Figures are printed, never asserted.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from fedvla.bag import COMPRESSIONS, STORAGE_FORMATS, convert_bag, read_raw_messages, summarize_bag


@dataclasses.dataclass(frozen=True)
class StorageFigures:
    storage: str
    compression: str
    size_bytes: int
    messages: int
    write_s: float
    read_s: float

    @property
    def label(self) -> str:
        return f"{self.storage} + {self.compression}"


def storage_figures(recording: str | Path, output: str | Path) -> list[StorageFigures]:
    """``recording`` written again in every storage and compression under ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    figures = []
    for storage in STORAGE_FORMATS:
        for compression in COMPRESSIONS:
            path = output / f"{storage}_{compression}"
            started = time.perf_counter()
            summary = convert_bag(recording, path, storage, compression)
            written = time.perf_counter() - started
            started = time.perf_counter()
            count = sum(1 for _ in read_raw_messages(path))
            figures.append(StorageFigures(storage, compression, summary.size_bytes, count, written,
                                          time.perf_counter() - started))
    return figures


def saving(figures: list[StorageFigures], row: StorageFigures) -> float:
    """The share of the same storage's uncompressed size that ``row`` saves (0 for uncompressed)."""
    plain = next(f for f in figures if f.storage == row.storage and f.compression == "none")
    return 1.0 - row.size_bytes / plain.size_bytes


def recording_summary(recording: str | Path) -> dict:
    summary = summarize_bag(recording)
    return {"path": str(summary.path), "storage": summary.storage, "compression": summary.compression,
            "duration_s": summary.duration_s, "messages": summary.message_count, "size_bytes": summary.size_bytes,
            "topics": {t.name: t.count for t in summary.topics}}
