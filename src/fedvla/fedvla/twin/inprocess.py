"""The twin in one process, in simulated time, without ROS or sockets: the driver's own
:class:`~fedvla.robot.runtime.ArmRuntime` (same controller, IK, safety guard and retargeting, from
the same parameter files) on :class:`PlantArm`, the twin's physics as an arm backend. It runs
trials as fast as the machine allows: for the expert's own success rate, and for the cross-check of
a checkpoint's graph evaluation (same seeds, no middleware).

One trial: reset (task, seed) → every control step (``1 / rate_hz``) the agent sees an
:class:`Observation` and returns an action chunk, which the controller executes at the
controller's rate (125 Hz) while the physics follows → until the task's success check holds (and
``settle_steps`` more pass), the agent is done, or ``max_steps``.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np

from fedvla.robot.backends import ArmBackend, ArmState, BackendError, SafetyStatus, ServoSettings
from fedvla.robot.controller import ArmMode
from fedvla.robot.retarget import ActionSpace
from fedvla.robot.runtime import ArmRuntime
from fedvla.twin.workcell import Workcell


class PlantArm(ArmBackend):
    """The twin's physics behind the arm backend interface, stepped by :meth:`advance` (simulated
    time). A contact force over the plant's limit is a protective stop, as over RTDE."""

    def __init__(self, workcell: Workcell, period_s: float = 1 / 125) -> None:
        self.workcell, self.period_s = workcell, period_s
        self._connected = False
        self.safety, self.program_running = SafetyStatus.NORMAL, True
        self.gripper_closed = False
        self.target: np.ndarray | None = None
        self.protective_stops: list[str] = []

    @property
    def plant(self):
        return self.workcell.plant

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def read(self) -> ArmState:
        data = self.plant.data
        return ArmState(q=data.qpos[self.plant.arm_qpos].copy(), qd=data.qvel[self.plant.arm_qvel].copy(),
                        safety=self.safety, gripper_closed=self.gripper_closed, program_running=self.program_running)

    def servo_j(self, q: np.ndarray, settings: ServoSettings) -> None:
        if self.safety is not SafetyStatus.NORMAL or not self.program_running:
            raise BackendError(f"twin: servoJ refused ({self.safety.value})")
        self.target = np.asarray(q, dtype=float).copy()

    def servo_stop(self, deceleration: float) -> None:
        self.target = None

    def set_gripper(self, closed: bool) -> None:
        self.gripper_closed = bool(closed)

    def resume(self) -> None:
        self.safety, self.program_running = SafetyStatus.NORMAL, True

    def reset(self) -> None:
        """After :meth:`Workcell.reset`: the arm at rest at home, the gripper open, and the program
        stopped, as the reset stops it on the emulated controller (the driver recovers from it)."""
        self.target, self.gripper_closed = None, False
        self.program_running = False

    def advance(self) -> None:
        """One controller period of physics (the arm holds where it is without a setpoint)."""
        plant = self.plant
        hold = self.target if self.target is not None else plant.data.ctrl[plant.arm_actuators].copy()
        step = plant.step(hold, self.gripper_closed, self.period_s)
        if step.contact_force_n > plant.config.protective_stop_force_n and self.safety is SafetyStatus.NORMAL:
            self.protective_stops.append(f"{step.contact_force_n:.0f} N contact, {step.contact}")
            self.safety, self.program_running, self.target = SafetyStatus.PROTECTIVE_STOP, False, None


@dataclasses.dataclass(frozen=True)
class Observation:
    step: int
    time_s: float
    joint_positions: np.ndarray  # (6,) rad
    tool_position: np.ndarray  # (3,) m, base_link
    gripper_closed: bool
    objects: dict[str, np.ndarray]  # the task's bodies -> position (m, base_link): ground truth
    instruction: str


# An agent: observation -> (actions (horizon, action_dim), step_period_s), or None when it is done.
Agent = Callable[[Observation], "tuple[np.ndarray, float] | None"]


@dataclasses.dataclass(frozen=True)
class TrialResult:
    task: str
    seed: int
    success: bool
    steps: int
    time_to_success_s: float | None
    refused_chunks: int
    refused_reasons: dict[str, int]
    protective_stops: int
    detail: str
    fault: str = ""  # why the arm stopped, if it did


def twin_driver_configs(action_space: ActionSpace, config_dir=None) -> tuple:
    """The driver's configs (:data:`fedvla.robot.runtime.DRIVER_CONFIG_CLASSES`) exactly as the twin
    profile starts ``ur3_driver`` (its parameter files: limits, servo gains, the executed steps of
    each chunk), so that in-process trials meet the graph's driver; executing from the start (the
    evaluator's ``~/enable``). ConfigError if that driver cannot execute ``action_space``."""
    from fedvla.config import ConfigError
    from fedvla.graph import Graph, find_config_dir
    from fedvla.robot.retarget import execution_problem
    from fedvla.robot.runtime import driver_configs

    node = Graph.load(config_dir or find_config_dir()).resolve_node("twin", "ur3_driver")
    driver, safety, retarget, servo, controller = driver_configs(node.parameters())
    problem = execution_problem(action_space, retarget)
    if problem is not None:
        raise ConfigError("action_space", f"the twin's driver cannot execute {action_space.describe()}: {problem}",
                          "a policy trained on twin demonstrations")
    return (dataclasses.replace(driver, robot_ip="in-process", checkpoint_path=""), safety, retarget, servo,
            dataclasses.replace(controller, execute_on_start=True))


class InProcessTwin:
    """A :class:`Workcell` (not serving sockets) and the driver's runtime on it."""

    def __init__(self, workcell: Workcell, action_space: ActionSpace) -> None:
        self.workcell = workcell
        self.arm = PlantArm(workcell)
        driver, safety, retarget, servo, controller = twin_driver_configs(action_space)
        self.runtime = ArmRuntime(driver, safety, retarget, servo, controller, backend=self.arm)
        self.controller = self.runtime.controller
        self.kinematics = self.runtime.kinematics
        self.time_s = 0.0

    def run_trial(self, task: str, seed: int, agent_for: Callable[[Workcell], Agent], rate_hz: float,
                  max_steps: int, settle_steps: int = 3) -> TrialResult:
        workcell = self.workcell
        episode = workcell.reset(task, seed)
        self.arm.reset()
        controller = self.controller
        controller.step(self.time_s)  # (re)connect, and see the stopped program
        if controller.mode is ArmMode.FAULT:
            controller.recover()  # what the evaluator asks the driver for after each reset
        controller.step(self.time_s)
        agent = agent_for(workcell)
        refused_before = Counter(controller.refused)
        stops_before = len(self.arm.protective_stops)
        ticks_per_step = max(1, int(round(1.0 / (rate_hz * self.arm.period_s))))
        start_s, success_at, steps, after = self.time_s, None, 0, 0
        for step in range(max_steps):
            q = self.arm.read().q
            observation = Observation(step=step, time_s=self.time_s - start_s, joint_positions=q,
                                      tool_position=self.kinematics.fk(q).translation.copy(),
                                      gripper_closed=self.arm.gripper_closed, objects=workcell.object_positions(),
                                      instruction=episode.instruction)
            decision = agent(observation)
            if decision is None:
                break
            steps += 1  # control steps executed
            actions, step_period_s = decision
            controller.submit_chunk(np.asarray(actions, dtype=np.float64), step_period_s, self.time_s)
            for _ in range(ticks_per_step):
                controller.step(self.time_s)
                self.arm.advance()
                self.time_s += self.arm.period_s
            if success_at is None and workcell.status().success:
                success_at = self.time_s - start_s
            if success_at is not None:
                after += 1
                if after > settle_steps:
                    break
        status = workcell.status()
        return TrialResult(task=task, seed=seed, success=status.success, steps=steps,
                           time_to_success_s=success_at if status.success else None,
                           refused_chunks=sum((controller.refused - refused_before).values()),
                           refused_reasons=dict(controller.refused - refused_before),
                           protective_stops=len(self.arm.protective_stops) - stops_before, detail=status.detail,
                           fault="; ".join([*self.arm.protective_stops[stops_before:],
                                            *([controller.fault_reason] if controller.mode is ArmMode.FAULT else [])]))
