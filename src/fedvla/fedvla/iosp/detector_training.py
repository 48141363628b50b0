"""Training a YOLOv8 detector from scratch on simulator renders labelled from the simulator's own
segmentation, for the scene parser (IOSP) to meet the detection errors a robot's camera would give
it: no pretrained weights are reachable offline. The scene-specific part (what to render, which
pixels are which object) is the caller's: :mod:`fedvla.twin.detector` (the workcell twin's D435i)
and :mod:`fedvla.sim.detector_data` (Meta-World's cameras) write a dataset in ultralytics' YOLO
layout; this module trains on it, validates on the held-out layouts and records the result.

**Layout**: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` (one ``class cx cy w h``
line per box, normalised), ``data.yaml``; ``detector.json`` beside ``data/`` and ``train/``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedvla.config import ConfigError, require_positive

DETECTOR_FILE = "detector.json"


def boxes_from_labels(labels: np.ndarray, classes: dict[int, int], min_pixels: int) -> list[tuple[int, np.ndarray]]:
    """(class, [x0, y0, x1, y1] pixels) of each labelled element seen in ``labels`` (an element id
    per pixel; ``classes`` maps an element id to its class)."""
    found = []
    for element, cls in classes.items():
        ys, xs = np.nonzero(labels == element)
        if len(xs) >= min_pixels:
            found.append((cls, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)))
    return found


def yolo_lines(boxes: list[tuple[int, np.ndarray]], width: int, height: int) -> list[str]:
    lines = []
    for cls, (x0, y0, x1, y1) in boxes:
        lines.append(f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def write_example(output: Path, split: str, stem: str, rgb: np.ndarray, boxes: list[tuple[int, np.ndarray]]) -> None:
    """One labelled image of the dataset under ``output`` (``split``: train or val)."""
    from PIL import Image

    (output / "images" / split).mkdir(parents=True, exist_ok=True)
    (output / "labels" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(output / "images" / split / f"{stem}.jpg", quality=92)
    h, w = rgb.shape[:2]
    (output / "labels" / split / f"{stem}.txt").write_text("\n".join(yolo_lines(boxes, w, h)) + ("\n" if boxes else ""))


def write_data_yaml(output: Path, class_names: Sequence[str]) -> Path:
    data = output / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(class_names))
    data.write_text(f"path: {output.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


@dataclasses.dataclass(frozen=True)
class DetectorMetrics:
    map50: float  # mAP at IoU 0.5 on the validation renders
    map50_95: float  # mAP averaged over IoU 0.5:0.95
    weights: Path  # the best checkpoint (under runs/, not in git)
    per_class_map50_95: dict[str, float]


@dataclasses.dataclass(kw_only=True)
class DetectorTrainConfig:
    """How the detector trains (ultralytics' names)."""

    model: str = "yolov8n.yaml"  # an architecture file: from scratch
    epochs: int = 30
    image_size: int = 640  # the D435i's width: small objects (a pill bottle) stay visible
    batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "image_size", "batch"):
            require_positive(getattr(self, name), name)


def detector_training_seconds(detector_dir: Path, detector: dict) -> float:
    """Training time from ultralytics' ``train/results.csv`` (its ``time`` column restarts at 0
    when an interrupted training resumes: the segments are summed); without that file, the
    ``train_s`` of ``detector`` (the directory's ``detector.json``: the sitting that finished it)."""
    path = detector_dir / "train" / "results.csv"
    if not path.is_file():
        return detector["train_s"]
    rows = [line.split(",") for line in path.read_text().splitlines()]
    column = [c.strip() for c in rows[0]].index("time")
    times = [float(r[column]) for r in rows[1:] if len(r) > column]
    return sum(t for t, after in zip(times, times[1:] + [0.0]) if after < t)


def train_detector(data_yaml: str | Path, output: str | Path, class_names: Sequence[str],
                   config: DetectorTrainConfig | None = None) -> DetectorMetrics:
    """YOLOv8 from scratch (``config.model``: an architecture file) on the renders, then its mAP on
    the validation renders. A run that was interrupted resumes from its last epoch; a finished one
    is only validated again."""
    from fedvla.iosp.models import offline_ultralytics

    config = config or DetectorTrainConfig()
    offline_ultralytics()
    from ultralytics import YOLO

    output = Path(output).resolve()
    last, best = output / "train" / "weights" / "last.pt", output / "train" / "weights" / "best.pt"
    if last.is_file() and not (output / "train" / "done").is_file():
        # An interrupted run (a session's processes end with it) resumes from its last epoch.
        YOLO(str(last), task="detect").train(resume=True, device="cpu", workers=0)
    elif not best.is_file():
        detector = YOLO(config.model, task="detect")
        detector.train(data=str(data_yaml), epochs=config.epochs, imgsz=config.image_size, batch=config.batch,
                       device="cpu", workers=0, pretrained=False, project=str(output), name="train", exist_ok=True,
                       seed=config.seed, deterministic=True, amp=False, verbose=False, plots=True)
    (output / "train" / "done").write_text("")
    trained = YOLO(str(best), task="detect")
    metrics = trained.val(data=str(data_yaml), imgsz=config.image_size, batch=config.batch, device="cpu", workers=0,
                          split="val", project=str(output), name="val", exist_ok=True, verbose=False, plots=True)
    per_class = {class_names[int(c)]: float(m) for c, m in zip(metrics.box.ap_class_index, metrics.box.maps[
        metrics.box.ap_class_index])} if len(metrics.box.ap_class_index) else {}
    return DetectorMetrics(map50=float(metrics.box.map50), map50_95=float(metrics.box.map), weights=best,
                           per_class_map50_95=per_class)


def build_detector(output: str | Path, render: Callable[[Path, Callable[[], None] | None], Path], images: int,
                   class_names: Sequence[str], data_settings: dict, train: DetectorTrainConfig | None = None,
                   show_progress: bool = True) -> DetectorMetrics:
    """Render and label the dataset (``render(data_dir, on_image)`` returns its data.yaml; once: an
    output that has it keeps it), train, validate, and write ``detector.json`` (the metrics, the
    weights, the data and training settings)."""
    train = train or DetectorTrainConfig()
    output = Path(output).resolve()
    data_yaml = output / "data" / "data.yaml"
    started = time.monotonic()
    rendering = not data_yaml.is_file()
    if rendering:
        progress = None
        if show_progress:
            from tqdm import tqdm

            progress = tqdm(total=images, desc="rendering detector data", unit="image")
        try:
            render(output / "data", progress.update if progress else None)
        finally:
            if progress is not None:
                progress.close()
    rendered = time.monotonic()
    trained_before = (output / "train" / "done").is_file()
    metrics = train_detector(data_yaml, output, class_names, train)
    from fedvla.paths import working_tree_commit

    # A rerun that found the renders or the training done keeps the times (and commit) they took.
    before = json.loads((output / DETECTOR_FILE).read_text()) if (output / DETECTOR_FILE).is_file() else {}
    render_s = before["render_s"] if not rendering and "render_s" in before else round(rendered - started, 1)
    train_s = before["train_s"] if trained_before and "train_s" in before else round(time.monotonic() - rendered, 1)
    (output / DETECTOR_FILE).write_text(json.dumps({
        "commit": before.get("commit") if trained_before and before.get("commit") else working_tree_commit(),
        "map50": metrics.map50, "map50_95": metrics.map50_95, "per_class_map50_95": metrics.per_class_map50_95,
        "weights": str(metrics.weights), "classes": list(class_names), "data": data_settings,
        "train": dataclasses.asdict(train), "render_s": render_s, "train_s": train_s}, indent=1))
    return metrics


def detector_weights(path: str | Path) -> Path:
    """The weights a ``--detector`` option names: a detector output directory (its
    ``detector.json``) or a YOLOv8 ``.pt`` file."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / DETECTOR_FILE).is_file():
        path = Path(json.loads((path / DETECTOR_FILE).read_text())["weights"])
    if path.suffix != ".pt" or not path.is_file():
        raise ConfigError("detector", f"{path} is neither a trained detector's output (with {DETECTOR_FILE}) nor a "
                          "YOLOv8 .pt file", "train one with fedvla twin detector or fedvla study-detector")
    return path
