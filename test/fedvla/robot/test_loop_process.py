"""The arm runtime in a child process: the same calls, answers and errors as in process, the
child's log in the parent's, and the arm braked when the parent goes away."""
import time

import numpy as np
import pytest

pytest.importorskip("pinocchio")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.robot.controller import ArmMode, ControllerConfig, ExecutionRefused  # noqa: E402
from fedvla.robot.loop_process import SeparateArmRuntime  # noqa: E402
from fedvla.robot.runtime import ArmDriverConfig  # noqa: E402
from fedvla.robot.safety import SafetyConfig  # noqa: E402

CHUNK = np.array([[1.0, 0.0, 0.0, -1.0]] * 4)  # 1 cm along x per action


def eventually(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.fixture
def separate():
    runtimes = []

    def make(**controller):
        runtime = SeparateArmRuntime(ArmDriverConfig(realtime_priority=0), SafetyConfig(stale_timeout_s=2.0),
                                     controller=ControllerConfig(**controller))
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


def test_chunks_move_the_arm_run_by_the_child(separate) -> None:
    runtime = separate(execute_on_start=True)
    runtime.start()
    assert eventually(lambda: runtime.snapshot().mode is ArmMode.IDLE)
    before = runtime.snapshot().measured_q
    assert runtime.submit_chunk(CHUNK, 0.1) is None
    assert eventually(lambda: runtime.snapshot().cycles > 100 and not np.allclose(runtime.snapshot().measured_q, before))
    snapshot = runtime.snapshot()
    assert snapshot.enabled and snapshot.planned_q.shape == (5, 6)
    names, positions = runtime.joint_state(snapshot)
    assert len(names) == len(positions) == 7
    assert runtime.disable("test") == "dry run (test)"
    assert not runtime.snapshot().enabled


def test_errors_cross_with_their_type_and_the_log_reaches_the_parent(separate, core_warnings) -> None:
    runtime = separate(execute_on_start=False, operator_heartbeat_timeout_s=0.0)
    runtime.start()
    assert eventually(lambda: runtime.snapshot().mode is ArmMode.IDLE)
    with pytest.raises(ValueError, match="three finite coordinates"):
        runtime.set_object_position(np.array([np.nan, 0.0, 0.0]))
    assert runtime.submit_chunk(np.full((4, 4), np.nan), 0.1) is not None
    assert eventually(lambda: "action chunk refused: not_finite" in core_warnings)
    with pytest.raises(ConfigError, match="operator_heartbeat_topic"):
        SeparateArmRuntime(ArmDriverConfig(operator_heartbeat_topic="/deadman"))


def test_execution_needs_the_heartbeat_across_the_process_boundary(separate) -> None:
    runtime = SeparateArmRuntime(ArmDriverConfig(realtime_priority=0, operator_heartbeat_topic="/deadman"),
                                 controller=ControllerConfig(operator_heartbeat_timeout_s=0.5))
    try:
        runtime.start()
        with pytest.raises(ExecutionRefused, match="no operator heartbeat"):
            runtime.enable()
        runtime.operator_heartbeat(True)
        assert runtime.enable().startswith("enabled")
    finally:
        runtime.close()


def test_the_child_brakes_and_ends_when_its_parent_goes_away(separate) -> None:
    runtime = separate(execute_on_start=True)
    runtime.start()
    assert eventually(lambda: runtime.snapshot().mode is ArmMode.IDLE)
    process = runtime._process
    runtime._commands.close()  # what the parent's death does to the child's end of the pipe
    process.wait(timeout=10)
    assert process.returncode == 0


def test_closing_a_child_that_does_not_answer_ends_it_within_the_deadline(separate, core_warnings) -> None:
    """A child stuck in closing (ur_rtde retrying a robot that is gone; here: stopped) does not hang
    the driver's shutdown: the parent gives up after CLOSE_TIMEOUT_S and kills it."""
    import signal

    from fedvla.robot.loop_process import CLOSE_TIMEOUT_S

    runtime = separate()
    runtime.start()
    process = runtime._process
    process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    runtime.close()
    assert time.monotonic() - started < CLOSE_TIMEOUT_S + 5
    assert process.poll() is not None  # killed
    assert any("did not answer 'close'" in m for m in core_warnings)


def _realtime_permitted() -> bool:
    """Whether this process may use SCHED_FIFO (tried on a throwaway thread)."""
    import os
    import threading

    permitted = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            permitted.append(True)
        except (AttributeError, OSError):
            permitted.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return permitted[0]


@pytest.mark.skipif(not _realtime_permitted(), reason="SCHED_FIFO is not permitted here (no rtprio)")
def test_the_childs_threads_run_just_below_the_real_time_loop() -> None:
    """A thread of the child at normal priority could sit descheduled holding the GIL the loop needs
    after each sleep; so all of them run SCHED_FIFO one level below the loop."""
    import os

    runtime = SeparateArmRuntime(ArmDriverConfig(realtime_priority=50), SafetyConfig(stale_timeout_s=2.0))
    try:
        runtime.start()
        assert eventually(lambda: runtime.snapshot().mode is ArmMode.IDLE)
        pid = runtime._process.pid
        priorities = []
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            if os.sched_getscheduler(tid) == os.SCHED_FIFO:
                priorities.append(os.sched_getparam(tid).sched_priority)
        assert priorities.count(50) == 1  # the loop
        assert priorities.count(49) >= 3  # commands (the main thread), snapshots, log records
        assert os.sched_getscheduler(pid) == os.SCHED_FIFO and os.sched_getparam(pid).sched_priority == 49
    finally:
        runtime.close()
