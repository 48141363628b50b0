"""The twin's launch tests' view of the graph: joint states, the driver's diagnostics, the policy's
chunks, the driver's services, and the test run's own processes."""
from __future__ import annotations

import os
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

from fedvla import topics


class Watcher:
    """Joint states (receive time, six arm joints) and the driver's last diagnostics."""

    def __init__(self, context) -> None:
        self.node = rclpy.create_node("twin_loop_test", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.samples: list[tuple[float, np.ndarray]] = []
        self.driver: dict[str, str] = {}
        self.message = ""
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._joints, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._diagnostics, QoSProfile(depth=10))
        from fedvla_interfaces.msg import ActionChunk
        from fedvla_ros.qos import ACTION_CHUNK_QOS

        self.chunks = 0
        self.node.create_subscription(ActionChunk, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK),
                                      self._chunk, ACTION_CHUNK_QOS)

    def _chunk(self, msg) -> None:
        self.chunks += 1

    def _joints(self, msg) -> None:
        self.samples.append((time.monotonic(), np.array(msg.position[:6])))

    def _diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == topics.DRIVER_DIAGNOSTICS:
                self.message = status.message
                self.driver = {v.key: v.value for v in status.values}

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def until(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            self.spin(0.1)
        assert predicate(), f"{what} within {timeout_s:g} s (driver: {self.message!r} {self.driver})"

    def motion(self, since: float) -> float:
        """Largest joint change (rad) between samples received after ``since``."""
        window = [q for t, q in self.samples if t >= since]
        return max((float(np.abs(b - a).max()) for a, b in zip(window, window[1:])), default=0.0)

    def last_moving(self, since: float) -> float | None:
        moving = [t1 for (t0, a), (t1, b) in zip(self.samples, self.samples[1:])
                  if t0 >= since and np.abs(b - a).max() > 1e-5]
        return moving[-1] if moving else None

    def call(self, kind, service: str, request):
        client = self.node.create_client(kind, topics.node_topic(topics.UR3_DRIVER_NODE, service))
        assert client.wait_for_service(timeout_sec=20.0)
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=20.0)
        return future.result()

    def enable(self, on: bool) -> str:
        return self.call(SetBool, topics.ENABLE_SERVICE, SetBool.Request(data=on)).message

    def running(self) -> dict[str, int]:
        """Recover the driver if the robot stopped (on a starved 2-core machine the RTDE watchdog
        can stop the twin's program, as on a real UR); the refusal counts from here on."""
        self.spin(1.2)  # the 1 Hz diagnostics
        if self.driver.get("mode") == "fault":
            self.call(Trigger, topics.RECOVER_SERVICE, Trigger.Request())
            self.until(lambda: self.driver.get("mode") in ("idle", "tracking"), 20, "the driver recovered")
        return refused_counts(self.driver)

    def moves_without_refusals(self, refused_before: dict[str, int], seconds: float) -> None:
        """The arm starts moving under the policy and, for ``seconds``, no chunk is refused beyond
        ``refused_before`` (:meth:`running`'s counts)."""
        moving_from = time.monotonic()
        self.until(lambda: self.motion(moving_from) > 1e-4, 30, "the arm moving under the policy")
        self.spin(seconds)
        self.spin(1.2)  # the 1 Hz diagnostics
        refused = {k: n - refused_before.get(k, 0) for k, n in refused_counts(self.driver).items()}
        assert not any(refused.values()), f"chunks refused: {self.driver}"

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def processes_with(marker: str) -> list:
    """This run's processes whose command line has ``marker`` (in this test run's ROS domain)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if marker in cmdline and process.environ().get("ROS_DOMAIN_ID") == os.environ["ROS_DOMAIN_ID"]:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def refused_counts(driver: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in driver.items() if k.startswith("refused_chunks.") and int(v)}
