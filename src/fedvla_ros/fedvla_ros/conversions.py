"""Core dataclasses ↔ ROS messages, in one place."""
from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from fedvla.camera import Frame, Intrinsics
from fedvla.data.observations import image_from_message
from fedvla.iosp.localize import TargetLocation
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.types import ObjectGroup, ObjectLabel
from fedvla.iosp.visualize import GROUP_COLORS, box_in_camera
from fedvla_interfaces.msg import ObjectLabels


def message_class(msgtype: str) -> type:
    """The installed message class of a type name such as ``sensor_msgs/msg/Image``."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def stamp_ns(header: Header) -> int:
    """A header's stamp in integer nanoseconds (exact: the key that matches images of one frame)."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


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


def camera_matrix(msg: CameraInfo) -> np.ndarray:
    """The 3x3 intrinsic matrix K of a camera info (the inverse of :func:`camera_info_msg`'s ``k``)."""
    k = np.asarray(msg.k, dtype=np.float64)
    if k.shape != (9,) or k[8] != 1.0:
        raise ValueError(f"camera info has no intrinsic matrix (k = {k.tolist()})")
    return k.reshape(3, 3)


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


# --- the arm -------------------------------------------------------------------------------------

def fill_pose(position, orientation, matrix: np.ndarray) -> None:
    """Fill a Point/Vector3 and a Quaternion message from a 4x4 homogeneous matrix."""
    import pinocchio as pin

    quaternion = pin.Quaternion(np.asarray(matrix)[:3, :3])
    position.x, position.y, position.z = (float(v) for v in np.asarray(matrix)[:3, 3])
    orientation.x, orientation.y, orientation.z, orientation.w = (
        float(quaternion.x), float(quaternion.y), float(quaternion.z), float(quaternion.w))


def matrix_from_pose(pose) -> np.ndarray:
    """The 4x4 homogeneous matrix of a geometry_msgs/Pose (its quaternion normalised)."""
    import pinocchio as pin

    q = pose.orientation
    matrix = np.eye(4)
    matrix[:3, :3] = pin.Quaternion(q.w, q.x, q.y, q.z).normalized().toRotationMatrix()
    matrix[:3, 3] = (pose.position.x, pose.position.y, pose.position.z)
    return matrix


def transforms(poses: dict[str, np.ndarray], parent: str, stamp: Time) -> list[TransformStamped]:
    """One TransformStamped per frame of ``poses`` (4x4 in ``parent``), the parent itself left out."""
    out = []
    for frame, matrix in poses.items():
        if frame == parent:
            continue
        transform = TransformStamped()
        transform.header.stamp, transform.header.frame_id, transform.child_frame_id = stamp, parent, frame
        fill_pose(transform.transform.translation, transform.transform.rotation, matrix)
        out.append(transform)
    return out


def path_marker(points: np.ndarray | None, frame_id: str, stamp: Time) -> Marker:
    """A green line strip through ``points`` (n, 3) in ``frame_id``; None deletes the strip."""
    marker = Marker(ns="planned_path", id=0, type=Marker.LINE_STRIP)
    marker.header.stamp, marker.header.frame_id = stamp, frame_id
    if points is None:
        marker.action = Marker.DELETE
        return marker
    marker.action, marker.scale.x = Marker.ADD, 0.005
    marker.color = ColorRGBA(r=0.1, g=0.9, b=0.3, a=1.0)
    marker.pose.orientation.w = 1.0
    marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in points]
    return marker


def diagnostics_msg(name: str, hardware_id: str, healthy: bool, message: str, values: dict[str, str],
                    stamp: Time) -> DiagnosticArray:
    status = DiagnosticStatus(level=DiagnosticStatus.OK if healthy else DiagnosticStatus.ERROR, name=name,
                              hardware_id=hardware_id, message=message,
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
