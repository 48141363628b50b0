"""No node outlives the launch that started it.

``ros2 launch`` and ``fedvla launch`` stop their nodes when they end normally. A launch that dies
instead (SIGKILL, a crash, or launch's own exception handling ending the event loop while
processes are still being spawned, as a missing ``rviz2`` package did) leaves its children running
as orphans; for the arm driver that means an arm still under control of nobody. So each node asks
the kernel to send it SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), which the
node handles like Ctrl-C: it brakes the arm, closes devices and exits.

One race stays: the parent may die while the child is still starting Python, before it has asked.
The parent therefore passes its pid in ``FEDVLA_PARENT_PID``; a child whose parent is no longer
that pid right after asking knows it was orphaned at birth. (Without the variable, e.g. ``ros2
run``, only the request is made: a node started directly by PID 1 in a container is not an orphan.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Mapping

PARENT_PID_ENV = "FEDVLA_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def with_parent_pid(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process of this one."""
    return {**env, PARENT_PID_ENV: str(os.getpid())}


def exit_with_parent(env: Mapping[str, str] | None = None, signum: int = signal.SIGTERM) -> bool:
    """Have ``signum`` delivered to this process when its parent exits. Returns False when the
    parent named in ``FEDVLA_PARENT_PID`` is already gone (the caller should exit now)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = (os.environ if env is None else env).get(PARENT_PID_ENV, "")
    return not expected.isdigit() or os.getppid() == int(expected)
