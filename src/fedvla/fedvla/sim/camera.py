"""A camera in a simulated Meta-World scene, rendered with MuJoCo.

The camera renders the scene's current state at the configured rate. It owns a copy of the
scene built from ``sim_task`` and ``sim_seed`` (the seeded initial layout); a simulator that
steps the world elsewhere can push its joint state with :meth:`SimCamera.set_state`, the way
a real camera observes a world it does not own. With ``enable_segmentation`` each frame also
carries the object label of every pixel (MuJoCo's segmentation render, named by
:mod:`fedvla.sim.detector`'s rules), as simulators' segmentation cameras publish it.
"""
from __future__ import annotations

import time

import numpy as np

from fedvla.camera.base import Camera, CameraBackend, CameraConfig, CameraError, Frame, Intrinsics, register_camera
from fedvla.sim.detector import SimSegmentationDetector
from fedvla.iosp.types import ObjectLabel
from fedvla.sim.metaworld_scene import CameraModel, SceneError, SceneRenderer, make_metaworld_env

# Depth beyond this is reported as 0 ("no data"), as a RealSense does past its range.
MAX_DEPTH_M = 10.0


@register_camera(CameraBackend.SIM)
class SimCamera(Camera):
    def __init__(self, config: CameraConfig) -> None:
        super().__init__(config)
        self._env = None
        self._renderer: SceneRenderer | None = None
        self._labeler: SimSegmentationDetector | None = None
        self._camera: CameraModel | None = None
        self._frame_number = 0
        self._next_deadline_s = 0.0

    @property
    def is_connected(self) -> bool:
        return self._renderer is not None

    def connect(self) -> None:
        if self.is_connected:
            return
        cfg = self.config
        try:
            self._env = make_metaworld_env(cfg.sim_task, cfg.sim_seed)
            self._renderer = SceneRenderer(self._env.unwrapped.model, self._env.unwrapped.data, cfg.width, cfg.height)
            self._camera = self._renderer.camera(cfg.sim_camera)
            if cfg.enable_segmentation:
                self._labeler = SimSegmentationDetector(self._env.unwrapped.model, self._renderer, task=cfg.sim_task)
                self.objects = tuple(ObjectLabel(o.name, o.foreground) for o in self._labeler.objects)
        except SceneError as err:
            self.disconnect()  # release the GL context and the scene of a half-made camera
            raise CameraError(str(err)) from err
        focal = self._camera.focal_px(cfg.height)
        self.intrinsics = Intrinsics(width=cfg.width, height=cfg.height, fx=focal, fy=focal,
                                     cx=(cfg.width - 1) / 2.0, cy=(cfg.height - 1) / 2.0)
        self._frame_number = 0
        self._next_deadline_s = time.monotonic()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> None:
        """Show the world in the given joint state (from a simulator stepping elsewhere)."""
        import mujoco

        self._require_connected()
        model, data = self._env.unwrapped.model, self._env.unwrapped.data
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.shape != (model.nq,):
            raise CameraError(f"set_state: qpos has shape {qpos.shape}, the scene has nq={model.nq}")
        data.qpos[:] = qpos
        if qvel is not None:
            data.qvel[:] = qvel
        mujoco.mj_forward(model, data)

    def read(self, timeout_ms: int = 1000) -> Frame:
        """Render the next frame, paced at ``fps`` like a real sensor."""
        self._require_connected()
        period_s = 1.0 / self.config.fps
        delay_s = self._next_deadline_s - time.monotonic()
        if delay_s > timeout_ms / 1000.0:
            raise CameraError(f"no frame within {timeout_ms} ms at {self.config.fps:g} fps")
        if delay_s > 0:
            time.sleep(delay_s)
        # Never try to catch up on missed frames: schedule from now if rendering fell behind.
        self._next_deadline_s = max(self._next_deadline_s + period_s, time.monotonic())
        rgb = self._renderer.render(self._camera)
        depth = None
        if self.config.enable_depth:
            depth_m = self._renderer.render(self._camera, depth=True)
            depth_m = np.where(depth_m < MAX_DEPTH_M, depth_m, 0.0)
            depth = np.round(depth_m / 0.001).astype(np.uint16)
        labels = None
        if self._labeler is not None:
            segmentation = self._renderer.render(self._camera, segmentation=True)
            labels = self._labeler.label_image(segmentation, self._camera).astype(np.int32)
        frame = Frame(rgb=rgb, intrinsics=self.intrinsics, stamp_s=self._frame_number * period_s,
                      frame_number=self._frame_number, depth=depth, depth_scale_m=0.001, labels=labels)
        self._frame_number += 1
        return frame

    def disconnect(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        if self._env is not None:
            self._env.close()
        self._env = self._renderer = self._camera = self._labeler = None
        self.objects = ()
