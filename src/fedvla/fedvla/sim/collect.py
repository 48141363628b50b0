"""Demonstrations for the simulation study (FedVLA §4.1): Meta-World's scripted experts, recorded
the way a robot records them.

One dataset per task (one federated client per task: non-iid, as the paper). Each episode:

* a layout from Meta-World's seeded task variations (``MT1(task, seed).train_tasks``; object and
  goal positions differ per episode) and the hand's start moved by up to ``hand_init_noise_m``
  per axis: the paper randomises both the robot's initial pose and the layout;
* at every step, three 128×128 RGB views (policy cameras ``corner``, ``top``, ``shoulder`` =
  Meta-World's ``corner``, ``topview`` and ``corner2``; the ``corner`` cameras render
  upside-down and are turned upright by :class:`~fedvla.sim.metaworld_scene.SceneRenderer`),
  proprioception (hand position xyz and gripper opening: the first four observation values), the
  expert's action (dx, dy, dz, gripper in [-1, 1]), and with ``iosp`` the scene parser's token
  selection per camera (the simulator's segmentation as detector, box/mask rule on the policy's
  patch grid: what the ``scene_parser`` node publishes live);
* the task's natural instruction and its sentence embedding.

Only successful demonstrations of at most ``max_steps`` steps are kept (the paper's episodes have
40–100 steps); a layout the expert fails on is skipped and counted.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import require
from fedvla.data.episodes import EpisodeWriter
from fedvla.iosp.parser import SceneParser, SceneParserConfig
from fedvla.iosp.tokens import SelectionRule
from fedvla.robot.retarget import ActionFrame, ActionKind, ActionSpace
from fedvla.sim.detector import SimSegmentationDetector
from fedvla.sim.metaworld_scene import (PAPER_TASKS, STUDY_CAMERAS, SceneRenderer, expert_policy,  # noqa: F401
                                        meta_world_task_names, metaworld_benchmark, start_episode)

log = logging.getLogger(__name__)

# The instruction a person would give for each task of the study (and what the scene parser reads).
TASK_INSTRUCTIONS = {
    "door-lock-v3": "lock the door",
    "drawer-close-v3": "push the drawer closed",
    "sweep-into-v3": "sweep the puck into the hole",
    "window-open-v3": "slide the window open",
}
# Policy camera name → Meta-World camera (config/camera_sim.yaml names the same views; a test
# keeps the two in sync).
PROPRIO_DIM = 4  # hand x, y, z and gripper opening: Meta-World observation[:4]
PROPRIO_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_opening")  # their JointState names in bags
ACTION_DIM = 4  # dx, dy, dz (hand motion, ~1 cm per unit) and gripper effort
# Meta-World's actions in the arm runtime's terms: hand steps along the base axes, 1 cm per unit
# (its action_scale), gripper effort > 0 closes.
METAWORLD_ACTION_SPACE = ActionSpace(ActionKind.EE_DELTA, ActionFrame.BASE, ACTION_DIM, 0.01, 0.05)


@dataclasses.dataclass(kw_only=True)
class CollectConfig:
    tasks: tuple[str, ...] = PAPER_TASKS
    episodes_per_task: int = 30
    max_steps: int = 100  # longer expert runs are discarded
    image_size: int = 128
    cameras: tuple[str, ...] = tuple(STUDY_CAMERAS)
    seed: int = 0  # Meta-World layouts (MT1 seed) and the hand start noise
    hand_init_noise_m: float = 0.05
    iosp: bool = True
    iosp_grid: tuple[int, int] = (8, 8)  # the policy's patch grid (hpt_small at 128 px: 8 x 8)
    iosp_tokens_per_group: int = 8  # the paper's top-8 per group
    max_attempts_per_episode: int = 3  # give up on a task after this many failed layouts per episode wanted
    # IOSP's detector: empty for the simulator's segmentation (exact masks: an oracle), or a trained
    # YOLOv8 (fedvla study-detector's output or its .pt), which meets a camera's detection errors.
    detector: str = ""

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.cameras = tuple(self.cameras)
        self.iosp_grid = tuple(self.iosp_grid)
        known = set(meta_world_task_names())
        for task in self.tasks:
            require(task in known, "tasks", f"unknown Meta-World task {task!r}", ", ".join(PAPER_TASKS))
            require(task in TASK_INSTRUCTIONS, "tasks", f"no instruction for {task!r}",
                    f"one of {', '.join(TASK_INSTRUCTIONS)} (add yours to TASK_INSTRUCTIONS)")
        for camera in self.cameras:
            require(camera in STUDY_CAMERAS, "cameras", f"unknown study camera {camera!r}", ", ".join(STUDY_CAMERAS))
        require(self.episodes_per_task >= 1, "episodes_per_task", f"must be at least 1, got {self.episodes_per_task}")
        require(self.max_steps >= 1, "max_steps", f"must be at least 1, got {self.max_steps}")
        require(self.image_size >= 16, "image_size", f"{self.image_size} is too small", "at least 16 pixels")
        require(self.hand_init_noise_m >= 0, "hand_init_noise_m", "must not be negative")
        require(len(self.iosp_grid) == 2 and min(self.iosp_grid) >= 1, "iosp_grid", f"{self.iosp_grid}", "(rows, cols)")
        require(self.iosp_tokens_per_group >= 1, "iosp_tokens_per_group", "must be at least 1")
        require(self.max_attempts_per_episode >= 1, "max_attempts_per_episode", "must be at least 1")


@dataclasses.dataclass
class TaskCollection:
    task: str
    directory: Path
    episodes: int
    steps: int
    failed_layouts: int  # layouts the expert did not finish within max_steps
    seconds: float

    @property
    def mean_length(self) -> float:
        return self.steps / max(self.episodes, 1)


class EpisodeRecorder:
    """Renders the study's cameras (and IOSP selections) of one Meta-World env, step by step."""

    def __init__(self, env, task: str, config: CollectConfig) -> None:
        self.config = config
        model, data = env.unwrapped.model, env.unwrapped.data
        self.renderer = SceneRenderer(model, data, config.image_size, config.image_size)
        self.cameras = [self.renderer.camera(STUDY_CAMERAS[name]) for name in config.cameras]
        self.parser = None
        if config.iosp:
            rows, cols = config.iosp_grid
            parser_config = SceneParserConfig(patch_rows=rows, patch_cols=cols, selection_rule=SelectionRule.BOX_MASK,
                                              tokens_per_group=config.iosp_tokens_per_group, detect_every_n=1)
            if config.detector:
                from fedvla.sim.detector_data import trained_detector

                detect = trained_detector(config.detector, config.tasks).detect  # on the rendered image
                self.parser = SceneParser(parser_config, {name: detect for name in config.cameras})
            else:
                self.detector = SimSegmentationDetector(model, self.renderer, task=task)
                self.parser = SceneParser(parser_config, {name: (lambda _image, c=camera: self.detector.detect(c))
                                                          for name, camera in zip(config.cameras, self.cameras)})

    def images(self) -> list[np.ndarray]:
        return [self.renderer.render(camera) for camera in self.cameras]

    def selections(self, images: list[np.ndarray], instruction: str):
        """One SelectedTokens per camera (None without IOSP)."""
        if self.parser is None:
            return None
        return [self.parser.parse(name, image, instruction).selection for name, image in zip(self.config.cameras, images)]

    def close(self) -> None:
        self.renderer.close()


def layout_key(layout) -> tuple[float, ...]:
    """What tells two layouts apart: the task's random vector (object and goal positions, m),
    rounded to 0.1 mm. Meta-World stores it pickled in the task it generated itself."""
    import pickle

    return tuple(float(v) for v in np.round(pickle.loads(layout.data)["rand_vec"], 4))


def control_rate_hz(env) -> float:
    """Meta-World's control rate: one action per ``frame_skip`` physics steps (80 Hz for v3)."""
    return 1.0 / (env.unwrapped.frame_skip * env.unwrapped.model.opt.timestep)


def collect_task(task: str, directory: str | Path, config: CollectConfig, language: np.ndarray,
                 on_step: Callable[[], None] | None = None) -> TaskCollection:
    """Record ``config.episodes_per_task`` successful expert episodes of ``task`` into ``directory``."""
    started = time.monotonic()
    instruction = TASK_INSTRUCTIONS[task]
    env, layouts = metaworld_benchmark(task, config.seed)
    expert = expert_policy(task)
    recorder = EpisodeRecorder(env, task, config)
    writer = EpisodeWriter(directory, camera_names=config.cameras, image_size=config.image_size,
                           proprio_dim=PROPRIO_DIM, action_dim=ACTION_DIM,
                           control_rate_hz=control_rate_hz(env),
                           iosp_grid=config.iosp_grid if config.iosp else None,
                           iosp_tokens_per_group=config.iosp_tokens_per_group if config.iosp else 0,
                           action_space=METAWORLD_ACTION_SPACE.to_dict())
    rng = np.random.default_rng(config.seed)
    hand_home = np.asarray(env.hand_init_pos, dtype=np.float64).copy()
    kept = steps = failed = 0
    # Resuming an interrupted collection: keep its episodes, continue with the next layouts.
    already = attempt = len(writer.meta.episodes)
    try:
        while already + kept < config.episodes_per_task:
            if failed >= config.max_attempts_per_episode * config.episodes_per_task:
                raise RuntimeError(f"{task}: the expert failed on {failed} layouts (max_steps {config.max_steps} "
                                   "too small?)")
            observation = start_episode(env, layouts, attempt, rng, hand_home, config.hand_init_noise_m)
            attempt += 1
            episode = record_expert_episode(env, expert, recorder, observation, instruction, config.max_steps, on_step)
            if episode is None:
                failed += 1
                continue
            images, proprio, actions, selections = episode
            extra = {}
            if selections is not None:
                extra = {"iosp_indices": np.stack([[s.indices for s in step] for step in selections]),
                         "iosp_valid": np.stack([[s.valid for s in step] for step in selections])}
            writer.add_episode(images, proprio, actions, instruction=instruction, language=language, **extra)
            kept, steps = kept + 1, steps + len(actions)
    finally:
        recorder.close()
        env.close()
    return TaskCollection(task=task, directory=Path(directory), episodes=kept, steps=steps, failed_layouts=failed,
                          seconds=time.monotonic() - started)


def record_expert_episode(env, expert, recorder: EpisodeRecorder, observation: np.ndarray, instruction: str,
                          max_steps: int, on_step: Callable[[], None] | None = None):
    """(images (T, V, 3, H, W), proprio (T, 4), actions (T, 4), selections or None) of one
    successful expert run, or None when the task is not done within ``max_steps``."""
    images, proprio, actions, selections = [], [], [], []
    for _ in range(max_steps):
        views = recorder.images()
        action = np.clip(np.asarray(expert.get_action(observation), dtype=np.float64), -1.0, 1.0)
        images.append(np.stack(views).transpose(0, 3, 1, 2))
        proprio.append(observation[:PROPRIO_DIM].astype(np.float32))
        actions.append(action.astype(np.float32))
        chosen = recorder.selections(views, instruction)
        if chosen is not None:
            selections.append(chosen)
        observation, _, _, truncated, info = env.step(action)
        if on_step is not None:
            on_step()
        if info.get("success"):
            return np.stack(images), np.stack(proprio), np.stack(actions), (selections or None)
        if truncated:
            break
    return None


def collect_study_data(config: CollectConfig, output: str | Path, *, language_model_path: str = "",
                       show_progress: bool = True) -> dict[str, TaskCollection]:
    """One dataset per task under ``output/<task>``, with a progress bar over all steps."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedvla.language import shared_instruction_encoder

    encoder = shared_instruction_encoder(language_model_path)
    output = Path(output)
    results: dict[str, TaskCollection] = {}
    estimate = config.episodes_per_task * config.max_steps * len(config.tasks)
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("steps"), TimeElapsedColumn(), disable=not show_progress) as progress:
        bar = progress.add_task("collect", total=estimate)
        for task in config.tasks:
            progress.update(bar, description=f"collect {task}")
            result = collect_task(task, output / task, config, encoder.encode(TASK_INSTRUCTIONS[task]),
                                  on_step=lambda: progress.advance(bar))
            results[task] = result
            log.info("%s: %d episodes, mean %.0f steps, %d layouts failed, %.0f s", task, result.episodes,
                     result.mean_length, result.failed_layouts, result.seconds)
        progress.update(bar, total=progress.tasks[0].completed)
    return results
