"""The real-model path of IOSP: YOLOv8 detection (ultralytics) and CLIP text/patch embeddings
(open_clip), both loaded only from local paths — nothing is downloaded.

* :class:`YoloDetector` — ``weights`` is a trained ``.pt`` file, or a model ``.yaml`` (e.g.
  ``yolov8n.yaml``: the architecture with random weights, which runs but detects nothing
  meaningful: for checking an installation). Class names come from the model (a ``.yaml``-built
  model only has numbers: pass ``class_names``). Which classes are
  static background (``background_classes``) is configuration: YOLO does not know.
* :class:`ClipEncoder` — ``model_name`` (an open_clip architecture, e.g. ``ViT-B-32``) and
  ``checkpoint`` (a local file; empty builds the architecture with random weights, with a
  warning: patch-to-text similarity is then noise, use the ``box_mask`` rule).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from fedvla.config import ConfigError
from fedvla.iosp.types import COCO_BACKGROUND_CLASSES, Detection

log = logging.getLogger("fedvla.iosp")


def offline_ultralytics() -> None:
    # Never reach the hub (weights, fonts, settings sync); keep its settings out of $HOME.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "fedvla_ultralytics"))


class YoloDetector:
    def __init__(self, weights: str, *, class_names: list[str] | None = None, confidence: float = 0.25,
                 iou: float = 0.45, image_size: int = 0,
                 background_classes: Collection[str] = COCO_BACKGROUND_CLASSES,
                 device: str = "cpu") -> None:
        if not weights:
            raise ConfigError("detector_weights", "is empty", "a YOLOv8 .pt file, or yolov8n.yaml for random weights")
        path = Path(weights).expanduser()
        if path.suffix == ".pt" and not path.is_file():
            raise ConfigError("detector_weights", f"{weights} does not exist", "a local YOLOv8 .pt file")
        if path.suffix not in (".pt", ".yaml", ".yml"):
            raise ConfigError("detector_weights", f"{weights} is neither a .pt nor a model .yaml", "yolov8n.pt, yolov8n.yaml")
        offline_ultralytics()
        from ultralytics import YOLO

        self.model = YOLO(str(path) if path.is_file() else weights, task="detect")
        self.names: dict[int, str] = dict(self.model.names)
        if class_names:  # a model built from a .yaml has no names ("0", "1", ...): give them
            if len(class_names) != len(self.names):
                raise ConfigError("detector_class_names", f"{len(class_names)} names for a model with "
                                  f"{len(self.names)} classes", f"{len(self.names)} names")
            self.names = dict(enumerate(class_names))
        # 0: the size the weights were trained at (a detector trained at 320 px misses most objects
        # at 640); a model built from a .yaml has none recorded, and ultralytics' default is 640.
        self.image_size = image_size or int(self.model.overrides.get("imgsz") or 640)
        self.confidence, self.iou, self.device = confidence, iou, device
        self.background_classes = set(background_classes)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """``image`` RGB uint8 (H, W, 3) → detections with boxes, scores and masks (seg models)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        # ultralytics expects BGR numpy images (OpenCV convention).
        result = self.model.predict(image[:, :, ::-1], conf=self.confidence, iou=self.iou, imgsz=self.image_size,
                                    device=self.device, verbose=False)[0]
        boxes = result.boxes
        masks = None
        if result.masks is not None:
            masks = result.masks.data.cpu().numpy() > 0.5
        detections = []
        for i in range(len(boxes)):
            name = self.names[int(boxes.cls[i])]
            mask = None
            if masks is not None and masks[i].shape == image.shape[:2]:
                mask = masks[i]
            detections.append(Detection(name=name, box=tuple(float(v) for v in boxes.xyxy[i].tolist()),
                                        score=float(boxes.conf[i]), mask=mask,
                                        foreground=name not in self.background_classes))
        return detections


class ClipEncoder:
    def __init__(self, model_name: str = "ViT-B-32", checkpoint: str = "", device: str = "cpu") -> None:
        import open_clip

        if checkpoint and not Path(checkpoint).expanduser().is_file():
            raise ConfigError("clip_checkpoint", f"{checkpoint} does not exist", "a local open_clip checkpoint file")
        if model_name not in open_clip.list_models():
            raise ConfigError("clip_model", f"unknown open_clip model {model_name!r}", "e.g. ViT-B-32, ViT-B-16, RN50")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(Path(checkpoint).expanduser()) if checkpoint else None, device=device)
        if not checkpoint:
            log.warning("CLIP %s has random weights (no clip_checkpoint): patch-to-text similarity is noise; "
                        "use the box_mask token selection rule", model_name)
        self.model.eval()
        self.model.visual.output_tokens = True
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self._text_cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """(n, D) unit-norm text embeddings (cached per string: object names repeat every frame)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            features = self.model.encode_text(self.tokenizer(missing).to(self.device)).float()
            features = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
            self._text_cache.update(zip(missing, features))
        return np.stack([self._text_cache[t] for t in texts]) if texts else np.zeros((0, self.embedding_dim))

    @property
    def embedding_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None else 512

    @torch.no_grad()
    def encode_patches(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB uint8 image → ((P, D) patch embeddings in the text space, (rows, cols) grid)."""
        from PIL import Image

        pixels = self.preprocess(Image.fromarray(image)).unsqueeze(0).to(self.device)
        _, tokens = self.model.visual(pixels)  # (1, P, width)
        visual = self.model.visual
        if getattr(visual, "proj", None) is not None:
            tokens = tokens @ visual.proj  # into the joint image-text space
        side = int(round(tokens.shape[1] ** 0.5))
        return tokens[0].float().cpu().numpy(), (side, side)
