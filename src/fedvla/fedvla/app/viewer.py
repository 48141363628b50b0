"""The robot in rerun, without RViz (pip-only machines have no RViz): what the stack's topics carry,
logged as rerun entities on the messages' own stamps.

One :class:`RerunLogger` serves the live ``rerun_viewer`` node (``viewer:=rerun`` on any profile)
and ``fedvla bag view BAG``, so a recording looks exactly as the live robot did. Messages are any
objects with the ROS fields (rclpy's, or rosbags' from a bag).

=======================================  =====================================================
entity                                   from
=======================================  =====================================================
``camera/<name>/image``                  ``/camera/<name>/color/image_raw`` (and the depth, when
                                         recorded, as ``camera/<name>/depth``)
``camera/<name>/image/objects``          the scene parse: boxes coloured by group, labelled
                                         "name (group score)"
``camera/<name>/image/tokens/<group>``   the IOSP tokens selected per group, as patch cells
``policy/experts/layer_<l>``             tokens routed to each expert in one policy step
``policy/experts_per_token``             the step's experts per token
``policy/action/<dimension>``            the first action of each chunk
``robot/<robot name>/...``               the arm and gripper from ``/robot_description`` (the URDF,
                                         as RViz shows it), moved by ``/joint_states``
                                         (``robot/joint_transforms/<joint>``)
``robot/planned_path``                   the driver's planned tool path for the current chunk
``robot/tool``                           the driver's tool pose (a point with its approach
                                         direction, and its trace ``robot/tool_trace``)
``robot/joints/<joint>``                 ``/joint_states`` positions
``instruction``                          the task instruction (text)
=======================================  =====================================================

Time: the ``stamp`` timeline is each message's header stamp (the instant it describes: a camera
frame's exposure, a chunk's observation); messages without a header (the instruction) use the
receive time the caller gives.
"""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

import numpy as np

from fedvla import topics
from fedvla.data.messages import default_dimension_names, parse_action_chunk, parse_expert_activation, parse_parsed_scene
from fedvla.data.observations import image_from_message
from fedvla.iosp.types import ObjectGroup
from fedvla.iosp.visualize import GROUP_COLORS  # the annotated images' colours

TIMELINE = "stamp"
TOOL_TRACE_LENGTH = 500  # tool positions kept in the trace
BASE_FRAME = "base_link"  # the driver's frame (planned path, tool pose) when a message names none
TOOL_AXIS_M = 0.05  # length of the tool's approach arrow
TOOL_COLOR, PATH_COLOR = (20, 160, 90), (230, 40, 40)


def _rotate(vector_part: np.ndarray, scalar_part: float, v: np.ndarray) -> np.ndarray:
    """``v`` rotated by the unit quaternion (x, y, z, w)."""
    t = 2.0 * np.cross(vector_part, v)
    return (v + scalar_part * t + np.cross(vector_part, t)).astype(np.float32)


class ViewerMode(str, enum.Enum):
    """Where the logged data goes: rerun's web viewer served from this process (its wheel carries
    the viewer, so it works offline), the native viewer spawned as its own process, or a .rrd file."""

    WEB = "web"
    NATIVE = "native"
    SAVE = "save"


@dataclasses.dataclass(kw_only=True)
class ViewerConfig:
    """Settings of the rerun viewer; field names are the ``rerun_viewer`` node's parameters."""

    mode: str = ViewerMode.WEB.value
    web_port: int = 9090  # the web viewer's page (web mode)
    grpc_port: int = 9876  # the data server the page connects to (web mode)
    save_path: str = ""  # the .rrd file (save mode)
    application_id: str = "fedvla"

    def __post_init__(self) -> None:
        from fedvla.config import require

        require(self.mode in {m.value for m in ViewerMode}, "mode", f"unknown viewer mode {self.mode!r}",
                ", ".join(m.value for m in ViewerMode))
        require(self.mode != ViewerMode.SAVE.value or bool(self.save_path), "save_path", "save mode needs a file",
                "a path ending in .rrd")
        for name in ("web_port", "grpc_port"):
            require(0 < getattr(self, name) < 65536, name, f"{getattr(self, name)} is not a port", "1 ... 65535")


def open_recording(config: ViewerConfig, recording_name: str = "") -> tuple[Any, str]:
    """A rerun recording stream with its sink; and what to tell the user (the viewer's address)."""
    import rerun as rr

    stream = rr.RecordingStream(config.application_id, recording_id=recording_name or None)
    mode = ViewerMode(config.mode)
    if mode is ViewerMode.SAVE:
        stream.save(config.save_path)
        return stream, f"recording to {config.save_path} (open it with: rerun {config.save_path})"
    if mode is ViewerMode.NATIVE:
        stream.spawn()
        return stream, "streaming to rerun's native viewer"
    uri = stream.serve_grpc(grpc_port=config.grpc_port)
    rr.serve_web_viewer(web_port=config.web_port, open_browser=False, connect_to=uri)
    return stream, f"rerun web viewer: http://127.0.0.1:{config.web_port}/?url={uri}"


def close_recording(stream: Any) -> None:
    """Send what is buffered and end the sinks (a saved .rrd gets its footer)."""
    stream.flush()
    stream.disconnect()


def stamp_s(msg: Any) -> float | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _camera_of(topic: str) -> tuple[str, str] | None:
    """(camera name, kind) of a camera topic: /camera/<name>/color/image_raw → (name, color)."""
    prefix = topics.CAMERA_NAMESPACE + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix):]
    for kind, relative in (("image", topics.COLOR_IMAGE), ("depth", topics.ALIGNED_DEPTH_IMAGE)):
        if rest.endswith("/" + relative):
            return rest[: -len(relative) - 1], kind
    return None


class RerunLogger:
    """Logs the stack's messages to a rerun recording stream (:data:`__doc__` lists the entities)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._image_sizes: dict[str, tuple[int, int]] = {}  # camera → (width, height), for token cells
        self._layout_key: tuple = ()  # (cameras, MoE layers) the current layout was made for
        self._layers = 0
        self._robot = None  # rerun's UrdfTree of /robot_description, once it came
        self._tool_trace: list[tuple[float, float, float]] = []
        self._routes = {
            topics.JOINT_STATES: self._joint_states,
            topics.INSTRUCTION: self._instruction,
            topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE): self._parsed_scene,
            topics.node_topic(topics.POLICY_NODE, topics.EXPERT_ACTIVATION): self._experts,
            topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK): self._action_chunk,
            topics.node_topic(topics.UR3_DRIVER_NODE, topics.PLANNED_PATH): self._planned_path,
            topics.node_topic(topics.UR3_DRIVER_NODE, topics.TOOL_POSE): self._tool_pose,
            topics.ROBOT_DESCRIPTION: self._robot_description,
        }

    @staticmethod
    def logs(topic: str) -> bool:
        return _camera_of(topic) is not None or topic in _LOGGED_TOPICS

    def log(self, topic: str, msg: Any, received_s: float | None = None) -> bool:
        """Log one message; False when this topic is not shown."""
        import rerun as rr

        when = stamp_s(msg)
        when = received_s if when is None or when == 0.0 else when
        if when is not None:
            self.stream.set_time(TIMELINE, timestamp=when)
        camera = _camera_of(topic)
        route = self._routes.get(topic)
        if camera is not None:
            self._image(camera[0], camera[1], msg, rr)
        elif route is not None:
            route(msg, rr)
        else:
            return False
        self._update_layout()
        return True

    def _update_layout(self) -> None:
        """One view per camera, the tool in 3-D, and the joints, first actions and experts each
        in one plot; sent again when a camera or the MoE layers first appear."""
        import rerun.blueprint as rrb

        key = (tuple(sorted(self._image_sizes)), self._layers)
        if key == self._layout_key:
            return
        self._layout_key = key
        cameras = [rrb.Spatial2DView(origin=f"camera/{c}", name=c) for c in key[0]]
        experts = [rrb.BarChartView(origin=f"policy/experts/layer_{layer}", name=f"experts, layer {layer}")
                   for layer in range(self._layers)]
        self.stream.send_blueprint(rrb.Blueprint(rrb.Horizontal(
            rrb.Vertical(*cameras, rrb.TextDocumentView(origin="instruction", name="instruction"),
                         row_shares=[4] * len(cameras) + [1]),
            rrb.Vertical(rrb.Spatial3DView(origin="robot", name="the arm, tool and planned path"),
                         rrb.TimeSeriesView(origin="robot/joints", name="joint positions (rad)")),
            rrb.Vertical(rrb.TimeSeriesView(origin="policy/action", name="first action of each chunk"),
                         rrb.TimeSeriesView(origin="policy/experts_per_token", name="experts per token"),
                         *([rrb.Tabs(*experts)] if experts else [])),
        ), collapse_panels=True))

    # -- one method per message kind ------------------------------------------------------------
    def _image(self, camera: str, kind: str, msg: Any, rr) -> None:
        pixels = image_from_message(msg)
        if kind == "depth":
            self.stream.log(f"camera/{camera}/depth", rr.DepthImage(pixels, meter=1000.0))
            return
        self._image_sizes[camera] = (pixels.shape[1], pixels.shape[0])
        self.stream.log(f"camera/{camera}/image", rr.Image(pixels))

    def _parsed_scene(self, msg: Any, rr) -> None:
        scene = parse_parsed_scene(msg)
        base = f"camera/{scene.camera}/image"
        if scene.objects:
            boxes = np.array([o.box for o in scene.objects], dtype=np.float32)
            self.stream.log(f"{base}/objects", rr.Boxes2D(
                array=boxes, array_format=rr.Box2DFormat.XYXY,
                colors=[GROUP_COLORS[o.group] for o in scene.objects],
                labels=[f"{o.name} ({o.group.name.lower()} {o.score:.2f})" for o in scene.objects]))
        else:
            self.stream.log(f"{base}/objects", rr.Clear(recursive=False))
        size = self._image_sizes.get(scene.camera)
        if size is None:
            return  # no image of this camera yet: the cells' size is unknown
        rows, cols = scene.grid
        cell_w, cell_h = size[0] / cols, size[1] / rows
        for group in ObjectGroup:
            chosen = scene.selection.indices[group][scene.selection.valid[group]]
            entity = f"{base}/tokens/{group.name.lower()}"
            if chosen.size == 0:
                self.stream.log(entity, rr.Clear(recursive=False))
                continue
            mins = np.stack([(chosen % cols) * cell_w, (chosen // cols) * cell_h], axis=1)
            self.stream.log(entity, rr.Boxes2D(mins=mins, sizes=np.tile([cell_w, cell_h], (len(chosen), 1)),
                                               colors=GROUP_COLORS[group]))

    def _experts(self, msg: Any, rr) -> None:
        activation = parse_expert_activation(msg)
        self._layers = len(activation.counts)
        for layer, counts in enumerate(activation.counts):
            self.stream.log(f"policy/experts/layer_{layer}", rr.BarChart(counts.astype(np.float32)))
        self.stream.log("policy/experts_per_token", rr.Scalars(activation.experts_per_token))

    def _action_chunk(self, msg: Any, rr) -> None:
        chunk = parse_action_chunk(msg)
        names = chunk.dimension_names or default_dimension_names(chunk.actions.shape[1])
        for name, value in zip(names, chunk.actions[0]):
            self.stream.log(f"policy/action/{name}", rr.Scalars(float(value)))

    def _planned_path(self, msg: Any, rr) -> None:
        points = np.array([[p.x, p.y, p.z] for p in msg.points], dtype=np.float32).reshape(-1, 3)
        frame = rr.CoordinateFrame(msg.header.frame_id or BASE_FRAME)  # where the arm's links are
        self.stream.log("robot/planned_path", rr.LineStrips3D([points], colors=PATH_COLOR, radii=0.003), frame)

    def _tool_pose(self, msg: Any, rr) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        position = np.array([p.x, p.y, p.z], dtype=np.float32)
        approach = _rotate(np.array([q.x, q.y, q.z]), q.w, np.array([0.0, 0.0, TOOL_AXIS_M]))
        frame = rr.CoordinateFrame(msg.header.frame_id or BASE_FRAME)
        self.stream.log("robot/tool", rr.Arrows3D(origins=[position], vectors=[approach], colors=TOOL_COLOR), frame)
        self._tool_trace = (self._tool_trace + [tuple(position)])[-TOOL_TRACE_LENGTH:]
        self.stream.log("robot/tool_trace", rr.LineStrips3D([np.array(self._tool_trace, dtype=np.float32)],
                                                            colors=TOOL_COLOR, radii=0.002), frame)

    def _joint_states(self, msg: Any, rr) -> None:
        for name, position in zip(msg.name, msg.position):
            self.stream.log(f"robot/joints/{name}", rr.Scalars(float(position)))
            joint = self._robot.get_joint_by_name(name) if self._robot is not None else None
            if joint is not None:  # the model's link moves with it
                self.stream.log(f"robot/joint_transforms/{name}", joint.compute_transform(float(position), clamp=False))

    def _robot_description(self, msg: Any, rr) -> None:
        """The URDF (as RViz takes it from /robot_description), logged once as the arm's model."""
        import tempfile

        if self._robot is not None:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".urdf", delete=False) as urdf:
            urdf.write(msg.data)
        try:
            self._robot = rr.urdf.UrdfTree.from_file_path(urdf.name, entity_path_prefix="robot")
            self._robot.log_urdf_to_recording(self.stream)
        finally:
            Path(urdf.name).unlink(missing_ok=True)

    def _instruction(self, msg: Any, rr) -> None:
        self.stream.log("instruction", rr.TextDocument(msg.data))


_LOGGED_TOPICS = frozenset(RerunLogger(None)._routes)


def log_bag(bag, stream: Any, on_message=None) -> dict[str, int]:
    """Every message of a rosbag2 that the viewer shows, logged on its stamps; messages per topic."""
    from fedvla.bag import read_messages, summarize_bag

    shown = [t.name for t in summarize_bag(bag).topics if RerunLogger.logs(t.name)]
    logger, counts = RerunLogger(stream), {}
    for topic, received_ns, msg in read_messages(bag, shown):
        logger.log(topic, msg, received_ns / 1e9)
        counts[topic] = counts.get(topic, 0) + 1
        if on_message is not None:
            on_message()
    return counts
