"""FedVLA-ROS core: everything that runs and is tested without ROS (no rclpy import here)."""

__version__ = "0.1.0"
