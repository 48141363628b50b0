"""A real detector for the workcell (issue 21 §4): YOLOv8 trained from scratch on twin renders,
auto-labelled from MuJoCo's segmentation, so that in the twin the scene parser meets detection
errors as it would on the robot (no pretrained weights exist offline).

**Data.** Per task and layout seed, the twin's D435i image with the arm at a random pose above the
table (it occludes objects as it does while working) and the layout's random lighting. Every
object the instruction may name (:attr:`WorkcellTask.labels`) with at least ``min_pixels``
visible pixels gets a box: the extent of its pixels in the segmentation render. Classes are the
union of the four tasks' object names (:data:`CLASS_NAMES`). Training and validation use
different layouts: validation seeds start at ``validation_seed_offset``.

**Layout** (ultralytics' YOLO format): ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt``
(one ``class cx cy w h`` line per box, normalised), ``data.yaml``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import require_positive
from fedvla.twin.tasks import TASKS

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


def boxes_from_labels(labels: np.ndarray, bodies: dict[int, int], min_pixels: int) -> list[tuple[int, np.ndarray]]:
    """(class, [x0, y0, x1, y1] pixels) of each labelled body seen in ``labels`` (body id per pixel)."""
    found = []
    for body, cls in bodies.items():
        ys, xs = np.nonzero(labels == body)
        if len(xs) >= min_pixels:
            found.append((cls, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)))
    return found


def yolo_lines(boxes: list[tuple[int, np.ndarray]], width: int, height: int) -> list[str]:
    lines = []
    for cls, (x0, y0, x1, y1) in boxes:
        lines.append(f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def write_detector_dataset(output: str | Path, config: DetectorDataConfig | None = None, scene=None,
                           on_image: Callable[[], None] | None = None) -> Path:
    """Render and label the dataset under ``output``; returns its ``data.yaml``."""
    import pinocchio as pin
    from PIL import Image

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
            (output / "images" / split).mkdir(parents=True, exist_ok=True)
            (output / "labels" / split).mkdir(parents=True, exist_ok=True)
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
                    stem = f"{task.name}_{seed:06d}"
                    Image.fromarray(frame.rgb).save(output / "images" / split / f"{stem}.jpg", quality=92)
                    h, w = frame.rgb.shape[:2]
                    (output / "labels" / split / f"{stem}.txt").write_text(
                        "\n".join(yolo_lines(boxes, w, h)) + ("\n" if boxes else ""))
                    if on_image is not None:
                        on_image()
    finally:
        camera.close()
    data = output / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data.write_text(f"path: {output.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


@dataclasses.dataclass(frozen=True)
class DetectorMetrics:
    map50: float  # mAP at IoU 0.5 on the validation renders
    map50_95: float  # mAP averaged over IoU 0.5:0.95
    weights: Path  # the best checkpoint (under runs/, not in git)
    per_class_map50_95: dict[str, float]


def train_detector(data_yaml: str | Path, output: str | Path, *, epochs: int = 30, image_size: int = 640,
                   model: str = "yolov8n.yaml", batch: int = 8, seed: int = 0) -> DetectorMetrics:
    """YOLOv8 from scratch (``model``: an architecture file; no pretrained weights offline) on the
    twin's renders, then its mAP on the validation renders. A run that was interrupted resumes
    from its last epoch; a finished one is only validated again."""
    from fedvla.iosp.models import offline_ultralytics

    offline_ultralytics()
    from ultralytics import YOLO

    output = Path(output).resolve()
    last, best = output / "train" / "weights" / "last.pt", output / "train" / "weights" / "best.pt"
    if last.is_file() and not (output / "train" / "done").is_file():
        # An interrupted run (a session's processes end with it) resumes from its last epoch.
        YOLO(str(last), task="detect").train(resume=True, device="cpu", workers=0)
    elif not best.is_file():
        detector = YOLO(model, task="detect")
        detector.train(data=str(data_yaml), epochs=epochs, imgsz=image_size, batch=batch, device="cpu", workers=0,
                       pretrained=False, project=str(output), name="train", exist_ok=True, seed=seed,
                       deterministic=True, amp=False, verbose=False, plots=True)
    (output / "train" / "done").write_text("")
    trained = YOLO(str(best), task="detect")
    metrics = trained.val(data=str(data_yaml), imgsz=image_size, batch=batch, device="cpu", workers=0,
                          split="val", project=str(output), name="val", exist_ok=True, verbose=False, plots=True)
    per_class = {CLASS_NAMES[int(c)]: float(m) for c, m in zip(metrics.box.ap_class_index, metrics.box.maps[
        metrics.box.ap_class_index])} if len(metrics.box.ap_class_index) else {}
    return DetectorMetrics(map50=float(metrics.box.map50), map50_95=float(metrics.box.map), weights=best,
                           per_class_map50_95=per_class)


@dataclasses.dataclass(kw_only=True)
class DetectorTrainConfig:
    """How ``fedvla twin detector`` trains (ultralytics' names)."""

    model: str = "yolov8n.yaml"  # an architecture file: from scratch
    epochs: int = 30
    image_size: int = 640  # the D435i's width: small objects (a pill bottle) stay visible
    batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "image_size", "batch"):
            require_positive(getattr(self, name), name)


def build_detector(output: str | Path, data: DetectorDataConfig | None = None,
                   train: DetectorTrainConfig | None = None, show_progress: bool = True) -> DetectorMetrics:
    """Render and label the dataset (once: an output that has it keeps it), train, validate, and
    write ``detector.json`` (the metrics, the weights, both configs)."""
    import json
    import time

    data, train = data or DetectorDataConfig(), train or DetectorTrainConfig()
    output = Path(output).resolve()
    data_yaml = output / "data" / "data.yaml"
    started = time.monotonic()
    if not data_yaml.is_file():
        total = (data.train_images_per_task + data.val_images_per_task) * len(TASKS)
        progress = None
        if show_progress:
            from tqdm import tqdm

            progress = tqdm(total=total, desc="rendering detector data", unit="image")
        try:
            write_detector_dataset(output / "data", data, on_image=progress.update if progress else None)
        finally:
            if progress is not None:
                progress.close()
    rendered = time.monotonic()
    metrics = train_detector(data_yaml, output, epochs=train.epochs, image_size=train.image_size, model=train.model,
                             batch=train.batch, seed=train.seed)
    (output / "detector.json").write_text(json.dumps({
        "map50": metrics.map50, "map50_95": metrics.map50_95, "per_class_map50_95": metrics.per_class_map50_95,
        "weights": str(metrics.weights), "data": dataclasses.asdict(data), "train": dataclasses.asdict(train),
        "render_s": round(rendered - started, 1), "train_s": round(time.monotonic() - rendered, 1)}, indent=1))
    return metrics


def detector_weights(path: str | Path) -> Path:
    """The weights a ``--detector`` option names: a ``fedvla twin detector`` output directory (its
    ``detector.json``) or a YOLOv8 ``.pt`` file."""
    import json

    from fedvla.config import ConfigError

    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / "detector.json").is_file():
        path = Path(json.loads((path / "detector.json").read_text())["weights"])
    if path.suffix != ".pt" or not path.is_file():
        raise ConfigError("detector", f"{path} is neither a fedvla twin detector output (with detector.json) nor a "
                          "YOLOv8 .pt file", "train one with fedvla twin detector")
    return path
