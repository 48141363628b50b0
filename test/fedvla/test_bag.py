"""rosbag2 I/O with rosbags, including the stack's own message types from their .msg files."""
import numpy as np
import pytest

from fedvla.bag import BagError, BagWriter, RecorderConfig, TypeRegistry, read_messages, summarize_bag
from fedvla.config import ConfigError


def _image(registry: TypeRegistry, value: int):
    ts = registry.typestore
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    data = np.full(12, value, dtype=np.uint8)
    return Image(header=Header(stamp=Time(sec=value, nanosec=0), frame_id="cam"), height=2, width=2,
                 encoding="rgb8", is_bigendian=0, step=6, data=data)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_write_then_read_back(tmp_path, storage) -> None:
    registry = TypeRegistry()
    path = tmp_path / "bag"
    with BagWriter(path, storage, registry) as writer:
        writer.add_topic("/camera/camera/color/image_raw", "sensor_msgs/msg/Image")
        for i in range(5):
            cdr = registry.typestore.serialize_cdr(_image(registry, i), "sensor_msgs/msg/Image")
            writer.write("/camera/camera/color/image_raw", 1_000_000_000 + i * 100_000_000, bytes(cdr))
    summary = summarize_bag(path)
    assert summary.storage == storage
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
