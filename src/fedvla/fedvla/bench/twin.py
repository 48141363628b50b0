"""``fedvla bench twin``: the workcell twin's figures (issue 21), printed, never asserted.

* **Real-time factor** with the camera rendering: the controller and physics in their own process
  (:class:`~fedvla.twin.process.WorkcellProcess`, paced by the 125 Hz controller cycle) while this
  process renders the D435i's colour and depth at the target rate, as ``workcell_sim`` does.
  RTF = simulated seconds / wall seconds over the window (1.0: the physics keeps real time).
* **Camera rate** reached beside the physics.
* **Expert demonstrations per minute**: read from a ``fedvla twin demos`` run's ``demos.json``
  (the episodes' own wall time, reset to import).

The end-to-end latency (camera frame stamp to the first servo setpoint of the chunk that answered
it) runs the whole graph: :mod:`fedvla_ros.tools.twin_latency` (``fedvla bench twin --checkpoint``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TwinFigures:
    wall_s: float
    sim_s: float
    frames: int
    target_fps: float

    @property
    def real_time_factor(self) -> float:
        return self.sim_s / self.wall_s

    @property
    def camera_fps(self) -> float:
        return self.frames / self.wall_s


def bench_real_time(seconds: float = 20.0, fps: float = 30.0, task: str = "sorting_pills") -> TwinFigures:
    """Physics in its process, rendering here at ``fps`` (or as fast as it goes) for ``seconds``."""
    from fedvla.twin.camera import TwinCamera
    from fedvla.twin.process import WorkcellProcess
    from fedvla.twin.scene import SceneConfig
    from fedvla.twin.ur_controller import free_loopback_host
    from fedvla.twin.workcell import WorkcellConfig

    scene = SceneConfig()
    workcell = WorkcellProcess(WorkcellConfig(task=task, host=free_loopback_host()), scene)
    camera = TwinCamera(scene)
    try:
        camera.render(workcell.scene_state(), depth=True)  # (the first render compiles shaders)
        period = 1.0 / fps
        sim_start, wall_start, frames = workcell.scene_state().time_s, time.monotonic(), 0
        next_frame = wall_start
        while time.monotonic() - wall_start < seconds:
            camera.render(workcell.scene_state(), depth=True)
            frames += 1
            next_frame = max(next_frame + period, time.monotonic() - period)
            time.sleep(max(0.0, next_frame - time.monotonic()))
        wall = time.monotonic() - wall_start
        sim = workcell.scene_state().time_s - sim_start
    finally:
        camera.close()
        workcell.stop()
    return TwinFigures(wall_s=wall, sim_s=sim, frames=frames, target_fps=fps)


def demonstrations_per_minute(demos_dir: Path) -> tuple[float, int]:
    """(demonstrations per minute, demonstrations) of a ``fedvla twin demos`` run."""
    record = json.loads((Path(demos_dir) / "demos.json").read_text())
    return float(record["demonstrations_per_minute"]), len(record["episodes"])
