"""Launch support for FedVLA-ROS: builds launch_ros actions from config/graph.yaml."""
