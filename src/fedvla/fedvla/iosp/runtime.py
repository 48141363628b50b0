"""The scene parser as the scene_parser node runs it: which cameras, which detector, and the
simulator's label images matched to their frames. ROS-free; the node only moves messages.

Detectors (``detector``):

* ``sim`` — the simulated cameras' segmentation (``enable_segmentation`` on their camera node):
  each frame comes with a label image (object index per pixel) and the camera's label table, and
  the detections are read from it (:func:`fedvla.iosp.types.detections_from_labels`). Exact,
  needs no weights, and follows whatever the simulated world does. This is the offline default.
* ``yolo`` — ultralytics YOLOv8 on the colour image (``detector_weights``: a trained ``.pt``, or
  ``yolov8n.yaml`` for random weights to check an installation), one model shared by every camera;
  ``background_classes`` says which classes are static scene elements.

Either way detection runs on every ``detect_every_n``-th frame per camera, tracked in between.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Sequence

import numpy as np

from fedvla.config import ConfigError, parse_enum, require, require_positive
from fedvla.iosp.parser import CameraParse, SceneParser, SceneParserConfig
from fedvla.iosp.types import COCO_BACKGROUND_CLASSES, Detection, LabelledFrame, ObjectLabel, detections_from_labels

log = logging.getLogger("fedvla.iosp")


class DetectorKind(str, enum.Enum):
    SIM = "sim"  # the simulated camera's object labels
    YOLO = "yolo"  # YOLOv8 on the colour image


@dataclasses.dataclass(kw_only=True)
class SceneParserRuntimeConfig(SceneParserConfig):
    """Field names are the scene_parser node's parameters."""

    cameras: tuple[str, ...] = ()  # camera names: /camera/<name>/color/image_raw, as the policy's camera_names
    instruction: str = ""  # initial instruction; the /instruction topic replaces it
    rate_hz: float = 10.0  # parse each camera's newest frame at most this often (frames in between are skipped)
    detector: DetectorKind = DetectorKind.SIM
    detector_weights: str = ""  # yolo: a YOLOv8 .pt file, or yolov8n.yaml (random weights)
    detector_class_names: tuple[str, ...] = ()  # yolo: names for a model built from a .yaml (it has none)
    detector_confidence: float = 0.25
    detector_image_size: int = 0  # yolo: inference size in pixels; 0: the size the weights were trained at
    background_classes: tuple[str, ...] = COCO_BACKGROUND_CLASSES
    sim_min_pixels: int = 4  # sim: fewer visible pixels than this is no detection
    device: str = "cpu"
    marker_depth_m: float = 1.0  # RViz markers: boxes drawn on the plane this far along the optical axis

    def __post_init__(self) -> None:
        super().__post_init__()
        self.detector = parse_enum(DetectorKind, self.detector, "detector")
        self.cameras = tuple(self.cameras)
        self.detector_class_names = tuple(self.detector_class_names)
        self.background_classes = tuple(self.background_classes)
        require(bool(self.cameras), "cameras", "is empty", "camera names, e.g. [corner, top, shoulder]")
        require(len(set(self.cameras)) == len(self.cameras), "cameras", f"{list(self.cameras)} repeats a camera")
        require_positive(self.rate_hz, "rate_hz")
        require_positive(self.marker_depth_m, "marker_depth_m")
        require(self.detector_image_size >= 0, "detector_image_size", f"must not be negative, got "
                f"{self.detector_image_size}", "0 (the size the weights were trained at) or a size in pixels, e.g. 640")
        require(0.0 <= self.detector_confidence <= 1.0, "detector_confidence",
                f"{self.detector_confidence} is outside [0, 1]", "0 <= x <= 1")
        require(self.sim_min_pixels >= 1, "sim_min_pixels", f"must be at least 1, got {self.sim_min_pixels}")
        if self.detector is DetectorKind.YOLO:
            require(bool(self.detector_weights), "detector_weights", "is empty but detector is yolo",
                    "a YOLOv8 .pt file, or yolov8n.yaml for random weights")


class SceneParserRuntime:
    """Parses camera frames for the configured cameras with the configured detector."""

    def __init__(self, config: SceneParserRuntimeConfig) -> None:
        self.config = config
        self._objects: dict[str, tuple[ObjectLabel, ...]] = {}
        if config.detector is DetectorKind.SIM:
            detectors = {camera: (lambda frame, c=camera: self._detect_labelled(c, frame)) for camera in config.cameras}
        else:
            from fedvla.iosp.models import YoloDetector

            yolo = YoloDetector(config.detector_weights, class_names=list(config.detector_class_names) or None,
                                confidence=config.detector_confidence, image_size=config.detector_image_size,
                                background_classes=config.background_classes, device=config.device)
            detectors = dict.fromkeys(config.cameras, yolo.detect)
        self.parser = SceneParser(config, detectors)

    @property
    def needs_labels(self) -> bool:
        return self.config.detector is DetectorKind.SIM

    def set_objects(self, camera: str, objects: Sequence[ObjectLabel]) -> None:
        """The label table of ``camera``'s label images (sim detector)."""
        self._require_camera(camera)
        self._objects[camera] = tuple(objects)

    def has_objects(self, camera: str) -> bool:
        return camera in self._objects

    def parse(self, camera: str, image: np.ndarray, instruction: str, labels: np.ndarray | None = None) -> CameraParse:
        """One frame of one camera; ``labels`` is the frame's label image (sim detector)."""
        self._require_camera(camera)
        if labels is not None and np.shape(labels) != np.shape(image)[:2]:
            log.warning("%s: label image %s does not match the %s image: no detection", camera,
                        np.shape(labels), np.shape(image)[:2])
            labels = None
        frame = None
        if self.needs_labels:
            objects = self._objects.get(camera)
            if labels is None or objects is None:
                log.warning("%s: no label image or label table for this frame: no detection", camera)
            else:
                frame = LabelledFrame(labels, objects)
        return self.parser.parse(camera, image, instruction, detector_input=frame)

    def _detect_labelled(self, camera: str, frame: LabelledFrame | np.ndarray) -> list[Detection]:
        if not isinstance(frame, LabelledFrame):  # (an image: this frame came without its labels)
            return []
        try:
            return detections_from_labels(frame.labels, frame.objects, self.config.sim_min_pixels)
        except ValueError as err:  # a label image that does not fit its table: report, never crash
            log.warning("%s: %s: no detection", camera, err)
            return []

    def _require_camera(self, camera: str) -> None:
        if camera not in self.config.cameras:
            raise ConfigError("camera", f"{camera!r} is not one of the parsed cameras", ", ".join(self.config.cameras))
