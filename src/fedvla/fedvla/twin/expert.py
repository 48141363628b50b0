"""The expert demonstrator of the twin: the paper's "expert teaching method" (§4.2). Per task, a
list of keypoints - tool positions relative to the objects' poses, with the gripper open or
closed - that the tool visits in order. Each control step the expert emits one action in the
dataset's action space (end-effector deltas in the base frame, :data:`EXPERT_ACTION_SPACE`): a
step towards the current keypoint, at most :attr:`ExpertConfig.max_step_units` per axis. The driver
turns the actions into arm poses by IK (Pinocchio), exactly as it does for a learned policy, so a
demonstration is recorded through the same graph that later runs the policy.

Keypoints are re-read from the objects' current poses every step (an object that slides while
the arm approaches is followed). Where an object's pose comes from: the twin's ground truth (its
task status), as a teacher measuring the scene would.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from fedvla.config import require_positive
from fedvla.robot.kinematics import ARM_JOINTS, GRIPPER_JOINT
from fedvla.robot.retarget import ActionFrame, ActionKind, ActionSpace
from fedvla.twin.tasks import CleanUp, Episode, OpenDrawer, SortingPills, TrashCollection, task_named

# 2.5 cm per unit: a pick-and-place fits the paper's 20-80 steps at 10 Hz (up to 25 cm/s).
EXPERT_ACTION_SPACE = ActionSpace(kind=ActionKind.EE_DELTA, frame=ActionFrame.BASE, action_dim=4,
                                  position_scale_m=0.025, rotation_scale_rad=0.05)
CONTROL_RATE_HZ = 10.0
# The twin datasets' proprio: the joint states the driver publishes (the arm, then the gripper finger).
PROPRIO_JOINTS = (*ARM_JOINTS, GRIPPER_JOINT)

Objects = Mapping[str, np.ndarray]  # body name -> position (m, base_link)


@dataclasses.dataclass(frozen=True)
class Keypoint:
    """Go to ``where(objects)`` with the gripper ``closed``; ``settle`` steps held there after."""

    where: Callable[[Objects], np.ndarray]
    closed: bool
    settle: int = 0
    tolerance_m: float = 0.006
    speed: float = 1.0  # fraction of the expert's longest step (slower where precision or load matter)


def _at(body: str, offset) -> Callable[[Objects], np.ndarray]:
    offset = np.asarray(offset, dtype=float)
    return lambda objects: np.asarray(objects[body], dtype=float) + offset


def _pick(body: str, grasp_z: float, lift_z: float) -> list[Keypoint]:
    """Above the object, down to the grasp height, close, lift."""
    def level(z):
        return lambda objects: np.array([objects[body][0], objects[body][1], z])

    return [Keypoint(level(grasp_z + 0.06), False, tolerance_m=0.015),
            Keypoint(level(grasp_z), False, tolerance_m=0.004, speed=0.6),
            Keypoint(level(grasp_z), True, settle=3), Keypoint(level(lift_z), True, tolerance_m=0.02)]


def _place(body: str, carry_z: float, release_z: float, offset=(0.0, 0.0)) -> list[Keypoint]:
    def level(z):
        return lambda objects: np.array([objects[body][0] + offset[0], objects[body][1] + offset[1], z])

    # (the tool comes to rest before the gripper opens: a moving hand throws what it lets go)
    return [Keypoint(level(carry_z), True, tolerance_m=0.015, speed=0.8), Keypoint(level(release_z), True, settle=2),
            Keypoint(level(release_z), False, settle=3), Keypoint(level(carry_z), False)]


def _frozen(keypoint: Keypoint, objects: Objects) -> Keypoint:
    """The keypoint at the objects' poses now (for motions that move the object they refer to)."""
    where = keypoint.where(objects)
    return dataclasses.replace(keypoint, where=lambda _: where)


def keypoints(episode: Episode, objects: Objects) -> list[Keypoint]:
    """The expert's keypoints for ``episode`` (objects: their initial poses, for motions whose
    target moves with what the arm pushes)."""
    task = task_named(episode.task)
    if isinstance(task, CleanUp):
        # Pick the sponge, put it down beside the trash, sweep it across the plate and off.
        sweep_z = task.PLATE_TOP + task.SPONGE_HALF[2] + 0.006
        trash = np.asarray(objects["trash"], dtype=float)
        start = np.array([trash[0], trash[1] + 0.065, 0.08])
        return [*_pick("sponge", 0.03, 0.08),
                Keypoint(lambda _: start, True), Keypoint(lambda _: start * [1, 1, 0] + [0, 0, sweep_z], True),
                Keypoint(lambda _: np.array([trash[0], trash[1] - 0.13, sweep_z]), True),
                Keypoint(lambda _: np.array([trash[0], trash[1] - 0.13, 0.1]), True)]
    if isinstance(task, TrashCollection):
        return [*_pick("paper", 0.025, 0.14), *_place("bin", 0.14, 0.14)]
    if isinstance(task, OpenDrawer):
        handle = np.asarray(objects["cabinet"], dtype=float) + [-task.HALF[0] - task.HANDLE_OUT, 0.0, 0.0]
        grasp = handle + [0, 0, task.HANDLE_Z - 0.007]
        return [Keypoint(lambda _: grasp + [0, 0, 0.09], False), Keypoint(lambda _: grasp, False, tolerance_m=0.004),
                Keypoint(lambda _: grasp, True, settle=4),
                Keypoint(lambda _: grasp - [0.12, 0, 0], True, speed=0.5),
                Keypoint(lambda _: grasp - [0.12, 0, 0], False, settle=3),
                Keypoint(lambda _: grasp - [0.12, 0, -0.08], False)]
    if isinstance(task, SortingPills):
        tray = f"{episode.target_colour}_tray"
        return [*_pick("bottle", 0.045, 0.11), *_place(tray, 0.11, 0.08)]
    raise ValueError(f"no expert for task {episode.task!r}")


@dataclasses.dataclass(kw_only=True)
class ExpertConfig:
    # Longest tool step (in units of the action space's scale): 2.5 cm per 0.1 s keeps every joint
    # under the driver's speed limit (half the URDF's) across the workspace.
    max_step_units: float = 1.0
    max_steps: int = 80  # the paper's longest demonstration

    def __post_init__(self) -> None:
        require_positive(self.max_step_units, "max_step_units")
        require_positive(self.max_steps, "max_steps")


class Expert:
    """One demonstration: :meth:`act` per control step until :attr:`done`."""

    def __init__(self, episode: Episode, objects: Objects, config: ExpertConfig | None = None,
                 space: ActionSpace = EXPERT_ACTION_SPACE) -> None:
        self.episode, self.config, self.space = episode, config or ExpertConfig(), space
        self.plan = keypoints(episode, objects)
        self.index, self.held, self.steps = 0, 0, 0
        self._last_tool: np.ndarray | None = None
        self._slow = 1.0

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan) or self.steps >= self.config.max_steps

    def act(self, tool_position: np.ndarray, objects: Objects) -> np.ndarray:
        """The action (dx, dy, dz, gripper) for this step; the gripper value is +1 closed, -1 open.

        Each step aims from the measured tool: the driver applies a delta to where the arm is
        (its setpoint), not to where earlier actions meant to send it."""
        self.steps += 1
        tool = np.asarray(tool_position, dtype=float)
        while self.index < len(self.plan):
            keypoint = self.plan[self.index]
            if np.linalg.norm(keypoint.where(objects) - tool) > keypoint.tolerance_m:
                break
            if self.held < keypoint.settle:
                self.held += 1
                return self._action(np.zeros(3), keypoint.closed)
            self.index, self.held = self.index + 1, 0
        if self.index >= len(self.plan):
            return self._action(np.zeros(3), self.plan[-1].closed)
        keypoint = self.plan[self.index]
        # No progress since the last step: the driver refused the step (too fast for a joint here).
        # Halve the step until the arm moves again.
        if self._last_tool is not None and np.linalg.norm(tool - self._last_tool) < 0.002:
            self._slow = max(self._slow * 0.5, 0.125)
        else:
            self._slow = 1.0
        self._last_tool = tool
        units = (keypoint.where(objects) - tool) / self.space.position_scale_m
        length = float(np.linalg.norm(units))
        longest = self.config.max_step_units * keypoint.speed * self._slow
        if length > longest:
            units *= longest / length  # straight towards the keypoint
        return self._action(units, keypoint.closed)

    @staticmethod
    def _action(units: np.ndarray, closed: bool) -> np.ndarray:
        return np.array([*units, 1.0 if closed else -1.0], dtype=np.float32)


def expert_agent(workcell, config: ExpertConfig | None = None):
    """The expert as an in-process agent (:mod:`fedvla.twin.inprocess`): horizon-1 chunks at
    :data:`CONTROL_RATE_HZ`, planned on the objects' poses at the start of the episode."""
    expert = Expert(workcell.episode, workcell.object_positions(), config)

    def act(observation):
        if expert.done:
            return None
        return expert.act(observation.tool_position, observation.objects)[None], 1.0 / CONTROL_RATE_HZ

    return act
