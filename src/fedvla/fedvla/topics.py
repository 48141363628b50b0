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
# Simulated cameras with enable_segmentation: object label per pixel (16UC1, 0 = none, v = object
# v - 1) and the label table (fedvla_interfaces/ObjectLabels, latched).
SEGMENTATION_IMAGE = "segmentation/image_raw"
SEGMENTATION_LABELS = "segmentation/labels"


CAMERA_NAMESPACE = "/camera"


def camera_node(name: str) -> str:
    """The fully qualified name of camera ``name`` (realsense-ros: a node ``name`` in namespace
    ``camera``; the real D435i is ``/camera/camera``)."""
    return f"{CAMERA_NAMESPACE}/{name}"


def camera_topic(name: str, relative: str) -> str:
    """Absolute topic of camera ``name``: ``camera_topic("corner", COLOR_IMAGE)``."""
    return node_topic(camera_node(name), relative)


def private_topic(relative: str) -> str:
    """The name a node uses for one of its own topics (``~/color/image_raw``)."""
    return f"~/{relative}"


def node_topic(node_fqn: str, relative: str) -> str:
    """Absolute topic of a node's private topic: ``/camera/corner`` + ``color/image_raw``."""
    return f"{node_fqn.rstrip('/')}/{relative}"

# Robot state (UR driver convention); the task instruction (std_msgs/String), one for the
# robot, read by the scene parser and the policy; the policy node's own topics (relative).
JOINT_STATES = "/joint_states"
POLICY_NODE = "/policy"
INSTRUCTION = "/instruction"
ACTION_CHUNK = "action_chunk"
EXPERT_ACTIVATION = "expert_activation"
# The scene parser (IOSP) publishes one ParsedScene per camera frame on its ~/parsed_scene, the
# boxes as RViz markers on ~/markers, an annotated image per camera, and the instruction's target
# located with the aligned depth on ~/target_position (geometry_msgs/PointStamped, optical frame).
SCENE_PARSER_NODE = "/scene_parser"
PARSED_SCENE = "parsed_scene"
SCENE_MARKERS = "markers"
TARGET_POSITION = "target_position"


def annotated_image_topic(camera: str) -> str:
    """The scene parser's annotated image of one camera (relative to the node)."""
    return f"{camera}/annotated_image"

# The UR3 driver: the robot's URDF (latched std_msgs/String, robot_state_publisher convention), TF,
# diagnostics; its own tool pose, planned tool path (RViz marker) and services (relative).
ROBOT_DESCRIPTION = "/robot_description"
TF = "/tf"
TF_STATIC = "/tf_static"
DIAGNOSTICS = "/diagnostics"
DRIVER_DIAGNOSTICS = "ur3_driver: arm"  # the arm driver's DiagnosticStatus name on /diagnostics
TOOL_POSE = "tool_pose"
PLANNED_PATH = "planned_path"
RECOVER_SERVICE = "recover"
ENABLE_SERVICE = "enable"  # std_srvs/SetBool: execute chunks (true) or dry run (false)
STOP_SERVICE = "stop"
UR3_DRIVER_NODE = "/ur3_driver"

# The workcell twin (workcell_sim): its task's success check (fedvla_interfaces/TaskStatus, latched)
# and the scene reset service (fedvla_interfaces/ResetScene), relative to the node. Its camera
# publishes on the D435i's realsense-ros topics (camera_topic("camera", ...)).
WORKCELL_NODE = "/workcell_sim"
TASK_STATUS = "task_status"
RESET_SCENE_SERVICE = "reset"
TWIN_CAMERA = "camera"  # the real_robot profile's D435i, /camera/camera

# ROS's own topics: the log, parameter events, simulated time.
ROSOUT = "/rosout"
PARAMETER_EVENTS = "/parameter_events"
CLOCK = "/clock"

# Replay: the bag player republishes a recording's own outputs of the policy under this prefix (so
# the live policy node and the recording do not share topics), and says on its ~/done when the
# recording has been played (std_msgs/Bool, latched); the replay evaluator listens to both.
BAG_PLAYER_NODE = "/bag_player"
REPLAY_RECORDED_PREFIX = "/replay/recorded"
PLAYER_DONE = "done"


def recorded_topic(topic: str) -> str:
    """Where the bag player republishes a recorded ``topic`` of the policy."""
    return REPLAY_RECORDED_PREFIX + topic

# Federation (absolute: one server per ROS domain, clients in any namespace reach it).
FEDERATION_JOIN = "/federation/join"
FEDERATION_HEARTBEAT = "/federation/heartbeat"
FEDERATION_STATUS = "/federation/status"
FEDERATION_FETCH = "/federation/fetch"
FEDERATION_UPLOAD = "/federation/upload"
FEDERATION_SECURE = "/federation/secure"
FEDERATION_ROUND = "/federation/round"
