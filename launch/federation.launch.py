"""ros2 launch fedvla_bringup federation.launch.py — the 'federation' profile of config/graph.yaml:
fed_server and three simulated robot clients (robot_a, robot_b, robot_c) on this machine.

Arguments: `ros2 launch fedvla_bringup federation.launch.py --show-args`. Without the ROS 2 CLI:
`fedvla launch federation`.
"""
from fedvla_bringup.graph_launch import profile_launch_description


def generate_launch_description():
    return profile_launch_description("federation")
