"""MuJoCo physics as the emulated controller's plant: each controller cycle the servo targets go to
the joint position actuators, the gripper actuator follows the digital output wired to it, the
physics advances one controller period, and the measured joints go back into the controller's
state. Contact forces on the arm above a threshold are reported, and the controller turns them into
a protective stop, as a UR's force limit does."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from fedvla.config import require_positive
from fedvla.robot.kinematics import ARM_JOINTS, GRIPPER_JOINT
from fedvla.twin.scene import ARM_BODIES


@dataclasses.dataclass(frozen=True)
class PlantStep:
    q: np.ndarray  # (6,) rad, measured
    qd: np.ndarray  # (6,) rad/s
    contact_force_n: float  # the largest total normal force on the arm from what it may not push
    contact: str  # "link <-> what" of that contact, "" if none


@dataclasses.dataclass(kw_only=True)
class PlantConfig:
    # UR3's default protective-stop force limit is 150 N at the tool; the twin stops a little earlier
    # because its rigid contacts spike where a real arm's joints give.
    protective_stop_force_n: float = 120.0

    def __post_init__(self) -> None:
        require_positive(self.protective_stop_force_n, "protective_stop_force_n")


class MujocoPlant:
    """One MuJoCo model and its state, stepped by the controller and read by the renderer (both under
    :attr:`lock`). ``graspable``: bodies the fingers may squeeze without that counting as a collision."""

    def __init__(self, model, graspable: set[str], config: PlantConfig | None = None) -> None:
        import mujoco

        self._mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.config = config or PlantConfig()
        self.lock = threading.RLock()
        self.arm_qpos = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self.arm_qvel = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self.arm_actuators = np.array([model.actuator(j).id for j in ARM_JOINTS])
        self.gripper_actuator = model.actuator("gripper").id
        self.gripper_open = float(model.jnt_range[model.joint(GRIPPER_JOINT).id][1])
        arm_bodies = {model.body(b).id for b in ARM_BODIES}
        self._arm_body = np.zeros(model.nbody, dtype=bool)
        self._arm_body[list(arm_bodies)] = True
        fingers = {model.body(b).id for b in ("gripper_left_finger", "gripper_right_finger")}
        graspable_ids = {model.body(b).id for b in graspable}
        # geom pairs that never count: a finger on a graspable object (that is a grasp)
        self._finger_body = np.zeros(model.nbody, dtype=bool)
        self._finger_body[list(fingers)] = True
        self._graspable_body = np.zeros(model.nbody, dtype=bool)
        self._graspable_body[list(graspable_ids)] = True
        self._force = np.zeros(6)
        self.nominal_light_pos = model.light_pos.copy()
        self.nominal_light_diffuse = model.light_diffuse.copy()
        self.substeps = 1
        self.gripper_closed = False

    def set_arm(self, q, gripper_closed: bool = False) -> None:
        """Place the arm at ``q`` at rest, the gripper open or closed."""
        with self.lock:
            q = np.asarray(q, dtype=float)
            self.data.qpos[self.arm_qpos] = q
            self.data.qvel[self.arm_qvel] = 0.0
            self.data.ctrl[self.arm_actuators] = q
            self.gripper_closed = gripper_closed
            self.data.ctrl[self.gripper_actuator] = 0.0 if gripper_closed else self.gripper_open
            self._mujoco.mj_forward(self.model, self.data)

    def step(self, q_target, gripper_closed: bool, period_s: float) -> PlantStep:
        """Track ``q_target`` for one controller period."""
        mujoco = self._mujoco
        with self.lock:
            self.data.ctrl[self.arm_actuators] = q_target
            self.gripper_closed = gripper_closed
            self.data.ctrl[self.gripper_actuator] = 0.0 if gripper_closed else self.gripper_open
            steps = max(1, int(round(period_s / self.model.opt.timestep)))
            worst, where = 0.0, ""
            for _ in range(steps):
                mujoco.mj_step(self.model, self.data)
                force, contact = self._arm_contact_force()
                if force > worst:
                    worst, where = force, contact
            return PlantStep(q=self.data.qpos[self.arm_qpos].copy(), qd=self.data.qvel[self.arm_qvel].copy(),
                             contact_force_n=worst, contact=where)

    def _arm_contact_force(self) -> tuple[float, str]:
        """The total normal force on the arm from what it may not push (a box on the table touches
        at several points: their sum is what the joints feel), and the pair that pushes hardest."""
        model, data = self.model, self.data
        total, worst, where = 0.0, 0.0, ""
        for i in range(data.ncon):
            contact = data.contact[i]
            b1, b2 = model.geom_bodyid[contact.geom1], model.geom_bodyid[contact.geom2]
            if not (self._arm_body[b1] or self._arm_body[b2]):
                continue
            if (self._finger_body[b1] and self._graspable_body[b2]) or (self._finger_body[b2] and self._graspable_body[b1]):
                continue
            if self._finger_body[b1] and self._finger_body[b2]:
                continue  # the fingers closing on nothing
            self._mujoco.mj_contactForce(model, data, i, self._force)
            force = abs(self._force[0])
            total += force
            if force > worst:
                worst, where = force, f"{model.body(b1).name} <-> {model.body(b2).name}"
        return total, where
