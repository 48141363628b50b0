"""Meta-World (MuJoCo) scenes with fast headless rendering.

Rendering at Meta-World's default settings runs at 1–3 steps/s on a 2-core CPU with three
cameras. :class:`SceneRenderer` applies the settings that make it ~10× faster (no multisample
anti-aliasing, no shadows, no reflections, one ``mujoco.Renderer`` shared by all cameras) and
turns upside-down scene cameras (Meta-World's ``corner`` cameras look at the table with their
up axis pointing down) the right way up.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvla.config import ConfigError
from fedvla.rendering import load_llvm_users_first, use_headless_gl

use_headless_gl()  # before mujoco is imported

# The four tasks of the FedVLA simulation study (paper section 4.1).
PAPER_TASKS = ("door-lock-v3", "drawer-close-v3", "sweep-into-v3", "window-open-v3")


class SceneError(RuntimeError):
    """The scene cannot be built or rendered (unknown task or camera, no GL)."""


def meta_world_task_names() -> list[str]:
    import metaworld

    return sorted(metaworld.ALL_V3_ENVIRONMENTS)


def make_metaworld_env(task: str, seed: int) -> Any:
    """Build a Meta-World v3 task env with a seeded, randomised initial layout (reset done)."""
    import metaworld

    names = meta_world_task_names()
    if task not in names:
        close = [n for n in names if task.split("-")[0] in n][:5] or names[:5]
        raise SceneError(f"unknown Meta-World task {task!r} (e.g. {', '.join(close)})")
    benchmark = metaworld.MT1(task, seed=seed)
    env = benchmark.train_classes[task]()
    env.set_task(benchmark.train_tasks[seed % len(benchmark.train_tasks)])
    env.reset(seed=seed)
    return env


@dataclass(frozen=True)
class CameraModel:
    name: str
    fovy_deg: float
    upside_down: bool

    def focal_px(self, height: int) -> float:
        return (height / 2.0) / np.tan(np.deg2rad(self.fovy_deg) / 2.0)


class SceneRenderer:
    """Renders RGB and depth (metres) from the named cameras of one MuJoCo model."""

    def __init__(self, model: Any, data: Any, width: int, height: int) -> None:
        import mujoco

        load_llvm_users_first()
        self._mujoco = mujoco
        self.model, self.data = model, data
        self.width, self.height = width, height
        # The offscreen buffer must hold the requested image; MSAA off is the largest speed-up.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        model.vis.quality.offsamples = 0
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as err:  # mujoco raises plain Exceptions for GL failures
            raise SceneError(f"MuJoCo cannot render offscreen with MUJOCO_GL={os.environ['MUJOCO_GL']} "
                             f"({err}): install libegl1, or libosmesa6 and set MUJOCO_GL=osmesa") from err

    def camera(self, name: str) -> CameraModel:
        mujoco = self._mujoco
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam_id < 0:
            names = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]
            raise SceneError(f"the scene has no camera {name!r} (cameras: {', '.join(names)})")
        mujoco.mj_forward(self.model, self.data)
        # Column 1 of the camera frame is the image's up direction, in world coordinates.
        up_world = self.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        return CameraModel(name=name, fovy_deg=float(self.model.cam_fovy[cam_id]), upside_down=bool(up_world[2] < 0))

    def render(self, camera: CameraModel, depth: bool = False, segmentation: bool = False) -> np.ndarray:
        """RGB uint8 (H, W, 3); depth in metres float32 (H, W) when ``depth``; when ``segmentation``,
        int32 (H, W, 2): per pixel the id and ``mjtObj`` type of the element drawn there (in
        Meta-World a geom or a site), (-1, -1) where nothing is. Upside-down cameras turn all three."""
        mujoco, renderer = self._mujoco, self._renderer
        if depth and segmentation:
            raise ValueError("render either depth or segmentation, not both")
        # One renderer serves every mode: set all of its mode switches on each call.
        if depth:
            renderer.enable_depth_rendering()
        elif segmentation:
            renderer.enable_segmentation_rendering()
        else:
            renderer.disable_depth_rendering()
            renderer.disable_segmentation_rendering()
        renderer.update_scene(self.data, camera=camera.name)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        image = renderer.render()
        if camera.upside_down:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def close(self) -> None:
        # Free the GL context explicitly: freeing it in __del__ at interpreter exit fails noisily.
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# The study's three upright views: our names -> Meta-World's cameras.
STUDY_CAMERAS = {"corner": "corner", "top": "topview", "shoulder": "corner2"}


def metaworld_benchmark(task: str, seed: int):
    """(env, layouts): a Meta-World env of ``task`` and its seeded layout variations."""
    import metaworld

    benchmark = metaworld.MT1(task, seed=seed)
    return benchmark.train_classes[task](), benchmark.train_tasks


def start_episode(env, layouts, index: int, rng: np.random.Generator, hand_home: np.ndarray,
                  hand_noise_m: float) -> np.ndarray:
    """Reset ``env`` to layout ``index`` (cycling) with the hand's start moved by the noise."""
    env.set_task(layouts[index % len(layouts)])
    env.hand_init_pos = hand_home + rng.uniform(-hand_noise_m, hand_noise_m, size=3)
    observation, _ = env.reset()
    return observation


def expert_policy(task: str):
    """Meta-World's scripted policy for a v3 task (``door-lock-v3`` → SawyerDoorLockV3Policy)."""
    import metaworld.policies as policies

    name = "Sawyer" + "".join(part.capitalize() for part in task.removesuffix("-v3").split("-")) + "V3Policy"
    if not hasattr(policies, name):
        raise ConfigError("tasks", f"Meta-World has no scripted policy {name} for {task!r}", "a task with one")
    # The scripted policies warn on every step that their gains exceed the action range; the
    # recorded actions are clipped to [-1, 1] (what the environment applies) anyway.
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
    return getattr(policies, name)()
