"""The workcell twin as one object, free of ROS: the MuJoCo scene of a task, the UR controller
emulation serving RTDE, the dashboard and the script port on loopback with that scene as its plant,
and the D435i's colour and aligned depth images (:mod:`fedvla.twin.camera`).

The controller runs as the UR3 of the paper does: a CB3 controller at 125 Hz (``ur_type:=ur3``).
Physics advances one controller period per controller cycle, in the controller's thread, so the
twin runs in real time while the machine keeps up, and slower (never in bursts) when it does not.
``workcell_sim`` runs this object in a process of its own (:mod:`fedvla.twin.process`).

:meth:`Workcell.reset` is the operator resetting the cell between trials: a new layout from (task,
seed), the arm back home with the gripper open. Like an operator, it first stops the running
program, so a connected driver reports the stop and resynchronises on the measured joints when it
recovers (the driver's ``~/recover``), instead of steering back to where the arm was.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fedvla.camera.base import Frame
from fedvla.config import ConfigError, require, require_positive
from fedvla.robot.kinematics import HOME_Q
from fedvla.twin.plant import MujocoPlant, PlantConfig
from fedvla.twin.camera import SceneState, TwinCamera, scene_state
from fedvla.twin.scene import SceneConfig
from fedvla.twin.tasks import Episode, TaskStatus, WorkcellTask, compile_task_model, task_named
from fedvla.twin.ur_controller import CB3, E_SERIES, ControllerCore

@dataclasses.dataclass(kw_only=True)
class WorkcellConfig:
    """The twin's robot side. Field names are also ``workcell_sim`` parameter names."""

    task: str = "clean_up"
    seed: int = 0
    host: str = "127.0.0.1"  # where the controller listens (ur_rtde's ports are fixed: 30004, 29999, 30003)
    ur_type: str = "ur3"  # ur3: CB3 at 125 Hz, as in the paper; ur3e: e-series at 500 Hz
    protective_stop_force_n: float = PlantConfig.protective_stop_force_n
    randomise_lighting: bool = True
    # On shutdown the controller keeps serving its clients this long, so a driver stopping with
    # everything else (one Ctrl-C) still brakes and ends its script, as on a robot that stays on.
    client_grace_s: float = 3.0

    def __post_init__(self) -> None:
        task_named(self.task)
        require(self.client_grace_s >= 0, "client_grace_s", f"{self.client_grace_s} is negative", "seconds, e.g. 3")
        if self.ur_type not in ("ur3", "ur3e"):
            raise ConfigError("ur_type", f"unknown UR type {self.ur_type!r}", "ur3 or ur3e")
        require_positive(self.protective_stop_force_n, "protective_stop_force_n")


class Workcell:
    def __init__(self, config: WorkcellConfig | None = None, scene: SceneConfig | None = None) -> None:
        self.config = config or WorkcellConfig()
        self.scene = scene or SceneConfig()
        self.task = task_named(self.config.task)
        self.plant = self._plant_for(self.task)
        self.controller = ControllerCore(
            host=self.config.host, urcontrol_version=CB3 if self.config.ur_type == "ur3" else E_SERIES,
            robot_model="UR3" if self.config.ur_type == "ur3" else "UR3e", initial_q=HOME_Q, plant=self.plant)
        self.episode = self._apply(self.task.episode(self.config.seed))
        self._camera: TwinCamera | None = None

    # ---- life cycle ----
    def start(self) -> Workcell:
        """Serve the controller interfaces (OSError when a port is taken) and run the physics."""
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def clients(self) -> list[tuple[str, tuple[str, int]]]:
        """The controller's connected clients: (interface, peer address)."""
        return self.controller.connections()

    # ---- episodes ----
    def reset(self, task: str | None = None, seed: int | None = None) -> Episode:
        """A new episode: ``task`` (default: the current one) laid out from ``seed``."""
        new_task = task_named(task) if task else self.task
        episode = new_task.episode(self.config.seed if seed is None else int(seed))
        with self.controller.lock:
            self.controller.stop_program("the cell is being reset")
            if new_task is not self.task:
                self.task = new_task
                self.plant = self._plant_for(new_task)
                self.controller.plant = self.plant
            self.episode = self._apply(episode)
        return self.episode

    def status(self) -> TaskStatus:
        with self.plant.lock:
            return self.task.status(self.plant.model, self.plant.data, self.episode)

    def object_positions(self) -> dict[str, np.ndarray]:
        """The task's bodies -> their positions now (m, base_link): the twin's ground truth."""
        with self.plant.lock:
            return {body: self.plant.data.body(body).xpos.copy() for body in self.task.labels}

    @property
    def sim_time_s(self) -> float:
        return float(self.plant.data.time)

    def _plant_for(self, task: WorkcellTask) -> MujocoPlant:
        model = compile_task_model(task, self.scene)
        # What moves (a body with a joint, and the bodies it carries) may be squeezed by the fingers.
        moving = {model.body(b).id for b in task.labels if model.body(b).jntnum[0]}
        graspable = set()
        for body in range(1, model.nbody):
            chain = body
            while chain and chain not in moving:
                chain = model.body_parentid[chain]
            if chain:
                graspable.add(model.body(body).name)
        return MujocoPlant(model, graspable, PlantConfig(protective_stop_force_n=self.config.protective_stop_force_n))

    def _apply(self, episode: Episode) -> Episode:
        import mujoco

        plant, model = self.plant, self.plant.model
        rng = np.random.default_rng([episode.seed, 7])
        with plant.lock:
            mujoco.mj_resetData(model, plant.data)
            for body_name, position in episode.positions.items():
                body = model.body(body_name)
                if body.jntnum[0] and model.jnt_type[body.jntadr[0]] == mujoco.mjtJoint.mjJNT_FREE:
                    address = model.jnt_qposadr[body.jntadr[0]]
                    plant.data.qpos[address:address + 3] = position
                    plant.data.qpos[address + 3:address + 7] = (1, 0, 0, 0)
                else:
                    model.body_pos[body.id] = position
            if self.config.randomise_lighting:  # brightness, tint and where the lights hang
                model.light_diffuse[:] = np.clip(plant.nominal_light_diffuse * rng.uniform(0.6, 1.3, (model.nlight, 1))
                                                 + rng.uniform(-0.05, 0.05, (model.nlight, 3)), 0, 1)
                model.light_pos[:, :2] = plant.nominal_light_pos[:, :2] + rng.uniform(-0.15, 0.15, (model.nlight, 2))
            mujoco.mj_forward(model, plant.data)
        self.controller.state.update(actual_digital_output_bits=0)  # the gripper opens
        self.controller.set_joint_positions(HOME_Q)
        return episode

    # ---- the camera ----
    def scene_state(self) -> SceneState:
        """A snapshot of the physics for :class:`~fedvla.twin.camera.TwinCamera`."""
        with self.plant.lock:
            return scene_state(self.task.name, self.episode.seed, self.plant.model, self.plant.data)

    def render(self, depth: bool = True, segmentation: bool = False) -> Frame:
        """The D435i's images now (see :meth:`TwinCamera.render`); from one thread only."""
        if self._camera is None:
            self._camera = TwinCamera(self.scene)
        return self._camera.render(self.scene_state(), depth, segmentation)

    def close_camera(self) -> None:
        """Free the renderer; from the thread that rendered (its OpenGL context is that thread's)."""
        if self._camera is not None:
            self._camera.close()
            self._camera = None
