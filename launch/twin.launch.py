"""ros2 launch fedvla_bringup twin.launch.py — the 'twin' profile of config/graph.yaml.

Arguments: `ros2 launch fedvla_bringup twin.launch.py --show-args`. Without the ROS 2 CLI:
`fedvla launch twin`.
"""
from fedvla_bringup.graph_launch import profile_launch_description


def generate_launch_description():
    return profile_launch_description("twin")
