"""ros2 launch fedvla_bringup replay.launch.py — the 'replay' profile of config/graph.yaml.

Arguments: `ros2 launch fedvla_bringup replay.launch.py --show-args`. Without the ROS 2 CLI:
`fedvla launch replay`.
"""
from fedvla_bringup.graph_launch import profile_launch_description


def generate_launch_description():
    return profile_launch_description("replay")
