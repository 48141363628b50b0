"""Two test runs at once never see each other's topics: each locks its own ROS_DOMAIN_ID."""
import os
import subprocess
import sys

import pytest

from support.ros import wait_for_messages

rclpy = pytest.importorskip("rclpy")
from std_msgs.msg import String  # noqa: E402

pytestmark = pytest.mark.ros

# A stand-in for a second, concurrent test run: it isolates itself exactly like conftest.py.
PUBLISHER = r'''
import os, sys, time
from support.ros_domain import isolate_ros_environment
if sys.argv[1] == "own":
    isolate_ros_environment()
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("probe_publisher")
pub = node.create_publisher(String, "/isolation_probe", 10)
print(os.environ["ROS_DOMAIN_ID"], flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    pub.publish(String(data=os.environ["ROS_DOMAIN_ID"]))
    time.sleep(0.05)
'''


def _publisher(mode: str) -> tuple[subprocess.Popen, int]:
    test_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the child imports support/
    process = subprocess.Popen([sys.executable, "-c", PUBLISHER, mode], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=test_dir))
    return process, int(process.stdout.readline())


def test_a_concurrent_run_in_its_own_domain_is_invisible(rclpy_context) -> None:
    other, other_domain = _publisher("own")
    same, same_domain = _publisher("inherit")
    try:
        assert other_domain != int(os.environ["ROS_DOMAIN_ID"]) == same_domain
        received = wait_for_messages(rclpy_context, "/isolation_probe", String, count=20, timeout_s=20)
    finally:
        other.kill()
        same.kill()
        other.wait()
        same.wait()
    # 20 messages arrived, and every one came from this run's domain.
    assert {m.data for m in received} == {str(same_domain)}
