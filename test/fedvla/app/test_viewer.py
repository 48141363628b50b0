"""The rerun viewer (fedvla.app.viewer): a bag with every kind of message the stack shows is logged
to a .rrd whose entities and timeline are checked (the same logger serves the live node)."""
from pathlib import Path

import numpy as np
import pytest

from fedvla import topics
from fedvla.bag import BagError, BagWriter, TypeRegistry

rr = pytest.importorskip("rerun")

CAMERA = "camera"
URDF = Path(__file__).resolve().parents[3] / "urdf" / "ur3_gripper.urdf"


def _stack_bag(path) -> None:
    """Two steps of: an image, joint states, a scene parse with boxes and tokens, an action chunk,
    expert counts, the driver's planned path and tool pose, and the instruction."""
    from fedvla.data.bag_export import BagMessageFactory
    from fedvla.data.messages import expert_activation_fields, parsed_scene_fields
    from fedvla.iosp.parser import CameraParse
    from fedvla.iosp.types import Detection, ObjectGroup, SelectedTokens

    registry = TypeRegistry()
    try:
        make = BagMessageFactory(registry)
        registry.ensure("fedvla_interfaces/msg/ExpertActivation")
    except BagError as err:
        pytest.skip(f"fedvla_interfaces is not installed: {err}")
    for msgtype in ("geometry_msgs/msg/PoseStamped", "visualization_msgs/msg/Marker"):
        registry.ensure(msgtype)
    types, cdr = registry.typestore.types, make.cdr
    image_topic = topics.camera_topic(CAMERA, topics.COLOR_IMAGE)
    scene_topic = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)
    experts_topic = topics.node_topic(topics.POLICY_NODE, topics.EXPERT_ACTIVATION)
    chunk_topic = topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)
    path_topic = topics.node_topic(topics.UR3_DRIVER_NODE, topics.PLANNED_PATH)
    tool_topic = topics.node_topic(topics.UR3_DRIVER_NODE, topics.TOOL_POSE)
    with BagWriter(path, registry=registry) as writer:
        for topic, msgtype in ((image_topic, "sensor_msgs/msg/Image"), (topics.JOINT_STATES, "sensor_msgs/msg/JointState"),
                               (scene_topic, "fedvla_interfaces/msg/ParsedScene"),
                               (chunk_topic, "fedvla_interfaces/msg/ActionChunk"),
                               (experts_topic, "fedvla_interfaces/msg/ExpertActivation"),
                               (path_topic, "visualization_msgs/msg/Marker"), (tool_topic, "geometry_msgs/msg/PoseStamped"),
                               (topics.INSTRUCTION, "std_msgs/msg/String"), ("/not_shown", "std_msgs/msg/String"),
                               (topics.ROBOT_DESCRIPTION, "std_msgs/msg/String")):
            writer.add_topic(topic, msgtype)
        writer.write(topics.INSTRUCTION, 1, cdr(types["std_msgs/msg/String"](data="open the drawer")))
        writer.write("/not_shown", 1, cdr(types["std_msgs/msg/String"](data="x")))
        writer.write(topics.ROBOT_DESCRIPTION, 1, cdr(types["std_msgs/msg/String"](data=URDF.read_text())))
        for step in range(2):
            stamp = 1_000_000_000 * (step + 1)
            writer.write(image_topic, stamp, make.image(np.full((64, 96, 3), 40 * step, np.uint8), stamp, "camera"))
            writer.write(topics.JOINT_STATES, stamp + 1, make.joint_state(["shoulder_pan_joint", "elbow_joint"],
                                                                      np.array([0.1 * step, -1.0]), stamp))
            selection = SelectedTokens.empty(2)
            selection.indices[ObjectGroup.TARGET] = [0, 9]
            selection.valid[ObjectGroup.TARGET] = True
            detection = Detection(name="drawer", score=0.9, box=(4.0, 5.0, 40.0, 30.0), track_id=1)
            parse = CameraParse(camera=CAMERA, instruction="open the drawer", detections=[detection],
                                groups=[ObjectGroup.TARGET], targets=[], selection=selection, grid=(8, 8), timings_ms={},
                                object_tokens=[np.array([0, 9])])
            writer.write(scene_topic, stamp, cdr(types["fedvla_interfaces/msg/ParsedScene"](
                header=make.header(stamp), **parsed_scene_fields(parse, "box_mask", types["fedvla_interfaces/msg/SceneObject"]))))
            writer.write(chunk_topic, stamp, make.action_chunk(np.full((4, 3), 0.5), stamp, 0.1))
            writer.write(experts_topic, stamp, cdr(types["fedvla_interfaces/msg/ExpertActivation"](
                header=make.header(stamp), **expert_activation_fields(np.arange(8).reshape(2, 4), 1.5))))
            Point = types["geometry_msgs/msg/Point"]
            marker = types["visualization_msgs/msg/Marker"](
                header=make.header(stamp), ns="path", id=0, type=4, action=0,
                pose=types["geometry_msgs/msg/Pose"](position=Point(x=0.0, y=0.0, z=0.0),
                                                     orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
                scale=types["geometry_msgs/msg/Vector3"](x=0.01, y=0.0, z=0.0),
                color=types["std_msgs/msg/ColorRGBA"](r=1.0, g=0.0, b=0.0, a=1.0),
                lifetime=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0), frame_locked=False,
                points=[Point(x=0.3, y=0.0, z=0.2 + 0.01 * i) for i in range(5)], colors=[], texture_resource="",
                texture=types["sensor_msgs/msg/CompressedImage"](header=make.header(0), format="", data=np.zeros(0, np.uint8)),
                uv_coordinates=[], text="", mesh_resource="",
                mesh_file=types["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                mesh_use_embedded_materials=False)
            writer.write(path_topic, stamp, cdr(marker))
            pose = types["geometry_msgs/msg/PoseStamped"](header=make.header(stamp), pose=types["geometry_msgs/msg/Pose"](
                position=Point(x=0.3, y=0.1 * step, z=0.2), orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
            writer.write(tool_topic, stamp, cdr(pose))


def _entities(rrd) -> dict[str, set[str]]:
    from rerun.chunk import RrdReader

    found: dict[str, set[str]] = {}
    for chunk in RrdReader(rrd).stream():
        found.setdefault(str(chunk.entity_path), set()).update(chunk.timeline_names)
    return found


def test_a_bag_is_logged_with_every_entity_on_the_stamp_timeline(tmp_path) -> None:
    from fedvla.app.viewer import TIMELINE, ViewerConfig, close_recording, log_bag, open_recording

    _stack_bag(tmp_path / "bag")
    stream, where = open_recording(ViewerConfig(mode="save", save_path=str(tmp_path / "view.rrd")))
    counts = log_bag(tmp_path / "bag", stream)
    close_recording(stream)
    assert "view.rrd" in where and "/not_shown" not in counts and counts[topics.JOINT_STATES] == 2
    entities = _entities(tmp_path / "view.rrd")
    expected = {f"/camera/{CAMERA}/image", f"/camera/{CAMERA}/image/objects", f"/camera/{CAMERA}/image/tokens/target",
                "/policy/experts/layer_0", "/policy/experts/layer_1", "/policy/experts_per_token",
                "/policy/action/action_0", "/robot/planned_path", "/robot/tool", "/robot/tool_trace",
                "/robot/joints/shoulder_pan_joint", "/robot/joints/elbow_joint", "/instruction",
                "/robot/joint_transforms/shoulder_pan_joint", "/robot/joint_transforms/elbow_joint"}
    assert expected <= set(entities), sorted(expected - set(entities))
    assert all(TIMELINE in entities[e] for e in expected)
    # the arm's model from /robot_description, as RViz shows it
    assert "/robot/ur3_gripper/visual_geometries/forearm_link/visual_0" in entities


def test_bad_viewer_settings_are_refused_by_name() -> None:
    from fedvla.app.viewer import ViewerConfig
    from fedvla.config import ConfigError

    with pytest.raises(ConfigError, match="mode: unknown viewer mode 'rviz'"):
        ViewerConfig(mode="rviz")
    with pytest.raises(ConfigError, match="save_path: save mode needs a file"):
        ViewerConfig(mode="save")
    with pytest.raises(ConfigError, match="web_port: 0 is not a port"):
        ViewerConfig(web_port=0)


def test_bag_view_saves_a_recording_with_the_bags_entities(tmp_path) -> None:
    from fedvla.cli import main

    _stack_bag(tmp_path / "bag")
    assert main(["bag", "view", str(tmp_path / "bag"), "--save", str(tmp_path / "bag.rrd")]) == 0
    entities = _entities(tmp_path / "bag.rrd")
    assert {f"/camera/{CAMERA}/image", "/robot/tool", "/policy/experts/layer_0"} <= set(entities)
