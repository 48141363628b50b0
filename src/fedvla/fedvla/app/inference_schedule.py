"""When the policy node takes its next observation: the inference modes of chunked execution.

* ``rate``: every ``1/rate_hz``, whatever the arm is executing (overlapping chunks; the node's
  behaviour before the modes existed).
* ``async``: the next chunk is computed while the current one executes. Once the executed actions
  left of the last chunk fall to ``refill_threshold`` of its executed horizon, the next
  observation is taken (LeRobot's async inference refills at the same kind of threshold). With a
  policy latency below that margin the driver never runs dry; with more, it holds at the chunk's
  last waypoint until the next one arrives (and says so in /diagnostics).
* ``sync``: observe, infer, then let every executed action of that chunk run before observing
  again: the arm waits for the policy at every chunk (the baseline ``fedvla bench realtime``
  compares against; pair it with the driver's ``time_aligned`` false, since the arm stood still
  while the policy ran).

Times are the node's clock in seconds. A chunk's executed actions run from its observation's time
(time-aligned) in ``rate`` and ``async``, from its publication in ``sync``.
"""
from __future__ import annotations

import dataclasses
import enum

from fedvla.config import parse_enum, require


class InferenceMode(str, enum.Enum):
    RATE = "rate"
    ASYNC = "async"
    SYNC = "sync"


def require_refill_threshold(value: float) -> None:
    require(0.0 <= value <= 1.0, "refill_threshold", f"{value} is outside [0, 1]", "a fraction of the executed horizon, 0..1")


@dataclasses.dataclass
class InferenceSchedule:
    mode: InferenceMode
    step_period_s: float  # between two actions of a chunk
    executed_steps: int  # actions of each chunk the driver executes
    refill_threshold: float = 0.5  # async: fraction of the executed horizon left that triggers the next step
    last_observed_s: float | None = None
    last_published_s: float | None = None
    pending: bool = False  # a computed chunk waits for its (delayed) publication

    def __post_init__(self) -> None:
        self.mode = parse_enum(InferenceMode, self.mode, "inference_mode")
        require_refill_threshold(self.refill_threshold)

    @property
    def horizon_s(self) -> float:
        return self.executed_steps * self.step_period_s

    @property
    def poll_period_s(self) -> float:
        """How often the node checks :meth:`due`: each action step in ``rate`` mode, finer otherwise."""
        return self.step_period_s if self.mode is InferenceMode.RATE else self.step_period_s / 4

    def due(self, now_s: float) -> bool:
        """Whether to take an observation and run the policy now."""
        if self.pending:
            return False
        if self.mode is InferenceMode.RATE or self.last_observed_s is None:
            return True
        if self.mode is InferenceMode.ASYNC:
            return now_s >= self.last_observed_s + (1.0 - self.refill_threshold) * self.horizon_s
        return self.last_published_s is not None and now_s >= self.last_published_s + self.horizon_s

    def observed(self, observed_s: float) -> None:
        """A step ran on the observation taken at ``observed_s``; its chunk is about to be published."""
        self.last_observed_s, self.last_published_s, self.pending = observed_s, None, True

    def published(self, now_s: float) -> None:
        self.last_published_s, self.pending = now_s, False
