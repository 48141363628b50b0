"""The IOSP pipeline for one camera frame: detections (cached, tracked) → instruction targets among
the detected names → Target / Surrounding / Background groups → k tokens per group.

Defined outputs where the input gives nothing to parse (each logs a warning, never raises):

* a malformed image (not RGB uint8 H×W×3): no detections, every token slot empty;
* no detection: every slot empty;
* an instruction naming nothing visible (or no instruction): no target; foreground objects are
  Surrounding, static ones Background.

With the ``clip`` rule the token indices refer to the CLIP vision encoder's patch grid, so the
policy's image encoder must use the same grid (the policy node refuses a mismatch).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedvla.config import ConfigError, require
from fedvla.iosp.targets import TargetConfig, TargetExtractor, TargetMatch
from fedvla.iosp.tokens import (SelectionRule, TokenSelectionConfig, group_detections, select_by_overlap,
                                select_by_similarity, tokens_on_objects)
from fedvla.iosp.tracking import CachedDetector
from fedvla.iosp.types import Detection, ObjectGroup, SelectedTokens

log = logging.getLogger("fedvla.iosp")


@dataclasses.dataclass(kw_only=True)
class SceneParserConfig(TokenSelectionConfig, TargetConfig):
    patch_rows: int = 8  # the policy image encoder's patch grid (PolicyConfig.patch_grid)
    patch_cols: int = 8
    detect_every_n: int = 5  # run the detector on every n-th frame, track in between
    clip_model: str = "ViT-B-32"  # open_clip architecture (clip rule)
    clip_checkpoint: str = ""  # local open_clip weights (clip rule); empty: random weights, a warning

    def __post_init__(self) -> None:
        TokenSelectionConfig.__post_init__(self)
        TargetConfig.__post_init__(self)
        require(self.patch_rows >= 1 and self.patch_cols >= 1, "patch_rows", "the patch grid must not be empty")
        require(self.detect_every_n >= 1, "detect_every_n", f"must be at least 1, got {self.detect_every_n}")


@dataclasses.dataclass
class CameraParse:
    camera: str
    instruction: str
    detections: list[Detection]
    groups: list[ObjectGroup]
    targets: list[TargetMatch]
    selection: SelectedTokens
    grid: tuple[int, int]
    timings_ms: dict[str, float]
    object_tokens: list[np.ndarray]  # per detection: the selected tokens lying on it (tokens_on_objects)


def group_names(detections: list[Detection], groups: list[ObjectGroup], group: ObjectGroup) -> list[str]:
    """The distinct object names in one group, sorted."""
    return sorted({d.name for d, g in zip(detections, groups) if g is group})


class SceneParser:
    def __init__(self, config: SceneParserConfig, detectors: Mapping[str, Callable[[Any], list[Detection]]],
                 *, extractor: TargetExtractor | None = None, clip=None) -> None:
        if not detectors:
            raise ConfigError("detectors", "no camera has a detector", "one detector per camera")
        self.config = config
        self.detectors = {camera: CachedDetector(detect, every_n=config.detect_every_n)
                          for camera, detect in detectors.items()}
        self.extractor = extractor or TargetExtractor(config)
        self.clip = clip
        if config.selection_rule is SelectionRule.CLIP and self.clip is None:
            from fedvla.iosp.models import ClipEncoder

            self.clip = ClipEncoder(config.clip_model, config.clip_checkpoint)

    def reset(self) -> None:
        """New episode or scene: forget cached detections."""
        for detector in self.detectors.values():
            detector.reset()

    def parse(self, camera: str, image: np.ndarray, instruction: str, *, detector_input: Any = None) -> CameraParse:
        """One frame of one camera. The camera's detector reads ``detector_input`` where it is given
        (a simulated frame's labels, :class:`fedvla.iosp.types.LabelledFrame`), else the image."""
        config = self.config
        grid = (config.patch_rows, config.patch_cols)
        if camera not in self.detectors:
            raise ConfigError("camera", f"no detector for camera {camera!r}", ", ".join(self.detectors))
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) == 0:
            log.warning("%s: malformed image (%s %s): empty scene parse", camera, image.dtype, image.shape)
            return CameraParse(camera, instruction, [], [], [], SelectedTokens.empty(config.tokens_per_group), grid, {}, [])
        timings = {}
        start = time.perf_counter()
        detections = self.detectors[camera](image if detector_input is None else detector_input)
        timings["detect"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        vocabulary = list(dict.fromkeys(d.name for d in detections))
        targets = self.extractor.targets(instruction, vocabulary) if instruction and vocabulary else []
        groups = group_detections(detections, {t.name for t in targets})
        timings["group"] = (time.perf_counter() - start) * 1e3
        if not detections:  # (an instruction naming nothing visible: the target extractor warns)
            log.warning("%s: no object detected: every token slot is empty", camera)
        start = time.perf_counter()
        if config.selection_rule is SelectionRule.CLIP:
            selection, grid = self._select_by_clip(image, detections, groups)
        else:
            selection = select_by_overlap(detections, groups, image.shape[:2], grid, config)
        object_tokens = tokens_on_objects(detections, groups, selection, image.shape[:2], grid)
        timings["select"] = (time.perf_counter() - start) * 1e3
        return CameraParse(camera, instruction, detections, groups, targets, selection, grid, timings, object_tokens)

    def _select_by_clip(self, image: np.ndarray, detections: list[Detection],
                        groups: list[ObjectGroup]) -> tuple[SelectedTokens, tuple[int, int]]:
        patches, grid = self.clip.encode_patches(image)
        texts = []
        for group in ObjectGroup:
            names = group_names(detections, groups, group)
            texts.append(self.clip.encode_text(names).mean(axis=0) if names else None)
        return select_by_similarity(patches, texts, self.config), grid
