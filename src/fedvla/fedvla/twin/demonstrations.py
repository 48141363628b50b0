"""Expert demonstrations in process (:mod:`fedvla.twin.inprocess`: the driver's runtime on the
physics, simulated time, no ROS), written as the episode dataset a bag import of the same
demonstrations would give: per control step the D435i's colour image as the policy sees it
(:func:`fedvla.data.observations.policy_images`), the joints as the driver publishes them (six arm
joints and the gripper finger, :data:`fedvla.twin.expert.PROPRIO_JOINTS`) and the expert's action.

This is the fast path (no middleware, physics as fast as the machine allows) for the main job's
short twin episode; the paper's collection through the graph, recorded as rosbag2 episodes, is
``fedvla twin demos``.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedvla.twin.expert import CONTROL_RATE_HZ, EXPERT_ACTION_SPACE, PROPRIO_JOINTS, ExpertConfig, expert_agent


@dataclasses.dataclass(frozen=True)
class InProcessDemos:
    dataset: Path
    episodes: list[dict]  # per layout seed: task, seed, success, steps, detail, seconds (wall)

    @property
    def succeeded(self) -> int:  # written to the dataset (a failed demonstration is left out)
        return sum(e["success"] for e in self.episodes)


def record_in_process(task: str, seeds: Sequence[int], output: str | Path, image_size: int = 128,
                      max_steps: int = 100, show_progress: bool = True) -> InProcessDemos:
    """The expert on ``task`` for each layout seed; its successful demonstrations appended to the
    dataset ``output`` (created with the expert's action space)."""
    from fedvla import topics
    from fedvla.data.episodes import EpisodeWriter
    from fedvla.data.observations import policy_images
    from fedvla.language import shared_instruction_encoder
    from fedvla.twin.inprocess import InProcessTwin
    from fedvla.twin.workcell import Workcell, WorkcellConfig

    workcell = Workcell(WorkcellConfig(task=task))
    twin = InProcessTwin(workcell, EXPERT_ACTION_SPACE)
    lower, upper = twin.kinematics.gripper_limits
    encoder = shared_instruction_encoder("")
    writer = EpisodeWriter(output, camera_names=[topics.TWIN_CAMERA], image_size=image_size,
                           proprio_dim=len(PROPRIO_JOINTS), action_dim=EXPERT_ACTION_SPACE.action_dim,
                           control_rate_hz=CONTROL_RATE_HZ, action_space=EXPERT_ACTION_SPACE.to_dict())
    iterator = seeds
    if show_progress:
        from tqdm import tqdm

        iterator = tqdm(seeds, desc=f"expert demonstrations ({task}, in process)", unit="demo")
    episodes = []
    try:
        for seed in iterator:
            began = time.monotonic()
            images, proprio, actions = [], [], []

            def recording_agent(cell):
                act = expert_agent(cell, ExpertConfig())

                def step(observation):
                    decision = act(observation)
                    if decision is not None:  # the observation the action answers, as the bag would hold it
                        images.append(policy_images([cell.render(depth=False).rgb], image_size))
                        proprio.append([*observation.joint_positions, lower if observation.gripper_closed else upper])
                        actions.append(decision[0][0])
                    return decision

                return step

            result = twin.run_trial(task, int(seed), recording_agent, CONTROL_RATE_HZ, max_steps)
            if result.success:
                instruction = workcell.episode.instruction
                writer.add_episode(np.stack(images), np.asarray(proprio, dtype=np.float32), np.stack(actions),
                                   instruction=instruction, language=encoder.encode(instruction))
            episodes.append({"task": task, "seed": int(seed), "success": result.success, "steps": result.steps,
                             "detail": result.detail, "seconds": round(time.monotonic() - began, 2)})
    finally:
        workcell.close_camera()
    return InProcessDemos(dataset=Path(output), episodes=episodes)
