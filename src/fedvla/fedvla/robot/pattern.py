"""A scripted end-effector motion as action chunks: bring-up and demo input for the arm runtime
when no trained policy is running (``motion_pattern`` node; the sim profile uses it).

The pattern is a horizontal circle of ``radius_m`` around the tool's start, one turn per
``period_s``, with the gripper closing for the first half of every ``gripper_period_s``. It is
expressed exactly as the policy's actions are (``ee_delta`` in action units, base frame), so it
goes through the same retargeting, IK and safety checks as the policy would.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fedvla.config import require, require_positive
from fedvla.robot.retarget import RetargetConfig

ACTION_NAMES = ("dx", "dy", "dz", "gripper")


@dataclasses.dataclass(kw_only=True)
class MotionPatternConfig:
    rate_hz: float = 5.0  # chunks per second (as a policy's rate)
    horizon: int = 8  # actions per chunk
    step_period_s: float = 0.1  # time between two actions of a chunk
    radius_m: float = 0.04
    period_s: float = 8.0  # one turn of the circle
    gripper_period_s: float = 4.0  # closed for the first half of each, then open
    position_scale_m: float = RetargetConfig.position_scale_m  # metres per action unit (the driver's)

    def __post_init__(self) -> None:
        for name in ("rate_hz", "step_period_s", "radius_m", "period_s", "gripper_period_s", "position_scale_m"):
            require_positive(getattr(self, name), name)
        require(self.horizon >= 1, "horizon", f"must be at least 1, got {self.horizon}")


def circle_chunk(t_s: float, config: MotionPatternConfig) -> np.ndarray:
    """(horizon, 4) ee_delta actions of the pattern from time ``t_s`` on."""
    times = t_s + config.step_period_s * np.arange(config.horizon + 1)
    angle = 2 * np.pi * times / config.period_s
    positions = config.radius_m * np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], axis=1)
    deltas = np.diff(positions, axis=0) / config.position_scale_m
    phase = np.mod(times[1:], config.gripper_period_s) / config.gripper_period_s
    gripper = np.where(phase < 0.5, 1.0, -1.0)
    return np.concatenate([deltas, gripper[:, None]], axis=1)
