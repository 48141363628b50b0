"""The twin's D435i: colour, aligned depth and (for labelling) segmentation, rendered from a
:class:`SceneState` - a snapshot of the physics - so the camera can live in another process than
the physics (``workcell_sim`` renders beside ROS while the controller runs undisturbed in its own
process, as a real UR controller runs on its own box)."""
from __future__ import annotations

import dataclasses

import numpy as np

from fedvla.camera.base import Frame, Intrinsics
from fedvla.rendering import load_llvm_users_first
from fedvla.twin.scene import CAMERA_NAME, SceneConfig
from fedvla.twin.tasks import compile_task_model, task_named

DEPTH_SCALE_M = 0.001  # realsense-ros: 16UC1 depth in millimetres


@dataclasses.dataclass(frozen=True)
class SceneState:
    """What the camera needs of the physics at one instant (picklable, a few kilobytes)."""

    task: str
    seed: int
    time_s: float
    qpos: np.ndarray
    body_pos: np.ndarray  # per body (the fixed furniture moves between episodes)
    light_pos: np.ndarray
    light_diffuse: np.ndarray


def scene_state(task: str, seed: int, model, data) -> SceneState:
    return SceneState(task=task, seed=seed, time_s=float(data.time), qpos=data.qpos.copy(),
                      body_pos=model.body_pos.copy(), light_pos=model.light_pos.copy(),
                      light_diffuse=model.light_diffuse.copy())


def intrinsics_of(scene: SceneConfig) -> Intrinsics:
    f = scene.focal_px
    return Intrinsics(width=scene.image_width, height=scene.image_height, fx=f, fy=f,
                      cx=(scene.image_width - 1) / 2, cy=(scene.image_height - 1) / 2)


class TwinCamera:
    """Renders :class:`SceneState` snapshots. Call it from one thread: the OpenGL context belongs to
    the thread that made it (:meth:`close` there too)."""

    def __init__(self, scene: SceneConfig) -> None:
        self.scene = scene
        self.intrinsics = intrinsics_of(scene)
        self._task = ""
        self._model = self._data = self._renderer = None
        self._frame_number = 0

    def _prepare(self, task: str) -> None:
        import mujoco

        if task == self._task:
            return
        load_llvm_users_first()  # before the first GL context (a process may train with torch later)
        self.close()
        self._model = compile_task_model(task_named(task), self.scene)
        self._data = mujoco.MjData(self._model)
        self._renderer = mujoco.Renderer(self._model, self.scene.image_height, self.scene.image_width)
        self._task = task

    def render(self, state: SceneState, depth: bool = True, segmentation: bool = False) -> Frame:
        """Colour, and aligned depth (``depth``), of ``state``; ``segmentation`` adds the MuJoCo body
        id of every pixel in ``labels`` (-1: none)."""
        import mujoco

        self._prepare(state.task)
        model, data, renderer = self._model, self._data, self._renderer
        model.body_pos[:] = state.body_pos
        model.light_pos[:] = state.light_pos
        model.light_diffuse[:] = state.light_diffuse
        data.qpos[:] = state.qpos
        data.time = state.time_s
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)  # the camera rides on a body: place it too
        renderer.update_scene(data, camera=CAMERA_NAME)
        rgb = renderer.render().copy()
        depth_mm = labels = None
        if depth:
            renderer.enable_depth_rendering()
            metres = renderer.render()
            renderer.disable_depth_rendering()
            depth_mm = np.clip(np.nan_to_num(metres / DEPTH_SCALE_M), 0, 65535).astype(np.uint16)
            depth_mm[metres > 10.0] = 0  # nothing there: realsense reports 0
        if segmentation:
            renderer.enable_segmentation_rendering()
            seg = renderer.render()
            renderer.disable_segmentation_rendering()
            ids, types = seg[..., 0], seg[..., 1]
            labels = np.where((types == mujoco.mjtObj.mjOBJ_GEOM) & (ids >= 0),
                              model.geom_bodyid[np.clip(ids, 0, None)], -1).astype(np.int32)
        self._frame_number += 1
        return Frame(rgb=rgb, intrinsics=self.intrinsics, stamp_s=state.time_s, frame_number=self._frame_number,
                     depth=depth_mm, depth_scale_m=DEPTH_SCALE_M, labels=labels)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._model = self._data = self._renderer = None
        self._task = ""
