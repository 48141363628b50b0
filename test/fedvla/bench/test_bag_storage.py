"""fedvla bench bag: one recording rewritten in every storage and compression, sizes compared."""
import json

import numpy as np

from fedvla.bag import BagWriter, TypeRegistry
from fedvla.bench.bag_storage import saving, storage_figures


def _recording(path) -> None:
    registry = TypeRegistry()
    ts = registry.typestore
    Image = ts.types["sensor_msgs/msg/Image"]
    with BagWriter(path, registry=registry) as writer:
        writer.add_topic("/camera/camera/color/image_raw", "sensor_msgs/msg/Image")
        for i in range(20):
            data = np.zeros((48, 64, 3), np.uint8)
            data[10:20, i:i + 8] = 200  # a moving block on a flat background, as the twin renders
            image = Image(header=ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](
                sec=0, nanosec=i), frame_id="camera"), height=48, width=64, encoding="rgb8", is_bigendian=0,
                step=192, data=data.reshape(-1))
            writer.write("/camera/camera/color/image_raw", i * 33_000_000, bytes(ts.serialize_cdr(image, Image.__msgtype__)))


def test_every_storage_and_compression_holds_the_same_messages_and_zstd_saves(tmp_path) -> None:
    _recording(tmp_path / "recording")
    figures = storage_figures(tmp_path / "recording", tmp_path / "out")
    assert {(f.storage, f.compression) for f in figures} == {("mcap", "zstd"), ("mcap", "none"), ("sqlite3", "zstd"),
                                                            ("sqlite3", "none")}
    assert all(f.messages == 20 and f.size_bytes > 0 for f in figures)
    for f in figures:
        assert (saving(figures, f) > 0.5) == (f.compression == "zstd")


def test_the_bench_command_measures_a_given_recording(tmp_path) -> None:
    from fedvla.cli import main

    _recording(tmp_path / "recording")
    assert main(["bench", "bag", "--bag", str(tmp_path / "recording"), "--output", str(tmp_path / "bench")]) == 0
    record = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert record["recording"]["messages"] == 20 and len(record["bags"]) == 4
    assert record["recording"]["compression"] == "zstd" and record["commit"]
    table = (tmp_path / "bench" / "bag.md").read_text()
    assert "| mcap + zstd |" in table and "| sqlite3 + none |" in table
