"""rosbag2 I/O with rosbags, including the stack's own message types from their .msg files."""
import numpy as np
import pytest

from fedvla.bag import (DEFAULT_COMPRESSION, DEFAULT_STORAGE, BagError, BagWriter, RecorderConfig, TypeRegistry,
                        convert_bag, read_messages, read_raw_messages, summarize_bag)
from fedvla.config import ConfigError


def _image(registry: TypeRegistry, value: int):
    ts = registry.typestore
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    data = np.full(12, value, dtype=np.uint8)
    return Image(header=Header(stamp=Time(sec=value, nanosec=0), frame_id="cam"), height=2, width=2,
                 encoding="rgb8", is_bigendian=0, step=6, data=data)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_write_then_read_back(tmp_path, storage, compression) -> None:
    registry = TypeRegistry()
    path = tmp_path / "bag"
    with BagWriter(path, storage, registry, compression) as writer:
        writer.add_topic("/camera/camera/color/image_raw", "sensor_msgs/msg/Image")
        for i in range(5):
            cdr = registry.typestore.serialize_cdr(_image(registry, i), "sensor_msgs/msg/Image")
            writer.write("/camera/camera/color/image_raw", 1_000_000_000 + i * 100_000_000, bytes(cdr))
    summary = summarize_bag(path)
    assert summary.storage == storage and summary.compression == compression
    assert summary.size_bytes > 0 and summary.message_count == 5
    assert summary.topic("/camera/camera/color/image_raw").count == 5
    assert summary.duration_s == pytest.approx(0.4, abs=1e-6)
    messages = list(read_messages(path))
    assert [m.header.stamp.sec for _, _, m in messages] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(messages[3][2].data, np.full(12, 3, dtype=np.uint8))


def test_own_interfaces_are_registered_from_installed_msg_files(tmp_path) -> None:
    registry = TypeRegistry()
    try:
        registry.ensure("fedvla_interfaces/msg/ParsedScene")
    except BagError as err:
        pytest.skip(f"fedvla_interfaces is not installed: {err}")
    ts = registry.typestore
    assert "fedvla_interfaces/msg/SceneObject" in ts.types  # nested type found too
    SceneObject, ParsedScene = ts.types["fedvla_interfaces/msg/SceneObject"], ts.types["fedvla_interfaces/msg/ParsedScene"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    obj = SceneObject(class_name="cup", group=0, score=0.9, track_id=4, x_min=1.0, y_min=2.0, x_max=3.0, y_max=4.0,
                      selected_token_indices=np.array([1, 5], dtype=np.uint16))
    msg = ParsedScene(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="f"), instruction="put the cup",
                      camera_name="top", target_names=["cup"], objects=[obj], token_selection_rule="box_mask",
                      patch_rows=8, patch_cols=8, tokens_per_group=2,
                      group_token_indices=np.array([1, 5, -1, -1, 60, 61], dtype=np.int32))
    path = tmp_path / "scene"
    with BagWriter(path, "sqlite3", registry) as writer:
        writer.add_topic("/scene", "fedvla_interfaces/msg/ParsedScene")
        writer.write("/scene", 5, bytes(ts.serialize_cdr(msg, "fedvla_interfaces/msg/ParsedScene")))
    (_, _, back), = read_messages(path, registry=TypeRegistry())
    assert back.objects[0].class_name == "cup" and list(back.objects[0].selected_token_indices) == [1, 5]
    assert back.camera_name == "top" and list(back.group_token_indices) == [1, 5, -1, -1, 60, 61]


def test_unknown_types_and_existing_paths_are_refused(tmp_path) -> None:
    with pytest.raises(BagError, match="no definition of nobody_msgs/msg/Thing"):
        TypeRegistry().ensure("nobody_msgs/msg/Thing")
    (tmp_path / "taken").mkdir()
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "taken")
    with pytest.raises(ConfigError, match="output_path: .* exists already"):
        RecorderConfig(output_path=str(tmp_path / "taken"))
    with pytest.raises(BagError, match="cannot read the rosbag2 directory"):
        summarize_bag(tmp_path / "nothing")


def test_mcap_with_zstd_chunks_is_the_default_and_compresses(tmp_path) -> None:
    assert (DEFAULT_STORAGE, DEFAULT_COMPRESSION) == ("mcap", "zstd")  # rosbag2's default storage since Iron
    assert (RecorderConfig().storage, RecorderConfig().compression) == ("mcap", "zstd")
    registry = TypeRegistry()
    with BagWriter(tmp_path / "default", registry=registry) as writer:
        writer.add_topic("/image", "sensor_msgs/msg/Image")
        for i in range(50):  # a rendered scene is mostly flat colour: zstd takes most of it away
            image = _image(registry, i % 3)
            image.data = np.repeat(np.arange(8, dtype=np.uint8), 4096)
            image.height, image.width, image.step = 128, 256, 768
            writer.write("/image", i * 33_000_000, bytes(registry.typestore.serialize_cdr(image, "sensor_msgs/msg/Image")))
    summary = summarize_bag(tmp_path / "default")
    assert (summary.storage, summary.compression) == ("mcap", "zstd")
    plain = convert_bag(tmp_path / "default", tmp_path / "plain", "mcap", "none", registry)
    assert plain.compression == "none" and plain.message_count == 50
    assert summary.size_bytes < plain.size_bytes / 10


@pytest.mark.parametrize("storage,compression", [("sqlite3", "none"), ("sqlite3", "zstd"), ("mcap", "none")])
def test_a_converted_bag_holds_the_same_messages_at_the_same_stamps(tmp_path, storage, compression) -> None:
    registry = TypeRegistry()
    with BagWriter(tmp_path / "source", registry=registry) as writer:
        writer.add_topic("/a", "sensor_msgs/msg/Image")
        writer.add_topic("/b", "std_msgs/msg/String")
        for i in range(6):
            writer.write("/a", 10 + i, bytes(registry.typestore.serialize_cdr(_image(registry, i), "sensor_msgs/msg/Image")))
            String = registry.typestore.types["std_msgs/msg/String"]
            writer.write("/b", 20 + i, bytes(registry.typestore.serialize_cdr(String(data=f"m{i}"), "std_msgs/msg/String")))
    converted = convert_bag(tmp_path / "source", tmp_path / "converted", storage, compression, registry)
    assert (converted.storage, converted.compression, converted.message_count) == (storage, compression, 12)
    assert list(read_raw_messages(tmp_path / "converted")) == list(read_raw_messages(tmp_path / "source"))


def test_unknown_storage_or_compression_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ConfigError, match="compression: unknown compression 'lz4' .allowed: zstd, none"):
        RecorderConfig(compression="lz4")
    with pytest.raises(BagError, match="compression 'lz4' is not supported"):
        BagWriter(tmp_path / "x", compression="lz4")
    with pytest.raises(BagError, match="storage 'db' is not supported"):
        BagWriter(tmp_path / "y", storage="db")


def test_our_default_bags_open_with_ros2_bag_info_where_rosbag2_is_installed(tmp_path) -> None:
    import shutil
    import subprocess

    ros2 = shutil.which("ros2")
    if ros2 is None or subprocess.run([ros2, "bag", "-h"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no rosbag2 here (ros2 bag): it comes with a full ROS 2 install, not from PyPI")
    registry = TypeRegistry()
    with BagWriter(tmp_path / "bag", registry=registry) as writer:
        writer.add_topic("/a", "sensor_msgs/msg/Image")
        for i in range(3):
            writer.write("/a", i, bytes(registry.typestore.serialize_cdr(_image(registry, i), "sensor_msgs/msg/Image")))
    info = subprocess.run([ros2, "bag", "info", str(tmp_path / "bag")], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "mcap" in info.stdout and "/a" in info.stdout and "Count: 3" in info.stdout
