"""Core dataclasses ↔ ROS messages, in one place."""
from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PointStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from fedvla.camera import Frame, Intrinsics
from fedvla.data.images import image_from_message
from fedvla.iosp.localize import TargetLocation
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.types import ObjectGroup, ObjectLabel
from fedvla.iosp.visualize import GROUP_COLORS, box_in_camera
from fedvla_interfaces.msg import ObjectLabels, ParsedScene, SceneObject


def message_class(msgtype: str) -> type:
    """The installed message class of a type name such as ``sensor_msgs/msg/Image``."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def image_msg(array: np.ndarray, encoding: str, stamp: Time, frame_id: str) -> Image:
    """A sensor_msgs/Image sharing the array's bytes (rgb8 (H,W,3) uint8 or 16UC1 (H,W) uint16)."""
    array = np.ascontiguousarray(array)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    # bytes, never a numpy array: rclpy copies a uint8[] field from bytes ~100x faster.
    msg.data = array.tobytes()
    return msg


def camera_info_msg(intrinsics: Intrinsics, stamp: Time, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = intrinsics.width, intrinsics.height
    msg.distortion_model = intrinsics.distortion_model
    msg.d = list(intrinsics.distortion)
    msg.k = intrinsics.K.flatten().tolist()
    msg.r = np.eye(3).flatten().tolist()
    msg.p = np.hstack([intrinsics.K, np.zeros((3, 1))]).flatten().tolist()
    return msg


def frame_messages(frame: Frame, stamp: Time, frame_id: str) -> tuple[Image, CameraInfo, Image | None]:
    """Colour image, its camera info, and the aligned depth image (None without depth)."""
    color = image_msg(frame.rgb, "rgb8", stamp, frame_id)
    info = camera_info_msg(frame.intrinsics, stamp, frame_id)
    depth = image_msg(frame.depth, "16UC1", stamp, frame_id) if frame.depth is not None else None
    return color, info, depth


def image_to_array(msg: Image) -> np.ndarray:
    """Inverse of :func:`image_msg` for rgb8/bgr8/16UC1/mono8 images; colour comes back as RGB."""
    return image_from_message(msg)


def label_image_msg(labels: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """An object label image (index per pixel, -1 none) as 16UC1 with 0 = none, v = object v - 1."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < -1 or labels.max() >= np.iinfo(np.uint16).max):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}]; a 16UC1 label image holds -1 ... 65534")
    return image_msg((labels + 1).astype(np.uint16), "16UC1", stamp, frame_id)


def labels_from_msg(msg: Image) -> np.ndarray:
    """Inverse of :func:`label_image_msg`: (H, W) int32, -1 where no object."""
    if msg.encoding != "16UC1":
        raise ValueError(f"a label image is 16UC1, got {msg.encoding!r}")
    return image_to_array(msg).astype(np.int32) - 1


def object_labels_msg(objects: Sequence[ObjectLabel], stamp: Time, frame_id: str) -> ObjectLabels:
    msg = ObjectLabels(names=[o.name for o in objects], foreground=[bool(o.foreground) for o in objects])
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def objects_from_msg(msg: ObjectLabels) -> list[ObjectLabel]:
    if len(msg.names) != len(msg.foreground):
        raise ValueError(f"label table has {len(msg.names)} names but {len(msg.foreground)} foreground flags")
    return [ObjectLabel(name, bool(fg)) for name, fg in zip(msg.names, msg.foreground)]


def parsed_scene_msg(parse: CameraParse, header: Header, rule: str) -> ParsedScene:
    """A scene parse as the ParsedScene message (``rule``: the token selection rule's name)."""
    objects = []
    for detection, group, tokens in zip(parse.detections, parse.groups, parse.object_tokens, strict=True):
        x0, y0, x1, y1 = detection.box
        objects.append(SceneObject(class_name=detection.name, group=int(group), score=float(detection.score),
                                   track_id=int(detection.track_id), x_min=float(x0), y_min=float(y0),
                                   x_max=float(x1), y_max=float(y1),
                                   selected_token_indices=[int(i) for i in tokens]))
    rows, cols = parse.grid
    return ParsedScene(header=header, camera_name=parse.camera, instruction=parse.instruction,
                       target_names=[t.name for t in parse.targets], objects=objects, token_selection_rule=rule,
                       patch_rows=int(rows), patch_cols=int(cols), tokens_per_group=int(parse.selection.indices.shape[1]),
                       group_token_indices=parse.selection.flat_indices().tolist())


def _color(group: ObjectGroup) -> ColorRGBA:
    r, g, b = GROUP_COLORS[group]
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=1.0)


def _duration(seconds: float) -> Duration:
    return Duration(sec=int(seconds), nanosec=int((seconds % 1.0) * 1e9))


def target_position_msg(location: TargetLocation, header: Header) -> PointStamped:
    x, y, z = (float(v) for v in location.position)
    return PointStamped(header=header, point=Point(x=x, y=y, z=z))


def target_marker(location: TargetLocation, header: Header, camera: str, lifetime_s: float = 0.0) -> Marker:
    """A sphere at the located target (namespace ``<camera>/target_position``), target red."""
    x, y, z = (float(v) for v in location.position)
    marker = Marker(header=header, ns=f"{camera}/target_position", id=0, type=Marker.SPHERE, action=Marker.ADD,
                    color=_color(ObjectGroup.TARGET), lifetime=_duration(lifetime_s))
    marker.pose.position = Point(x=x, y=y, z=z)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = 0.03
    return marker


def scene_markers(parse: CameraParse, header: Header, camera_matrix: np.ndarray, depth_m: float,
                  previous_count: int = 0, lifetime_s: float = 0.0) -> list[Marker]:
    """RViz markers of a parse in the camera's optical frame (``header.frame_id``): per object its
    box outline (namespace ``<camera>/boxes``) and name (``<camera>/labels``) on the plane
    ``depth_m`` ahead, coloured by group; DELETE markers for the ids a previous parse of this
    camera used beyond this one's ``len(parse.detections)``."""
    markers = []
    lifetime = _duration(lifetime_s)
    for index, (detection, group) in enumerate(zip(parse.detections, parse.groups)):
        corners = box_in_camera(detection.box, camera_matrix, depth_m)
        outline = Marker(header=header, ns=f"{parse.camera}/boxes", id=index, type=Marker.LINE_STRIP,
                         action=Marker.ADD, color=_color(group), lifetime=lifetime,
                         points=[Point(x=float(x), y=float(y), z=float(z)) for x, y, z in (*corners, corners[0])])
        outline.pose.orientation.w = 1.0
        outline.scale.x = 0.004 * depth_m
        label = Marker(header=header, ns=f"{parse.camera}/labels", id=index, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, color=_color(group), lifetime=lifetime, text=detection.name)
        label.pose.position = Point(x=float(corners[0][0]), y=float(corners[0][1]) - 0.02 * depth_m, z=float(depth_m))
        label.pose.orientation.w = 1.0
        label.scale.z = 0.03 * depth_m
        markers += [outline, label]
    for index in range(len(parse.detections), previous_count):
        markers += [Marker(header=header, ns=f"{parse.camera}/{kind}", id=index, action=Marker.DELETE)
                    for kind in ("boxes", "labels")]
    return markers
