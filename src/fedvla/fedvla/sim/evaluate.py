"""Closed-loop evaluation in Meta-World (FedVLA §4: 15 trials × 5 repeats per task, success 1/0).

The policy runs through :class:`fedvla.app.policy_runtime.PolicyRuntime` loaded from its checkpoint:
the code the ``policy_node`` runs on the robot. Per step the simulated cameras render the policy's
views, the scene parser (simulator segmentation as detector) selects the IOSP tokens when the
policy uses them, and the policy's chunk is executed open-loop for ``execute_steps`` actions
before it replans, as on the robot.

Trials use layouts the demonstrations never showed: repeat ``r`` draws its layouts from
``MT1(task, seed=EvalConfig.seed + r)``, leaving out any that coincides (within 0.1 mm,
:func:`fedvla.sim.collect.layout_key`) with a layout of the collection's seed
(``EvalConfig.training_seed``; a one-dimensional layout such as drawer-close's does coincide at
times), and the hand's start is moved by the same noise as in collection. A trial succeeds when Meta-World
reports success within ``max_steps`` steps.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla.config import require
from fedvla.data.bag_export import EpisodeBagWriter
from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
from fedvla.sim.collect import (PROPRIO_DIM, PROPRIO_NAMES, STUDY_CAMERAS, TASK_INSTRUCTIONS, CollectConfig,
                                EpisodeRecorder, control_rate_hz, layout_key, metaworld_benchmark, start_episode)


@dataclasses.dataclass(kw_only=True)
class EvalConfig:
    trials: int = 15  # per repeat and task (the paper: 15)
    repeats: int = 5  # the paper: 5
    max_steps: int = 150  # the experts finish within ~45–130 steps
    seed: int = 1000  # layouts: MT1 seed + repeat; keep it apart from the collection seed
    training_seed: int = 0  # the collection's MT1 seed: none of its layouts is used for a trial
    detector: str = ""  # IOSP's detector, as in the collection (CollectConfig.detector)
    hand_init_noise_m: float = 0.05
    device: str = "cpu"
    record_trials: int = 0  # the first n trials of repeat 0 are also written as rosbag2 episodes

    def __post_init__(self) -> None:
        require(self.trials >= 1, "trials", f"must be at least 1, got {self.trials}")
        require(self.repeats >= 1, "repeats", f"must be at least 1, got {self.repeats}")
        require(self.max_steps >= 1, "max_steps", f"must be at least 1, got {self.max_steps}")


@dataclasses.dataclass
class TaskEvaluation:
    task: str
    checkpoint: str
    successes: np.ndarray  # (repeats, trials) bool
    steps: np.ndarray  # (repeats, trials) steps taken (max_steps where it failed)
    policy_latency_s: list[float]
    experts_per_token: float  # mean over policy steps
    group_expert_counts: np.ndarray | None  # (3, K) summed over layers and steps (IOSP policies)
    group_tokens: np.ndarray | None  # (3,) tokens per group summed over layers and steps

    @property
    def success_rate(self) -> float:
        return float(self.successes.mean())

    @property
    def repeat_rates(self) -> np.ndarray:
        return self.successes.mean(axis=1)

    def to_dict(self) -> dict:
        return {"task": self.task, "checkpoint": self.checkpoint, "success_rate": self.success_rate,
                "repeat_success_rates": self.repeat_rates.tolist(), "successes": self.successes.astype(int).tolist(),
                "steps": self.steps.tolist(), "policy_latency_ms_median": 1000 * float(np.median(self.policy_latency_s)),
                "experts_per_token": self.experts_per_token,
                "group_expert_counts": None if self.group_expert_counts is None else self.group_expert_counts.tolist(),
                "group_tokens": None if self.group_tokens is None else self.group_tokens.tolist()}


class ClosedLoopStats:
    """What the policy did over an evaluation (latency, experts per token, per-group counts)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.experts_per_token: list[float] = []
        self.group_counts: np.ndarray | None = None
        self.group_tokens: np.ndarray | None = None

    def add(self, step) -> None:
        self.latencies.append(step.latency_s)
        self.experts_per_token.append(step.experts_per_token)
        if step.group_expert_counts is not None:
            counts, tokens = step.group_expert_counts.sum(0), step.group_tokens.sum(0)
            self.group_counts = counts if self.group_counts is None else self.group_counts + counts
            self.group_tokens = tokens if self.group_tokens is None else self.group_tokens + tokens


def run_closed_loop(env, runtime: PolicyRuntime, recorder: EpisodeRecorder, observation: np.ndarray,
                    instruction: str, max_steps: int, stats: ClosedLoopStats,
                    on_step: Callable[[], None] | None = None, bag: EpisodeBagWriter | None = None) -> tuple[bool, int]:
    """(success, steps) of one trial: replan every ``execute_steps`` actions. With ``bag``, every
    step's views, proprio, scene parse and the chunk issued are recorded, as the robot's recorder
    would see them."""
    execute = runtime.model_config.execute_steps
    queue: list[np.ndarray] = []
    for step in range(max_steps):
        views = selections = chunk = None
        if not queue or bag is not None:
            views = recorder.images()
            selections = recorder.selections(views, instruction)
        if not queue:
            result = runtime.step(views, observation[:PROPRIO_DIM], instruction, selections)
            stats.add(result)
            chunk = result.chunk
            queue = list(result.chunk[:execute])
        if bag is not None:
            bag.add_step(views, observation[:PROPRIO_DIM], chunk, selections, runtime.model_config.patch_grid)
        observation, _, _, truncated, info = env.step(np.clip(queue.pop(0), -1.0, 1.0))
        if on_step is not None:
            on_step()
        if info.get("success"):
            return True, step + 1
        if truncated:
            break
    return False, max_steps


def held_out_layouts(task: str, seed: int, training_seed: int) -> tuple[object, list]:
    """(env, layouts): ``MT1(task, seed)``'s layouts without those of ``MT1(task, training_seed)``."""
    import metaworld

    training = {layout_key(layout) for layout in metaworld.MT1(task, seed=training_seed).train_tasks}
    env, layouts = metaworld_benchmark(task, seed)
    return env, [layout for layout in layouts if layout_key(layout) not in training]


def trial_starts(task: str, config: EvalConfig):
    """Per repeat: (repeat, env, start) where ``start(trial)`` resets ``env`` to that trial's layout
    and hand start and returns the observation: the same trials for every policy and the expert."""
    for repeat in range(config.repeats):
        env, layouts = held_out_layouts(task, config.seed + repeat, config.training_seed)
        rng = np.random.default_rng(config.seed + repeat)
        hand_home = np.asarray(env.hand_init_pos, dtype=np.float64).copy()
        try:
            yield repeat, env, (lambda trial, env=env, layouts=layouts, rng=rng, home=hand_home:
                                start_episode(env, layouts, trial, rng, home, config.hand_init_noise_m))
        finally:
            env.close()


def evaluate_expert(task: str, config: EvalConfig) -> np.ndarray:
    """(repeats, trials) successes of Meta-World's scripted expert on the evaluation's own trials:
    the ceiling every learned policy is measured against (no rendering: the expert reads the state)."""
    from fedvla.sim.collect import expert_policy

    expert = expert_policy(task)
    successes = np.zeros((config.repeats, config.trials), dtype=bool)
    for repeat, env, start in trial_starts(task, config):
        for trial in range(config.trials):
            observation = start(trial)
            for _ in range(config.max_steps):
                observation, _, _, truncated, info = env.step(np.clip(expert.get_action(observation), -1.0, 1.0))
                if info.get("success"):
                    successes[repeat, trial] = True
                    break
                if truncated:
                    break
    return successes


def evaluate_checkpoint(checkpoint: str | Path, task: str, config: EvalConfig,
                        on_step: Callable[[], None] | None = None, bag_dir: str | Path | None = None,
                        skills_path: str | Path = "") -> TaskEvaluation:
    """Success of one policy checkpoint on one task over ``repeats`` × ``trials`` trials; the first
    ``config.record_trials`` trials are recorded to ``bag_dir/<task>_trial_<n>``. ``skills_path``: a
    saved skill set run on the checkpoint as its frozen base (:mod:`fedvla.skills.inference`)."""
    require(not config.record_trials or bag_dir is not None, "bag_dir", "record_trials needs a directory",
            "a directory for the recorded bags")
    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(checkpoint), device=config.device,
                                                skills_path=str(skills_path or "")))
    model = runtime.model_config
    unknown = [c for c in model.camera_names if c not in STUDY_CAMERAS]
    require(not unknown, "checkpoint", f"the policy's cameras {unknown} are not simulated study cameras",
            ", ".join(STUDY_CAMERAS))
    views = CollectConfig(tasks=(task,), cameras=model.camera_names, image_size=model.image_size, iosp=model.iosp,
                          iosp_grid=model.patch_grid, iosp_tokens_per_group=model.iosp_tokens_per_group,
                          detector=config.detector)
    instruction = TASK_INSTRUCTIONS[task]
    successes = np.zeros((config.repeats, config.trials), dtype=bool)
    steps = np.full((config.repeats, config.trials), config.max_steps, dtype=np.int64)
    stats = ClosedLoopStats()
    for repeat, env, start in trial_starts(task, config):
        recorder = EpisodeRecorder(env, task, views)
        try:
            for trial in range(config.trials):
                observation = start(trial)
                runtime.policy.reset()
                bag = None
                if repeat == 0 and trial < config.record_trials:
                    bag = EpisodeBagWriter(Path(bag_dir) / f"{task}_trial_{trial}", camera_names=model.camera_names,
                                           control_rate_hz=control_rate_hz(env), instruction=instruction,
                                           proprio_joint_names=PROPRIO_NAMES, iosp=model.iosp)
                try:
                    successes[repeat, trial], steps[repeat, trial] = run_closed_loop(
                        env, runtime, recorder, observation, instruction, config.max_steps, stats, on_step, bag)
                finally:
                    if bag is not None:
                        bag.close()
        finally:
            recorder.close()
    return TaskEvaluation(task=task, checkpoint=str(checkpoint), successes=successes, steps=steps,
                          policy_latency_s=stats.latencies,
                          experts_per_token=float(np.mean(stats.experts_per_token)) if stats.experts_per_token else 0.0,
                          group_expert_counts=stats.group_counts, group_tokens=stats.group_tokens)
