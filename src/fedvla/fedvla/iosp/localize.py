"""Where the instruction's target object is, in 3-D: a scene parse plus the aligned depth image.

The arm runtime's object-centric actions (skill-centric FL §5: ``T_r^w = T_o^w T_h^o``) need the
object's position. The scene parse knows *which* pixels show the target (its mask, or its box
where the detector gives no mask); the depth image aligned to the colour image says how far away
they are. The located position is the centroid of the target's visible surface:

1. the pixels of the target's mask (or of the central ``box_core_fraction`` of its box: a box also
   holds background at its corners) with a depth inside ``[min_depth_m, max_depth_m]`` (0 is
   "no depth" in the realsense-ros 16UC1 convention);
2. their median depth ``z̃``; only pixels within ``depth_band_m`` of it are kept, so edges that
   fall on the table or the wall behind do not drag the centroid;
3. each kept pixel back-projected with the pinhole intrinsics ``K`` (x right, y down, z forward
   in the camera's optical frame), and the mean of those points.

Fewer than ``min_depth_pixels`` kept pixels is no position (the object is too far, too close, or
its depth is missing), reported as such rather than guessed. Orientation is not estimated: depth
on a parse gives a position, and the driver treats the object's axes as parallel to the robot
base (see :class:`fedvla.robot.runtime.ArmDriverConfig.object_position_topic`).

Which target: the first of the instruction's targets (in the order the instruction names them)
that is detected, where a verb compound comes first ("lock the door" names the door, but the verb
acts on the door lock); among its detections, the highest score, then the largest.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fedvla.config import require, require_positive
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.targets import MatchRule
from fedvla.iosp.types import Detection, ObjectGroup


@dataclasses.dataclass
class TargetLocatorConfig:
    """Field names are the scene_parser node's parameters."""

    locate_target: bool = True  # publish the target's position when the camera has an aligned depth image
    depth_scale_m: float = 0.001  # metres per depth unit (realsense-ros and our cameras: 16UC1 millimetres)
    min_depth_m: float = 0.1  # nearer is invalid (a D435i sees from ~0.1 m)
    max_depth_m: float = 3.0  # farther is invalid (noise grows with the square of the distance)
    depth_band_m: float = 0.05  # keep pixels within this of the target's median depth
    min_depth_pixels: int = 10  # fewer valid pixels on the target: no position
    box_core_fraction: float = 0.5  # without a mask: use this central fraction of the box's width and height

    def __post_init__(self) -> None:
        require_positive(self.depth_scale_m, "depth_scale_m")
        require_positive(self.min_depth_m, "min_depth_m")
        require(self.max_depth_m > self.min_depth_m, "max_depth_m",
                f"{self.max_depth_m} is not above min_depth_m {self.min_depth_m}", "a distance > min_depth_m")
        require_positive(self.depth_band_m, "depth_band_m")
        require(self.min_depth_pixels >= 1, "min_depth_pixels", f"must be at least 1, got {self.min_depth_pixels}")
        require(0.0 < self.box_core_fraction <= 1.0, "box_core_fraction",
                f"{self.box_core_fraction} is outside (0, 1]", "0 < x <= 1")


@dataclasses.dataclass(frozen=True)
class TargetLocation:
    name: str
    position: np.ndarray  # (3,) metres in the camera's optical frame
    pixels: int  # depth pixels the position is the centroid of
    detection: Detection


def primary_target(parse: CameraParse) -> Detection | None:
    """The detection the instruction acts on (see the module docstring), or None."""
    targets = [d for d, g in zip(parse.detections, parse.groups) if g is ObjectGroup.TARGET]
    for match in sorted(parse.targets, key=lambda m: m.rule is not MatchRule.VERB_COMPOUND):  # stable
        named = [d for d in targets if d.name == match.name]
        if named:
            return max(named, key=lambda d: (d.score, d.box_area()))
    return max(targets, key=lambda d: (d.score, d.box_area()), default=None)


def target_region(detection: Detection, shape: tuple[int, int], core_fraction: float) -> np.ndarray:
    """(H, W) bool: the detection's mask, or the central ``core_fraction`` of its box."""
    if detection.mask is not None and detection.mask.shape == shape:
        return detection.mask.astype(bool)
    region = np.zeros(shape, bool)
    x0, y0, x1, y1 = detection.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * core_fraction / 2, (y1 - y0) * core_fraction / 2
    rows = slice(max(0, int(np.floor(cy - half_h))), min(shape[0], int(np.ceil(cy + half_h))))
    cols = slice(max(0, int(np.floor(cx - half_w))), min(shape[1], int(np.ceil(cx + half_w))))
    region[rows, cols] = True
    return region


def surface_centroid(depth: np.ndarray, region: np.ndarray, camera_matrix: np.ndarray,
                     config: TargetLocatorConfig) -> tuple[np.ndarray, int] | None:
    """(centroid in the optical frame, pixels used) of the region's depth surface, or None."""
    depth_m = np.asarray(depth, dtype=np.float64) * config.depth_scale_m
    valid = region & np.isfinite(depth_m) & (depth_m >= config.min_depth_m) & (depth_m <= config.max_depth_m)
    if np.count_nonzero(valid) < config.min_depth_pixels:
        return None
    median = np.median(depth_m[valid])
    kept = valid & (np.abs(depth_m - median) <= config.depth_band_m)
    count = int(np.count_nonzero(kept))
    if count < config.min_depth_pixels:
        return None
    v, u = np.nonzero(kept)
    z = depth_m[v, u]
    fx, fy, cx, cy = camera_matrix[0, 0], camera_matrix[1, 1], camera_matrix[0, 2], camera_matrix[1, 2]
    points = np.column_stack([(u - cx) / fx * z, (v - cy) / fy * z, z])
    return points.mean(axis=0), count


def locate_target(parse: CameraParse, depth: np.ndarray, camera_matrix: np.ndarray,
                  config: TargetLocatorConfig) -> TargetLocation | None:
    """The instruction's target in 3-D (camera optical frame), or None when it is not detected
    or has too little valid depth. ``depth`` is the aligned depth image in sensor units."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth image must be (H, W), got shape {depth.shape}")
    camera_matrix = np.asarray(camera_matrix, dtype=np.float64)
    if camera_matrix.shape != (3, 3) or camera_matrix[0, 0] <= 0 or camera_matrix[1, 1] <= 0:
        raise ValueError("camera matrix must be 3x3 with positive focal lengths")
    detection = primary_target(parse)
    if detection is None:
        return None
    found = surface_centroid(depth, target_region(detection, depth.shape, config.box_core_fraction),
                             camera_matrix, config)
    if found is None:
        return None
    position, pixels = found
    return TargetLocation(name=detection.name, position=position, pixels=pixels, detection=detection)
