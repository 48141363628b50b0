"""QoS profiles shared by publishers and subscribers (they must match to connect)."""
from __future__ import annotations

from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy

# A fixed fact (a camera's label table), delivered to late joiners too, like a ROS 1 latched topic.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Requests waiting for the federation server: with the default depth (10) a busy server silently
# drops the oldest, and their clients wait for an answer that never comes. 64 covers 16 clients
# with 4 chunks in flight each (requests are held only while queued).
SERVICE_QOS = QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

# The server's round events: a monitor that joins late (or a restarted server's first events, sent
# before subscribers have discovered it) still gets the recent history. 100 samples hold ~200 s of
# periodic status at the default tick, and every started/closed event within it.
ROUND_EVENTS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)

# Action chunks (policy, demonstrator, motion pattern -> arm driver). The publisher's liveliness is
# leased for two control periods at the 10 Hz control rate: when the process that sends chunks
# dies, DDS tells the driver within the lease and the driver brakes, instead of running out the
# chunk it has and then waiting for its stale timeout (0.5 s). Every chunk publisher uses this
# profile: a subscriber requesting a lease connects only to writers offering one as short.
CHUNK_SOURCE_LEASE_S = 0.2
ACTION_CHUNK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                              liveliness=LivelinessPolicy.AUTOMATIC,
                              liveliness_lease_duration=Duration(seconds=CHUNK_SOURCE_LEASE_S))
