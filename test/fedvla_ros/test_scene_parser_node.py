"""The scene parser node end to end: a simulated camera with segmentation in, parsed scenes,
RViz markers and annotated images out; the YOLOv8 path on live images; bad settings."""
import time

import numpy as np
import pytest

from support.ros import start_node, stop_process, wait_for_messages

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PointStamped  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from fedvla import topics  # noqa: E402
from fedvla_interfaces.msg import ParsedScene, SceneObject  # noqa: E402
from fedvla_ros.conversions import camera_info_msg, image_msg  # noqa: E402

pytestmark = pytest.mark.ros
PARSED = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)
RELIABLE = QoSProfile(depth=10)


def first_scene(context, predicate, timeout_s=60.0):
    """The first ParsedScene on /scene_parser/parsed_scene for which ``predicate`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (scene,) = wait_for_messages(context, PARSED, ParsedScene, timeout_s=deadline - time.monotonic(), qos=RELIABLE)
        if predicate(scene):
            return scene
    raise AssertionError("no matching parsed scene")


def test_scene_parser_names_the_instructions_object_in_the_simulated_scene(rclpy_context) -> None:
    camera = start_node("fedvla_ros", "camera_node", name="corner", namespace="camera",
                        parameters={"backend": "sim", "width": 128, "height": 128, "fps": 10.0, "enable_depth": True,
                                    "enable_segmentation": True, "sim_task": "door-lock-v3", "sim_camera": "corner",
                                    "sim_seed": 4})
    parser = start_node("fedvla_ros", "scene_parser", name="scene_parser",
                        parameters={"cameras": ["corner"], "detector": "sim", "instruction": "turn the door lock",
                                    "patch_rows": 8, "patch_cols": 8, "rate_hz": 5.0})
    try:
        scene = first_scene(rclpy_context, lambda s: s.camera_name == "corner")
        markers = wait_for_messages(rclpy_context, topics.node_topic(topics.SCENE_PARSER_NODE, topics.SCENE_MARKERS),
                                    MarkerArray, qos=RELIABLE)[0]  # boxes, labels and the target of one frame
        annotated = wait_for_messages(rclpy_context, "/scene_parser/corner/annotated_image", Image)[0]
        target = wait_for_messages(rclpy_context, topics.node_topic(topics.SCENE_PARSER_NODE, topics.TARGET_POSITION),
                                   PointStamped, qos=RELIABLE)[0]
        info = wait_for_messages(rclpy_context, "/camera/corner/" + topics.COLOR_INFO, CameraInfo)[0]
        # A new instruction that names nothing in this scene: no target, the target slots empty.
        node = rclpy.create_node("instruction_pub", context=rclpy_context)
        publisher = node.create_publisher(String, topics.INSTRUCTION, 10)
        deadline = time.monotonic() + 30
        changed = None
        while changed is None and time.monotonic() < deadline:
            publisher.publish(String(data="open the microwave"))
            got = wait_for_messages(rclpy_context, PARSED, ParsedScene, qos=RELIABLE)[0]
            changed = got if got.instruction == "open the microwave" else None
        node.destroy_node()
    finally:
        _, parser_err = stop_process(parser)
        stop_process(camera)
    assert parser.returncode == 0, parser_err
    assert scene.header.frame_id == "corner_color_optical_frame" and scene.token_selection_rule == "box_mask"
    assert "door lock" in scene.target_names
    by_name = {o.class_name: o for o in scene.objects}
    lock = by_name["door lock"]
    assert lock.group == SceneObject.GROUP_TARGET and by_name["table"].group == SceneObject.GROUP_BACKGROUND
    target_tokens = [i for i in scene.group_token_indices[:8] if i >= 0]
    assert target_tokens and set(lock.selected_token_indices) <= set(target_tokens)
    assert 0 <= lock.x_min < lock.x_max <= 128 and 0 <= lock.y_min < lock.y_max <= 128
    boxes = [m for m in markers.markers if m.ns == "corner/boxes"]
    assert len(boxes) == len(scene.objects) and boxes[0].header.frame_id == "corner_color_optical_frame"
    assert (annotated.width, annotated.height, annotated.encoding) == (128, 128, "rgb8")
    # The door lock located with the aligned depth: ahead of the camera, on the lock's pixels.
    assert target.header.frame_id == "corner_color_optical_frame" and 0.3 < target.point.z < 3.0
    k = np.array(info.k).reshape(3, 3)
    u, v, _ = k @ [target.point.x, target.point.y, target.point.z] / target.point.z
    assert lock.x_min <= u <= lock.x_max and lock.y_min <= v <= lock.y_max
    (sphere,) = [m for m in markers.markers if m.ns == "corner/target_position"]
    assert sphere.type == sphere.SPHERE and sphere.header.frame_id == "corner_color_optical_frame"
    assert changed is not None and list(changed.target_names) == []
    assert list(changed.group_token_indices[:8]) == [-1] * 8
    assert {o.group for o in changed.objects} <= {SceneObject.GROUP_SURROUNDING, SceneObject.GROUP_BACKGROUND}


def test_the_yolo_path_parses_live_images_and_survives_a_malformed_one(rclpy_context) -> None:
    from rclpy.executors import SingleThreadedExecutor

    from fedvla.camera import Intrinsics

    parser = start_node("fedvla_ros", "scene_parser", name="scene_parser",
                        parameters={"cameras": ["cam"], "detector": "yolo", "detector_weights": "yolov8n.yaml",
                                    "detector_image_size": 160, "detector_confidence": 0.001, "tokens_per_group": 4,
                                    "patch_rows": 6, "patch_cols": 8, "instruction": "pick up the cup"})
    node = rclpy.create_node("yolo_inputs", context=rclpy_context)
    image_pub = node.create_publisher(Image, "/camera/cam/color/image_raw", 10)
    info_pub = node.create_publisher(CameraInfo, "/camera/cam/color/camera_info", 10)
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    intrinsics = Intrinsics(width=128, height=96, fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    scenes: list = []
    node.create_subscription(ParsedScene, PARSED, scenes.append, RELIABLE)
    malformed_stamps = set()

    def publish() -> None:
        stamp = node.get_clock().now().to_msg()
        msg = image_msg(frame, "rgb8", stamp, "cam_optical")
        if scenes:  # once a good frame is parsed: one the parser cannot read (a defined empty parse)
            msg.encoding = "32FC1"
            malformed_stamps.add((stamp.sec, stamp.nanosec))
        image_pub.publish(msg)
        info_pub.publish(camera_info_msg(intrinsics, stamp, "cam_optical"))

    node.create_timer(0.2, publish)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)

    def malformed() -> list:
        return [s for s in scenes if (s.header.stamp.sec, s.header.stamp.nanosec) in malformed_stamps]

    deadline = time.monotonic() + 90
    try:
        while not malformed() and time.monotonic() < deadline and parser.poll() is None:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        _, err = stop_process(parser)
    assert parser.returncode == 0, err
    assert scenes and malformed(), err
    good, bad = scenes[0], malformed()[0]
    assert (good.camera_name, good.patch_rows, good.patch_cols, good.tokens_per_group) == ("cam", 6, 8, 4)
    assert len(good.group_token_indices) == 12 and all(-1 <= i < 48 for i in good.group_token_indices)
    for obj in good.objects:  # random weights: whatever it finds lies in the image
        assert 0 <= obj.x_min <= obj.x_max <= 128 and 0 <= obj.y_min <= obj.y_max <= 96
    assert list(bad.objects) == [] and list(bad.group_token_indices) == [-1] * 12
    assert "unsupported image encoding '32FC1'" in err


@pytest.mark.parametrize(("parameters", "message"), [
    ({"cameras": ["cam"], "detector": "yolo"},
     "scene_parser: error: detector_weights: is empty but detector is yolo (allowed: a YOLOv8 .pt file, "
     "or yolov8n.yaml for random weights)"),
    ({"cameras": ["cam"], "detector": "yolo", "detector_weights": "/no/best.pt"},
     "scene_parser: error: detector_weights: /no/best.pt does not exist (allowed: a local YOLOv8 .pt file)"),
    ({"cameras": ["cam"], "tokens_per_group": 0}, "scene_parser: error: tokens_per_group: must be at least 1, got 0"),
])
def test_bad_settings_exit_2_with_one_line(parameters, message) -> None:
    process = start_node("fedvla_ros", "scene_parser", name="scene_parser_bad", parameters=parameters)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert err.strip().splitlines()[-1] == message
