"""What the controller runs: a received program (ur_rtde's control script, whose register handshake
the controller models, or any other URScript) and a joint-space motion in progress."""
from __future__ import annotations

import re

import numpy as np

_DEFAULT_REALTIME = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66})


class _Program:
    """A program the controller "runs": ur_rtde's control script (handshake modelled) or anything else."""

    def __init__(self, text: str, control_script: bool, register_offset: int, realtime: frozenset[int],
                 duration: float) -> None:
        self.text = text
        self.control_script = control_script
        self.offset = register_offset
        self.realtime = realtime
        self.duration = duration
        self.executing = False
        self.busy_until_done = False  # a synchronous move is running: the script loop is blocked
        self.started_at = 0.0

    @staticmethod
    def parse(text: str, duration: float, default_offset: int) -> _Program:
        control = "rtde_cmd()" in text or "RTDE Control Script" in text
        offset = default_offset
        m = re.search(r"reg_offset_int\s*=\s*(?:#[^\n]*\n)?\s*(\d+)", text)
        if m:
            offset = int(m.group(1))
        realtime = _DEFAULT_REALTIME
        m = re.search(r"NODE_CONTROL_LOOP_BEGINS.*?\n\s*if\s+(cmd\s*==\s*\d+(?:\s+or\s+cmd\s*==\s*\d+)+)\s*:",
                      text, re.S)
        if m:
            realtime = frozenset(int(x) for x in re.findall(r"\d+", m.group(1)))
        return _Program(text, control, offset, realtime, duration)


class _Motion:
    """Joint-space motion: a move (interpolation to a goal) or a speed (constant velocity)."""

    def __init__(self, kind: str, start: np.ndarray, goal: np.ndarray | None = None, speed: float = 1.0,
                 velocity: np.ndarray | None = None, notify_done: bool = False, is_async: bool = False) -> None:
        self.kind, self.start, self.goal, self.velocity = kind, start, goal, velocity
        self.notify_done, self.is_async = notify_done, is_async
        self.elapsed = 0.0
        if goal is not None:
            self.duration = max(float(np.max(np.abs(goal - start))) / max(speed, 1e-6), 0.0)
