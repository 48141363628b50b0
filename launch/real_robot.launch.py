"""ros2 launch fedvla_bringup real_robot.launch.py — the 'real_robot' profile of config/graph.yaml.

Arguments: `ros2 launch fedvla_bringup real_robot.launch.py --show-args`. Without the ROS 2 CLI:
`fedvla launch real_robot`.
"""
from fedvla_bringup.graph_launch import profile_launch_description


def generate_launch_description():
    return profile_launch_description("real_robot")
