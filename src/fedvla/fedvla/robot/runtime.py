"""Everything the UR3 driver node runs, built from its parameters, with no ROS import: the arm
backend, the kinematics, IK, the safety guard, retargeting and the :class:`ArmController`, plus
the real-time loop that steps the controller once per controller period on its own thread.

The node (``fedvla_ros.ur3_driver``) only converts messages and calls :meth:`ArmRuntime.submit_chunk`,
:meth:`ArmRuntime.snapshot`, :meth:`ArmRuntime.recover` and :meth:`ArmRuntime.stop`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import enum
import os
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedvla import topics
from fedvla.config import ConfigError, config_fields, from_mapping, require, require_positive
from fedvla.robot.backends import ArmBackend, BackendError, ServoSettings, SimulatedArm
from fedvla.robot.controller import ArmController, ArmMode, ControllerConfig
from fedvla.robot.ik import IkConfig, IkSolver
from fedvla.robot.kinematics import GRIPPER_JOINT, HOME_Q, ArmKinematics
from fedvla.robot.retarget import RetargetConfig, Retargeter
from fedvla.robot.safety import SafetyConfig, SafetyGuard

log = logging.getLogger("fedvla.robot")

# The controller's cycle per UR model: CB3 controllers run at 125 Hz, e-series at 500 Hz.
UR_CONTROL_RATES_HZ = {"ur3": 125.0, "ur3e": 500.0}


CALLER_NICENESS = -10
STALL_PERIODS = 6  # a cycle this late is worth a warning (a UR's RTDE watchdog allows about 12 at 125 Hz)


class RunQueueClock:
    """How long the calling thread has waited on a run queue for a CPU (Linux schedstat's
    ``run_delay``), to tell a stalled loop's causes apart: a CPU taken by other work (or the
    scheduler throttling this thread's group) against a wait the thread was not runnable for (a
    sleep, the GIL, a lock, a reply from the robot). Made on the thread it measures."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(Path("/proc") / "thread-self" / "schedstat", os.O_RDONLY)
            self.seconds()
        except (OSError, ValueError, IndexError):
            self._fd = None

    def seconds(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) * 1e-9

    def describe(self, waited_s: float) -> str:
        if self._fd is None:
            return "run-queue time unknown here"
        return f"{waited_s * 1e3:.0f} ms of it waiting for a CPU"

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class ArmBackendKind(str, enum.Enum):
    SIM = "sim"  # kinematic UR3 in this process (use_mock_hardware)
    UR_RTDE = "ur_rtde"  # a real controller (or URSim) at robot_ip


@dataclasses.dataclass(kw_only=True)
class ArmDriverConfig:
    backend: ArmBackendKind = ArmBackendKind.SIM
    robot_ip: str = "192.168.56.101"  # ur_rtde backend only
    ur_type: str = "ur3"  # ur3 (CB3, 125 Hz) or ur3e (e-series, 500 Hz): the control rate
    urdf_path: str = ""  # empty: the installed urdf/ur3_gripper.urdf
    gripper_output: str = "tool:0"  # ur_rtde: the digital output wired to the gripper (see ur_rtde_arm)
    watchdog_frequency_hz: float = 10.0  # ur_rtde: the RTDE watchdog (0 disables)
    initial_joint_positions: tuple[float, ...] = HOME_Q  # sim backend: where the arm starts, rad
    action_topic: str = topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)  # where action chunks come from
    # The checkpoint of the policy whose chunks arrive: refused at startup unless its action space is
    # the one the retargeting settings execute (fedvla.app.arm); empty: no policy to check.
    checkpoint_path: str = ""
    object_pose_topic: str = ""  # geometry_msgs/PoseStamped of the object (action_frame object); empty: none
    # geometry_msgs/PointStamped of the object, e.g. the scene parser's ~/target_position: a position
    # without orientation, so the object's axes are taken parallel to base_link; empty: none
    object_position_topic: str = ""
    # std_msgs/Bool of the operator's deadman switch (true: held); empty: none. Needs the
    # controller's operator_heartbeat_timeout_s, and the other way round.
    operator_heartbeat_topic: str = ""
    state_rate_hz: float = 50.0  # /joint_states, tool pose and /tf
    ik_restarts: int = 0  # random restarts when warm-started IK fails (0: fail fast, the chunk is refused)
    # SCHED_FIFO priority of the control loop's thread (1-99; 0: normal scheduling), as the UR ROS
    # driver asks for: on a busy machine a normal thread can miss the RTDE watchdog (100 ms). Needs
    # rtprio permission (/etc/security/limits.conf); without it the loop runs at normal priority.
    realtime_priority: int = 50
    # The loop in a child process of its own (fedvla.robot.loop_process): in the node's process it
    # shares the GIL with rclpy's publishing, which held it long enough to trip the RTDE watchdog.
    separate_process: bool = True

    def __post_init__(self) -> None:
        require(self.ur_type in UR_CONTROL_RATES_HZ, "ur_type", f"unknown UR model {self.ur_type!r}",
                ", ".join(UR_CONTROL_RATES_HZ))
        require(len(self.initial_joint_positions) == 6, "initial_joint_positions",
                f"has {len(self.initial_joint_positions)} values", "six joint angles in rad")
        require_positive(self.state_rate_hz, "state_rate_hz")
        require(self.ik_restarts >= 0, "ik_restarts", f"is negative ({self.ik_restarts})", "0 or more")
        require(0 <= self.realtime_priority <= 99, "realtime_priority", f"{self.realtime_priority} is not a "
                "SCHED_FIFO priority", "1-99, or 0 for normal scheduling")
        require(not (self.object_pose_topic and self.object_position_topic), "object_position_topic",
                "is set together with object_pose_topic (two sources for one object)", "one of the two, the other empty")

    @property
    def control_rate_hz(self) -> float:
        return UR_CONTROL_RATES_HZ[self.ur_type]


@dataclasses.dataclass(frozen=True)
class ArmSnapshot:
    """What the node publishes, taken under the runtime's lock."""

    mode: ArmMode
    fault_reason: str
    measured_q: np.ndarray | None
    gripper_closed: bool
    planned_q: np.ndarray | None  # (n, 6) waypoints of the trajectory being executed
    refused: dict[str, int]
    refused_executing: dict[str, int]  # refused while execution was enabled (not planning in dry run)
    cycles: int
    overruns: int  # control periods that took longer than the period
    # control periods braked instead of following the chunk, so as to stop within the limits
    limit_brakes: int = 0
    chunk_merges: int = 0  # chunks merged with the one executing (chunk_aggregator)
    dry_holds: int = 0  # times the executing chunk ran out before the next came (the arm held)
    queue_s: float = 0.0  # time left of the executing chunk's actions
    late_actions: int = 0  # actions whose time had passed when their chunk arrived (dropped)
    setpoint_jerk_rms: float = 0.0  # rad/s^3, the largest joint's (controller.Smoothness)
    largest_reference_jump: float = 0.0  # rad, where a new chunk took over
    enabled: bool = False  # executing chunks (False: dry run)
    # observation (camera frame) to first setpoint of the chunk answering it, seconds, last chunks
    observation_to_setpoint_s: tuple[float, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.mode in (ArmMode.IDLE, ArmMode.TRACKING)

    def status_message(self) -> str:
        return self.mode.value + (f": {self.fault_reason}" if self.fault_reason else "")

    def diagnostic_values(self, control_rate_hz: float) -> dict[str, str]:
        """The driver's diagnostics as key/value strings (refused chunks counted per reason)."""
        return {"mode": self.mode.value, "execution": "enabled" if self.enabled else "dry run",
                "control_rate_hz": f"{control_rate_hz:g}", "control_cycles": str(self.cycles),
                "control_overruns": str(self.overruns), "limit_brakes": str(self.limit_brakes),
                "chunk_merges": str(self.chunk_merges), "queue_ran_dry": str(self.dry_holds),
                "queue_ms": f"{1000.0 * self.queue_s:.0f}", "late_actions": str(self.late_actions),
                "setpoint_jerk_rms": f"{self.setpoint_jerk_rms:.1f}",
                "largest_reference_jump_mrad": f"{1000.0 * self.largest_reference_jump:.2f}",
                **{f"refused_chunks.{reason}": str(n) for reason, n in sorted(self.refused.items())},
                **{f"refused_while_executing.{reason}": str(n) for reason, n in sorted(self.refused_executing.items())},
                **self._latency_values()}

    def _latency_values(self) -> dict[str, str]:
        if not self.observation_to_setpoint_s:
            return {}
        p50, p95 = np.percentile(1000.0 * np.asarray(self.observation_to_setpoint_s), [50, 95])
        return {f"{LATENCY_KEY}.p50": f"{p50:.1f}", f"{LATENCY_KEY}.p95": f"{p95:.1f}",
                f"{LATENCY_KEY}.chunks": str(len(self.observation_to_setpoint_s))}


# Diagnostics key of the end-to-end latency: a chunk's observation stamp to its first servo setpoint.
LATENCY_KEY = "observation_to_setpoint_ms"

# The driver node's parameters: the fields of these configs (no name appears twice), in the order
# ArmRuntime takes them.
DRIVER_CONFIG_CLASSES = (ArmDriverConfig, SafetyConfig, RetargetConfig, ServoSettings, ControllerConfig)


def driver_configs(values: Mapping[str, Any]) -> tuple:
    """Split flat parameters (a YAML file's, the node's) into the validated DRIVER_CONFIG_CLASSES."""
    unknown = set(values) - {name for cls in DRIVER_CONFIG_CLASSES for name in config_fields(cls)}
    require(not unknown, sorted(unknown)[0] if unknown else "", "is not a ur3_driver parameter")
    return tuple(from_mapping(cls, {k: v for k, v in values.items() if k in config_fields(cls)})
                 for cls in DRIVER_CONFIG_CLASSES)


def make_backend(config: ArmDriverConfig) -> ArmBackend:
    period_s = 1.0 / config.control_rate_hz
    if config.backend is ArmBackendKind.SIM:
        return SimulatedArm(period_s, np.asarray(config.initial_joint_positions, dtype=np.float64))
    from fedvla.robot.ur_rtde_arm import UrRtdeArm, UrRtdeConfig

    return UrRtdeArm(UrRtdeConfig(robot_ip=config.robot_ip, control_frequency_hz=config.control_rate_hz,
                                  gripper_output=config.gripper_output,
                                  watchdog_frequency_hz=config.watchdog_frequency_hz))


class ArmRuntime:
    """The controller and its real-time loop. Thread-safe: the loop and the callers share one lock."""

    def __init__(self, driver: ArmDriverConfig, safety: SafetyConfig | None = None,
                 retarget: RetargetConfig | None = None, servo: ServoSettings | None = None,
                 controller: ControllerConfig | None = None, backend: ArmBackend | None = None) -> None:
        self.config = driver
        controller = controller or ControllerConfig()
        if bool(driver.operator_heartbeat_topic) != (controller.operator_heartbeat_timeout_s > 0):
            raise ConfigError("operator_heartbeat_topic", "an operator heartbeat needs both its topic and "
                              f"operator_heartbeat_timeout_s (got {driver.operator_heartbeat_topic!r} and "
                              f"{controller.operator_heartbeat_timeout_s:g} s)", "both set, or neither")
        self.kinematics = ArmKinematics(driver.urdf_path or None)
        self.backend = backend or make_backend(driver)
        guard = SafetyGuard(self.kinematics, safety or SafetyConfig())
        ik = IkSolver(self.kinematics, IkConfig(restarts=driver.ik_restarts))
        self.controller = ArmController(self.backend, guard, ik, Retargeter(retarget or RetargetConfig()),
                                        controller, servo or ServoSettings())
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._recovery: concurrent.futures.Future | None = None  # a recover() for the loop to run
        self._thread: threading.Thread | None = None
        self._cycles = self._overruns = 0

    # The loop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.config.realtime_priority > 0:
            # The loop needs the GIL too: the thread that calls start() (a node's executor) must not
            # sit descheduled holding it while the loop waits, so it runs at a raised priority as well.
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CALLER_NICENESS)
        self._thread = threading.Thread(target=self._loop, name="arm-control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self._claim_realtime_priority()
        period = self.backend.period_s
        last = time.monotonic()
        slowest = ("", 0.0)  # the slowest part of the previous cycle, to name a stall's cause
        run_queue = RunQueueClock()
        queued = run_queue.seconds()
        while not self._halt.is_set():
            started = time.monotonic()
            queued, queued_before = run_queue.seconds(), queued
            if started - last > STALL_PERIODS * period:  # the robot's watchdog may already have stopped it
                log.warning("control loop stalled for %.0f ms (slowest part of the cycle before: %s, %.0f ms; %s)",
                            (started - last) * 1e3, slowest[0], slowest[1] * 1e3,
                            run_queue.describe(queued - queued_before))
            last = started
            start = self.backend.init_period()
            with self._lock:
                locked = time.monotonic()
                self._run_recovery()
                recovered = time.monotonic()
                self.controller.step(recovered)
            stepped = time.monotonic()
            self._cycles += 1
            if stepped - started > period:
                self._overruns += 1
            self.backend.wait_period(start)
            slowest = max((("waiting for the lock", locked - started), ("a recovery (restarting the robot's program)",
                                                                         recovered - locked),
                           ("the controller step", stepped - recovered),
                           ("waiting for the period", time.monotonic() - stepped)), key=lambda part: part[1])

    def _claim_realtime_priority(self) -> None:
        priority = self.config.realtime_priority
        if priority <= 0:
            return
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(priority))
            log.info("control loop runs with real-time priority %d (SCHED_FIFO)", priority)
        except (AttributeError, OSError) as err:
            log.warning("control loop at normal priority: real-time priority %d refused (%s); grant rtprio "
                        "(/etc/security/limits.conf) or set realtime_priority 0", priority, err)

    def close(self) -> None:
        """Stop the loop, brake, and release the arm (ur_rtde: servoStop, end the control script)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._lock:
            try:
                if self.backend.is_connected:
                    self.controller.request_stop()
            except BackendError as err:
                log.warning("stopping the arm on shutdown failed: %s", err)
            self.backend.close()

    # Calls from the node ---------------------------------------------------------------------------
    def submit_chunk(self, actions: np.ndarray, step_period_s: float, observed_unix_s: float | None = None):
        """``observed_unix_s``: the stamp (system clock) of the observation the chunk answers, for
        the end-to-end latency (:attr:`ArmSnapshot.observation_to_setpoint_s`)."""
        received = time.monotonic()
        observed = None if not observed_unix_s else received - (time.time() - observed_unix_s)
        with self._lock:
            start = self.controller.planning_start(observed)
        plan = self.controller.plan_chunk(actions, step_period_s, start)  # (IK: outside the loop's lock)
        with self._lock:
            return self.controller.take_plan(plan, received, observed)

    def set_object_pose(self, object_pose: np.ndarray | None, frame: str = "") -> None:
        """The object's 4x4 pose in ``frame`` (any link of the URDF, e.g. the camera's optical frame
        of a scene parse; empty: the base frame), used by object-frame actions."""
        with self._lock:
            if object_pose is None:
                self.controller.object_in_base = None
                return
            if np.shape(object_pose) != (4, 4) or not np.all(np.isfinite(object_pose)):
                raise ValueError("object pose is not a finite 4x4 transform")
            self.controller.object_in_base = self._frame_in_base(frame, "object_pose_topic") @ object_pose

    def set_object_position(self, position: np.ndarray, frame: str = "") -> None:
        """The object's position in ``frame`` (as :meth:`set_object_pose`); its axes are taken
        parallel to the base frame: a located point says nothing about the object's orientation."""
        if np.shape(position) != (3,) or not np.all(np.isfinite(position)):
            raise ValueError(f"object position {position} is not three finite coordinates")
        with self._lock:
            pose = np.eye(4)
            pose[:3, 3] = (self._frame_in_base(frame, "object_position_topic") @ np.append(position, 1.0))[:3]
            self.controller.object_in_base = pose

    def _frame_in_base(self, frame: str, parameter: str) -> np.ndarray:
        """Pose of URDF link ``frame`` in the base frame at the arm's measured joints (it may be on
        the arm, e.g. a wrist camera)."""
        if not frame or frame == self.kinematics.base_frame:
            return np.eye(4)
        q = self.controller.measured_q
        poses = self.kinematics.link_poses(q if q is not None else np.asarray(self.config.initial_joint_positions))
        if frame not in poses:
            raise ConfigError(parameter, f"frame {frame!r} is not a link of {self.kinematics.urdf_path.name}",
                              f"{self.kinematics.base_frame} or a link such as camera_color_optical_frame")
        return poses[frame]

    def enable(self) -> str:
        """Start executing chunks (the driver's ~/enable); ExecutionRefused says why not."""
        with self._lock:
            return self.controller.enable(time.monotonic())

    def disable(self, why: str = "disabled by the operator") -> str:
        with self._lock:
            return self.controller.disable(why)

    def operator_heartbeat(self, alive: bool) -> None:
        with self._lock:
            self.controller.operator_heartbeat(time.monotonic(), alive)

    def recover(self, timeout_s: float = 60.0) -> str:
        """Leave FAULT (:meth:`ArmController.recover`). While the loop runs, the loop's own thread
        does it and steps on at once: ur_rtde restarts the control script holding the GIL for
        0.4-0.8 s and then arms the RTDE watchdog, so from another thread the loop came back to
        it too late, and the watchdog stopped the restarted script (17 times in 230 twin episodes)."""
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                return self.controller.recover()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._recovery is not None:
                raise BackendError("a recovery is already under way")
            self._recovery = future
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # (if the loop has not started it)
            raise BackendError(f"the recovery did not finish within {timeout_s:g} s (the control loop is "
                               "stuck: see the driver's log)") from None

    def _run_recovery(self) -> None:
        future, self._recovery = self._recovery, None
        if future is None or not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self.controller.recover())
        except Exception as err:  # handed to the caller (BackendError: why the robot did not resume)
            future.set_exception(err)

    def stop(self) -> None:
        with self._lock:
            self.controller.request_stop()

    def source_lost(self, why: str) -> None:
        """The process sending chunks is gone: brake now (see :meth:`ArmController.source_lost`)."""
        with self._lock:
            self.controller.source_lost(why)

    def joint_state(self, snapshot: ArmSnapshot) -> tuple[list[str], list[float]]:
        return joint_state_of(self.kinematics, snapshot)

    def snapshot(self) -> ArmSnapshot:
        with self._lock:
            c = self.controller
            trajectory = c.trajectory
            return ArmSnapshot(mode=c.mode, fault_reason=c.fault_reason,
                               measured_q=None if c.measured_q is None else c.measured_q.copy(),
                               gripper_closed=c.gripper_closed,
                               planned_q=None if trajectory is None else trajectory.waypoints.copy(),
                               refused=dict(c.refused), refused_executing=dict(c.refused_executing),
                               cycles=self._cycles, overruns=self._overruns, limit_brakes=c.limit_brakes,
                               chunk_merges=c.chunk_merges, dry_holds=c.dry_holds, late_actions=c.late_actions,
                               setpoint_jerk_rms=c.smoothness.rms_jerk,
                               largest_reference_jump=c.smoothness.largest_reference_jump,
                               queue_s=0.0 if trajectory is None else max(0.0, trajectory.end_s - time.monotonic()),
                               enabled=c.enabled, observation_to_setpoint_s=tuple(c.observation_to_setpoint_s))


def joint_state_of(kinematics: ArmKinematics, snapshot: ArmSnapshot) -> tuple[list[str], list[float]]:
    """Joint names and positions to publish: the arm's measured joints, then the gripper's finger
    at the end of its travel it was commanded to."""
    lower, upper = kinematics.gripper_limits
    finger = lower if snapshot.gripper_closed else upper
    return [*kinematics.joint_names, GRIPPER_JOINT], [*map(float, snapshot.measured_q), finger]
