"""A real detector for the workcell (issue 21 §4): YOLOv8 trained from scratch on twin renders,
auto-labelled from MuJoCo's segmentation (:mod:`fedvla.iosp.detector_training`), so that in the
twin the scene parser meets detection errors as it would on the robot.

**Data.** Per task and layout seed, the twin's D435i image with the arm at a random pose above the
table (it occludes objects as it does while working) and the layout's random lighting. Every
object the instruction may name (:attr:`WorkcellTask.labels`) with at least ``min_pixels``
visible pixels gets a box: the extent of its pixels in the segmentation render. Classes are the
union of the four tasks' object names (:data:`CLASS_NAMES`). Training and validation use
different layouts: validation seeds start at ``validation_seed_offset``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import require_positive
from fedvla.iosp.detector_training import (DetectorMetrics, DetectorTrainConfig, boxes_from_labels,
                                           detector_weights, write_data_yaml, write_example)
from fedvla.iosp.detector_training import build_detector as build_from_renders
from fedvla.twin.tasks import TASKS

__all__ = ["CLASS_NAMES", "DetectorDataConfig", "DetectorMetrics", "DetectorTrainConfig", "build_detector",
           "detector_weights", "write_detector_dataset"]

CLASS_NAMES: tuple[str, ...] = tuple(sorted({label for task in TASKS.values() for label in task.labels.values()}))
# Where the arm may be drawn during data generation: the tool above the table (m, base_link).
ARM_BOX = ((0.15, -0.3, 0.08), (0.45, 0.3, 0.3))


@dataclasses.dataclass(kw_only=True)
class DetectorDataConfig:
    train_images_per_task: int = 150
    val_images_per_task: int = 30
    validation_seed_offset: int = 100_000  # layouts never seen in training
    min_pixels: int = 30  # smaller visible parts are not labelled (a detector cannot see them either)

    def __post_init__(self) -> None:
        for name in ("train_images_per_task", "val_images_per_task", "min_pixels"):
            require_positive(getattr(self, name), name)


def write_detector_dataset(output: str | Path, config: DetectorDataConfig | None = None, scene=None,
                           on_image: Callable[[], None] | None = None) -> Path:
    """Render and label the dataset under ``output``; returns its ``data.yaml``."""
    import pinocchio as pin

    from fedvla.robot.ik import IkSolver
    from fedvla.robot.kinematics import HOME_Q, ArmKinematics
    from fedvla.twin.camera import TwinCamera
    from fedvla.twin.scene import SceneConfig
    from fedvla.twin.workcell import Workcell, WorkcellConfig

    config = config or DetectorDataConfig()
    scene = scene or SceneConfig()
    output = Path(output)
    kinematics = ArmKinematics(scene.urdf_path or None)
    ik = IkSolver(kinematics)
    down = kinematics.fk(np.asarray(HOME_Q)).rotation
    camera = TwinCamera(scene)
    workcell = Workcell(WorkcellConfig(), scene)  # not started: no sockets, the layouts only
    try:
        for split, count, offset in (("train", config.train_images_per_task, 0),
                                     ("val", config.val_images_per_task, config.validation_seed_offset)):
            for task in TASKS.values():
                for seed in range(offset, offset + count):
                    workcell.reset(task.name, seed)
                    rng = np.random.default_rng([seed, 11])
                    target = pin.SE3(down, rng.uniform(*ARM_BOX))
                    solution = ik.solve(target, np.asarray(HOME_Q))
                    if solution.converged:
                        workcell.controller.set_joint_positions(solution.q)
                    frame = camera.render(workcell.scene_state(), depth=False, segmentation=True)
                    model = workcell.plant.model
                    bodies = {model.body(body).id: CLASS_NAMES.index(label) for body, label in task.labels.items()}
                    for child in range(model.nbody):  # an object's child bodies (a drawer's handle) are the object
                        parent = model.body(model.body_parentid[child]).name
                        if model.body(child).name not in task.labels and parent in task.labels:
                            bodies[child] = CLASS_NAMES.index(task.labels[parent])
                    boxes = boxes_from_labels(frame.labels, bodies, config.min_pixels)
                    write_example(output, split, f"{task.name}_{seed:06d}", frame.rgb, boxes)
                    if on_image is not None:
                        on_image()
    finally:
        camera.close()
    return write_data_yaml(output, CLASS_NAMES)


def build_detector(output: str | Path, data: DetectorDataConfig | None = None,
                   train: DetectorTrainConfig | None = None, show_progress: bool = True) -> DetectorMetrics:
    """``fedvla twin detector``: render and label the twin's dataset (once), train, validate, and
    write ``detector.json``."""
    data = data or DetectorDataConfig()
    images = (data.train_images_per_task + data.val_images_per_task) * len(TASKS)
    return build_from_renders(output, lambda directory, on_image: write_detector_dataset(directory, data,
                                                                                      on_image=on_image),
                              images, CLASS_NAMES, dataclasses.asdict(data), train, show_progress)
