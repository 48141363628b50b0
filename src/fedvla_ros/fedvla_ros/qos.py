"""QoS profiles shared by publishers and subscribers (they must match to connect)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# A fixed fact (a camera's label table), delivered to late joiners too, like a ROS 1 latched topic.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
