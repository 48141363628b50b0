"""A real detector for the simulation study's IOSP (issue 23): YOLOv8 trained from scratch on
Meta-World renders, labelled from the simulator's segmentation (:class:`SimSegmentationDetector`,
the oracle the study's IOSP otherwise uses), with :mod:`fedvla.iosp.detector_training`.

**Data.** Per task and layout: the study's cameras rendered at the study's image size (the IOSP
parse runs on those images), after the scripted expert has run a random number of steps from a
random hand start, so that the arm occludes objects and the objects are seen part-way through the
task, as in a trial. Every named object with at least ``min_pixels`` visible pixels gets a box,
except the arena's background (floor, table, wall, robot base: large, static and never an
instruction's object). Classes: the union of the tasks' object names. Training and validation
layouts come from Meta-World seeds that neither the study's demonstrations (seed 0) nor its
trials (1000 and up) use.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import require, require_positive
from fedvla.iosp.detector_training import (DetectorMetrics, DetectorTrainConfig, boxes_from_labels,
                                           write_data_yaml, write_example)
from fedvla.iosp.detector_training import build_detector as build_from_renders
from fedvla.sim.metaworld_scene import PAPER_TASKS

ARENA = ("floor", "table", "wall", "robot base")  # background of every task: not labelled


@dataclasses.dataclass(kw_only=True)
class MetaWorldDetectorData:
    tasks: tuple[str, ...] = PAPER_TASKS
    cameras: tuple[str, ...] = ("corner", "top", "shoulder")  # the study's (fedvla.sim.collect.STUDY_CAMERAS)
    image_size: int = 128  # the study's renders, where the parse runs
    train_layouts_per_task: int = 40
    val_layouts_per_task: int = 10
    train_seed: int = 2000  # Meta-World (MT1) seeds of the layouts: apart from collection and trials
    val_seed: int = 3000
    max_expert_steps: int = 80  # each image after 0..this many expert steps
    hand_noise_m: float = 0.08
    min_pixels: int = 4

    def __post_init__(self) -> None:
        self.tasks, self.cameras = tuple(self.tasks), tuple(self.cameras)
        for name in ("image_size", "train_layouts_per_task", "val_layouts_per_task", "min_pixels"):
            require_positive(getattr(self, name), name)
        require(self.train_seed != self.val_seed, "val_seed", "equals train_seed", "another MT1 seed")


def _labelled_objects(tasks: tuple[str, ...]) -> dict[str, bool]:
    """Every labelled object name of ``tasks`` (what the oracle names, the arena left out) and
    whether it is foreground."""
    from fedvla.sim.detector import scene_naming, scene_objects
    from fedvla.sim.metaworld_scene import metaworld_benchmark

    objects_by_name: dict[str, bool] = {}
    for task in tasks:
        env, _ = metaworld_benchmark(task, 0)
        try:
            objects, _ = scene_objects(env.unwrapped.model, scene_naming(task))
            objects_by_name.update({o.name: o.foreground for o in objects if o.name not in ARENA})
        finally:
            env.close()
    return objects_by_name


def class_names(tasks: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(_labelled_objects(tasks)))


def background_class_names(tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The classes that are scene fixtures (the oracle's foreground=False): IOSP's background group."""
    return tuple(sorted(name for name, foreground in _labelled_objects(tasks).items() if not foreground))


def write_metaworld_detector_dataset(output: str | Path, config: MetaWorldDetectorData | None = None,
                                     on_image: Callable[[], None] | None = None) -> Path:
    """Render and label the dataset under ``output``; returns its ``data.yaml``."""
    from fedvla.sim.detector import SimSegmentationDetector
    from fedvla.sim.metaworld_scene import (STUDY_CAMERAS, SceneRenderer, expert_policy, metaworld_benchmark,
                                            start_episode)

    config = config or MetaWorldDetectorData()
    output = Path(output)
    names = class_names(config.tasks)
    for split, count, seed in (("train", config.train_layouts_per_task, config.train_seed),
                               ("val", config.val_layouts_per_task, config.val_seed)):
        for task in config.tasks:
            env, layouts = metaworld_benchmark(task, seed)
            model, data = env.unwrapped.model, env.unwrapped.data
            renderer = SceneRenderer(model, data, config.image_size, config.image_size)
            detector = SimSegmentationDetector(model, renderer, task=task, min_pixels=config.min_pixels)
            expert = expert_policy(task)
            rng = np.random.default_rng([seed, 7])
            home = np.asarray(env.hand_init_pos, dtype=np.float64).copy()
            try:
                for index in range(count):
                    observation = start_episode(env, layouts, index, rng, home, config.hand_noise_m)
                    for _ in range(int(rng.integers(0, config.max_expert_steps + 1))):
                        observation, *_ = env.step(np.clip(expert.get_action(observation), -1.0, 1.0))
                    for camera_name in config.cameras:
                        camera = renderer.camera(STUDY_CAMERAS[camera_name])
                        labels = detector.label_image(renderer.render(camera, segmentation=True), camera)
                        classes = {i: names.index(o.name) for i, o in enumerate(detector.objects) if o.name in names}
                        boxes = boxes_from_labels(labels, classes, config.min_pixels)
                        write_example(output, split, f"{task}_{index:04d}_{camera_name}", renderer.render(camera), boxes)
                        if on_image is not None:
                            on_image()
            finally:
                renderer.close()
                env.close()
    return write_data_yaml(output, names)


def build_metaworld_detector(output: str | Path, data: MetaWorldDetectorData | None = None,
                             train: DetectorTrainConfig | None = None, show_progress: bool = True) -> DetectorMetrics:
    """``fedvla study-detector``: render and label (once), train, validate, ``detector.json``."""
    data = data or MetaWorldDetectorData()
    train = train or DetectorTrainConfig(image_size=data.image_size)
    images = (data.train_layouts_per_task + data.val_layouts_per_task) * len(data.tasks) * len(data.cameras)
    return build_from_renders(output, lambda directory, on_image: write_metaworld_detector_dataset(directory, data,
                                                                                                 on_image),
                              images, class_names(data.tasks), dataclasses.asdict(data), train, show_progress)


def trained_detector(path: str, tasks: tuple[str, ...]):
    """The YOLOv8 of ``fedvla study-detector`` (its output directory or .pt file), with the objects
    the simulator's naming marks as scene fixtures (not foreground) as background classes."""
    from fedvla.iosp.detector_training import detector_weights
    from fedvla.iosp.models import YoloDetector

    return YoloDetector(str(detector_weights(path)), background_classes=background_class_names(tasks))
