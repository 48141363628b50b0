"""Core dataclasses ↔ ROS messages."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from builtin_interfaces.msg import Time  # noqa: E402

from fedvla.camera import Intrinsics  # noqa: E402
from fedvla_ros.conversions import camera_info_msg, camera_matrix, image_msg, image_to_array  # noqa: E402


def test_images_round_trip_and_bgr_comes_back_as_rgb() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    depth = rng.integers(0, 5000, (5, 7), dtype=np.uint16)
    np.testing.assert_array_equal(image_to_array(image_msg(rgb, "rgb8", Time(), "f")), rgb)
    np.testing.assert_array_equal(image_to_array(image_msg(rgb[..., ::-1], "bgr8", Time(), "f")), rgb)
    msg = image_msg(depth, "16UC1", Time(), "f")
    assert (msg.step, msg.encoding) == (14, "16UC1")
    np.testing.assert_array_equal(image_to_array(msg), depth)
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        msg.encoding = "yuv422"
        image_to_array(msg)


def test_camera_info_carries_k_and_p() -> None:
    intr = Intrinsics(width=640, height=480, fx=600.0, fy=601.0, cx=320.5, cy=240.5)
    info = camera_info_msg(intr, Time(sec=3), "camera_color_optical_frame")
    assert list(info.k) == [600.0, 0.0, 320.5, 0.0, 601.0, 240.5, 0.0, 0.0, 1.0]
    assert list(info.p) == [600.0, 0.0, 320.5, 0.0, 0.0, 601.0, 240.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert (info.width, info.height, info.header.frame_id) == (640, 480, "camera_color_optical_frame")
    np.testing.assert_array_equal(camera_matrix(info), intr.K)  # and back
    info.k = [0.0] * 9  # an uncalibrated camera
    with pytest.raises(ValueError, match="camera info has no intrinsic matrix"):
        camera_matrix(info)


def test_label_images_and_tables_round_trip() -> None:
    from fedvla.iosp.types import ObjectLabel
    from fedvla_ros.conversions import label_image_msg, labels_from_msg, object_labels_msg, objects_from_msg

    labels = np.array([[-1, 0, 1], [2, 2, -1]], dtype=np.int32)
    msg = label_image_msg(labels, Time(sec=1), "cam")
    assert msg.encoding == "16UC1" and np.frombuffer(bytes(msg.data), np.uint16).tolist() == [0, 1, 2, 3, 3, 0]
    np.testing.assert_array_equal(labels_from_msg(msg), labels)
    with pytest.raises(ValueError, match="labels span"):
        label_image_msg(np.array([[70000]]), Time(), "cam")
    objects = [ObjectLabel("table", False), ObjectLabel("drawer", True)]
    assert objects_from_msg(object_labels_msg(objects, Time(), "cam")) == objects
    table = object_labels_msg(objects, Time(), "cam")
    table.foreground = [True]
    with pytest.raises(ValueError, match="2 names but 1 foreground flags"):
        objects_from_msg(table)


def test_a_parse_becomes_a_parsed_scene_and_markers_coloured_by_group() -> None:
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from fedvla.data.messages import parse_parsed_scene, parsed_scene_fields
    from fedvla.iosp.parser import SceneParser, SceneParserConfig
    from fedvla.iosp.types import Detection
    from fedvla_interfaces.msg import ParsedScene, SceneObject
    from fedvla_ros.conversions import scene_markers

    scene = [Detection("drawer", (0, 0, 16, 16)), Detection("table", (0, 48, 64, 64), foreground=False)]
    parser = SceneParser(SceneParserConfig(tokens_per_group=2, patch_rows=4, patch_cols=4), {"top": lambda _: scene})
    parse = parser.parse("top", np.zeros((64, 64, 3), np.uint8), "open the drawer")
    header = Header(stamp=Time(sec=5), frame_id="top_color_optical_frame")
    msg = ParsedScene(header=header, **parsed_scene_fields(parse, "box_mask", SceneObject))
    assert (msg.camera_name, msg.instruction, list(msg.target_names)) == ("top", "open the drawer", ["drawer"])
    assert (msg.patch_rows, msg.patch_cols, msg.tokens_per_group, msg.token_selection_rule) == (4, 4, 2, "box_mask")
    assert list(msg.group_token_indices) == [0, -1, -1, -1, 12, 13]
    drawer, table = msg.objects
    assert (drawer.class_name, drawer.group, drawer.track_id, drawer.x_max) == ("drawer", 0, 0, 16.0)  # the tracker's id
    assert list(drawer.selected_token_indices) == [0] and list(table.selected_token_indices) == [12, 13]
    assert table.group == table.GROUP_BACKGROUND
    back = parse_parsed_scene(msg)  # the rclpy message parses back to the parse's content
    assert np.array_equal(back.selection.flat_indices(), parse.selection.flat_indices())
    assert [o.name for o in back.objects] == ["drawer", "table"] and back.grid == (4, 4)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    markers = scene_markers(parse, header, K, 1.0, previous_count=4)
    adds = [m for m in markers if m.action == Marker.ADD]
    assert {(m.ns, m.id) for m in adds} == {("top/boxes", 0), ("top/labels", 0), ("top/boxes", 1), ("top/labels", 1)}
    outline = adds[0]
    assert outline.type == Marker.LINE_STRIP and len(outline.points) == 5 and outline.points[0] == outline.points[-1]
    assert (outline.color.r, outline.color.g) == pytest.approx((230 / 255, 40 / 255))
    assert outline.header.frame_id == "top_color_optical_frame"
    deletes = {(m.ns, m.id) for m in markers if m.action == Marker.DELETE}
    assert deletes == {("top/boxes", 2), ("top/labels", 2), ("top/boxes", 3), ("top/labels", 3)}
