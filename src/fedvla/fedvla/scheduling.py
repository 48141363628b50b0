"""Real-time scheduling of this process's threads (Linux; elsewhere the helpers do nothing).

Two ways threads end up at a real-time priority they should not have, both met in this stack:
a new thread inherits the SCHED_FIFO priority of the thread that starts it (glibc's default), and
a library may raise threads on its own. :func:`threads_start_below_caller` and
:func:`no_new_real_time_threads` keep each in check; :func:`real_time_threads` says which threads
are real-time now.

A thread that a library set through glibc (``pthread_setschedparam``) is reset through glibc too
(:func:`set_own_scheduling`): glibc keeps a copy of the policy set that way, every thread the
thread starts inherits the copy, and libraries read it back (Fast DDS applies it to each thread it
starts). Reset by the bare system call, the copy went stale: after an SVT-AV1 encode had set it to
FIFO 99, every Fast DDS thread the process started afterwards ran at FIFO 99 although no thread was
real-time when they started. Our own changes use the system call, which leaves no copy behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("fedvla.scheduling")

REAL_TIME_POLICIES = frozenset({getattr(os, "SCHED_FIFO", None), getattr(os, "SCHED_RR", None)} - {None})


def real_time_threads() -> set[int]:
    """This process's threads under SCHED_FIFO or SCHED_RR (empty where the OS cannot tell)."""
    threads = set()
    with contextlib.suppress(OSError, AttributeError):
        for tid in map(int, os.listdir(Path("/proc") / "self" / "task")):
            with contextlib.suppress(OSError):  # (a thread that just ended)
                if os.sched_getscheduler(tid) in REAL_TIME_POLICIES:
                    threads.add(tid)
    return threads


@functools.cache
def _pthread():
    """glibc's pthread scheduling calls, or None where this is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_ulong
        for name in ("pthread_setschedparam", "pthread_getschedparam"):
            getattr(libc, name).restype = ctypes.c_int
        return libc
    return None


def set_own_scheduling(policy: int, priority: int) -> None:
    """The calling thread's scheduling, through glibc where it is there (see the module's note):
    raises OSError when refused."""
    libc = _pthread()
    if libc is None:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
        return
    error = libc.pthread_setschedparam(ctypes.c_ulong(libc.pthread_self()), policy,
                                       ctypes.byref(ctypes.c_int(priority)))
    if error:
        raise OSError(error, os.strerror(error))


def own_scheduling_as_glibc_sees_it() -> tuple[int, int] | None:
    """(policy, priority) of the calling thread as glibc reports it to the threads it starts and to
    libraries (possibly a stale copy; the kernel's is os.sched_getscheduler); None without glibc."""
    libc = _pthread()
    if libc is None:
        return None
    policy, priority = ctypes.c_int(), ctypes.c_int()
    libc.pthread_getschedparam(ctypes.c_ulong(libc.pthread_self()), ctypes.byref(policy), ctypes.byref(priority))
    return policy.value, priority.value


@contextlib.contextmanager
def no_new_real_time_threads():
    """On leaving, every thread of this process that was not real-time on entering returns to
    normal scheduling: for a library that raises threads itself. SVT-AV1 (libsvtav1, LeRobot's
    AV1 encoder), run with the right to (root), makes its caller and its ~40 worker threads
    SCHED_FIFO 99, which then take the CPUs from everything, a robot's control loop included; and
    every process the caller starts later inherits it (in CI, after the export test, the whole twin
    graph ran at FIFO 99 and starved the arm's loop at FIFO 50 until the robot's watchdog stopped it)."""
    before = real_time_threads()
    caller = threading.get_native_id()
    try:
        yield
    finally:
        for tid in real_time_threads() - before:
            with contextlib.suppress(OSError):
                if tid == caller:
                    set_own_scheduling(os.SCHED_OTHER, 0)
                else:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


@contextlib.contextmanager
def threads_start_below_caller():
    """Threads started inside run one SCHED_FIFO level below the calling thread.

    ur_rtde's interfaces start their own threads (RTDE receive, the control interface's), which
    inherit the scheduling of the thread that makes them: made by the arm's control loop, they
    shared its SCHED_FIFO priority, and FIFO does not share a CPU between equal priorities, so one
    of them busy on the loop's CPU kept the loop waiting. A caller at normal priority (or at FIFO
    1) is left as it is."""
    try:
        policy, priority = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        policy, priority = None, 0
    if policy != getattr(os, "SCHED_FIFO", None) or priority <= 1:
        yield
        return
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority - 1))
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except OSError as err:  # (lowering needs no permission; raising again does, and was granted)
            log.warning("a thread could not return to SCHED_FIFO %d: %s", priority, err)
