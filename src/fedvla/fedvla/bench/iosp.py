"""``fedvla bench iosp``: per-frame IOSP latency with the offline defaults (the simulator's
segmentation detector, the rule-based target extractor, box/mask token selection) on a Meta-World
scene, at 640×480 (one camera) and 3 × 128×128 (the paper's three cameras), with the detection
cache on (detector every N frames) and off. Figures are printed, never asserted.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

# Before anything imports mujoco: this module picks the headless GL backend (MUJOCO_GL).
from fedvla.sim.detector import SimSegmentationDetector
from fedvla.sim.metaworld_scene import make_metaworld_env

from fedvla.iosp.parser import SceneParser, SceneParserConfig


@dataclasses.dataclass
class IospFigures:
    setting: str
    cached: bool
    stage_ms: dict[str, float]  # median per frame (all cameras), per stage
    total_ms: float  # median per frame (all cameras)
    total_mean_ms: float  # mean per frame: counts the frames that run the detector when cached

    @property
    def rate_hz(self) -> float:
        """Frames per second sustained (from the mean, so detector frames are paid for)."""
        return 1000.0 / self.total_mean_ms if self.total_mean_ms > 0 else float("inf")


def bench_iosp(task: str = "drawer-close-v3", instruction: str = "push the drawer closed", *, frames: int = 30,
               every_n: int = 5, seed: int = 4) -> list[IospFigures]:
    env = make_metaworld_env(task, seed)
    settings = [("640x480, 1 camera", 640, 480, ("corner",)), ("128x128, 3 cameras", 128, 128, ("corner", "topview", "corner2"))]
    figures = []
    try:
        for label, width, height, cameras in settings:
            detector = SimSegmentationDetector.for_env(env, width, height)
            try:
                models = {name: detector.camera(name) for name in cameras}
                images = {name: detector.renderer.render(models[name]) for name in cameras}
                grid = (height // 16, width // 16)
                for cached in (False, True):
                    config = SceneParserConfig(patch_rows=grid[0], patch_cols=grid[1],
                                               detect_every_n=every_n if cached else 1)
                    parser = SceneParser(config, {n: (lambda _, m=models[n]: detector.detect(m)) for n in cameras})
                    parser.parse(cameras[0], images[cameras[0]], instruction)  # warm-up: models, caches
                    parser.reset()
                    stages: dict[str, list[float]] = {}
                    totals = []
                    for _ in range(frames):
                        frame = dict.fromkeys(("detect", "group", "select"), 0.0)
                        start = time.perf_counter()
                        for name in cameras:
                            for stage, ms in parser.parse(name, images[name], instruction).timings_ms.items():
                                frame[stage] += ms
                        totals.append((time.perf_counter() - start) * 1e3)
                        for stage, ms in frame.items():
                            stages.setdefault(stage, []).append(ms)
                    figures.append(IospFigures(setting=label, cached=cached,
                                               stage_ms={k: statistics.median(v) for k, v in stages.items()},
                                               total_ms=statistics.median(totals),
                                               total_mean_ms=statistics.fmean(totals)))
            finally:
                detector.close()
    finally:
        env.close()
    return figures
