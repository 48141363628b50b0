"""Topic names of the stack: the single source for nodes, launch files, tests and RViz.

Camera topics follow realsense-ros: relative to the camera node (``~/``), so a node named
``camera`` in namespace ``camera`` publishes ``/camera/camera/color/image_raw``.
"""
from __future__ import annotations

COLOR_IMAGE = "color/image_raw"
COLOR_INFO = "color/camera_info"
ALIGNED_DEPTH_IMAGE = "aligned_depth_to_color/image_raw"
ALIGNED_DEPTH_INFO = "aligned_depth_to_color/camera_info"
CAMERA_TOPICS = (COLOR_IMAGE, COLOR_INFO, ALIGNED_DEPTH_IMAGE, ALIGNED_DEPTH_INFO)


def private_topic(relative: str) -> str:
    """The name a node uses for one of its own topics (``~/color/image_raw``)."""
    return f"~/{relative}"


def node_topic(node_fqn: str, relative: str) -> str:
    """Absolute topic of a node's private topic: ``/camera/corner`` + ``color/image_raw``."""
    return f"{node_fqn.rstrip('/')}/{relative}"

# Robot state (UR driver convention) and the policy node's own topics (relative to the node).
JOINT_STATES = "/joint_states"
INSTRUCTION = "instruction"
ACTION_CHUNK = "action_chunk"
EXPERT_ACTIVATION = "expert_activation"
# The scene parser (IOSP) publishes one ParsedScene per camera frame on its ~/parsed_scene.
SCENE_PARSER_NODE = "/scene_parser"
PARSED_SCENE = "parsed_scene"

# Federation (absolute: one server per ROS domain, clients in any namespace reach it).
FEDERATION_JOIN = "/federation/join"
FEDERATION_HEARTBEAT = "/federation/heartbeat"
FEDERATION_STATUS = "/federation/status"
FEDERATION_FETCH = "/federation/fetch"
FEDERATION_UPLOAD = "/federation/upload"
FEDERATION_ROUND = "/federation/round"
