"""ros2 launch fedvla_bringup camera_replay.launch.py — the 'camera_replay' profile of config/graph.yaml.

Arguments: `ros2 launch fedvla_bringup camera_replay.launch.py --show-args`. Without the ROS 2 CLI:
`fedvla launch camera_replay`.
"""
from fedvla_bringup.graph_launch import profile_launch_description


def generate_launch_description():
    return profile_launch_description("camera_replay")
