"""The fake UR controller (``fedvla.twin.ur_controller``) as fixtures: one controller process
per module, a fresh controller per test on a loopback address of its own."""
import gc

import pytest

from fedvla.twin.ur_controller import E_SERIES, UrControllerSim, free_loopback_host


@pytest.fixture(scope="module")
def controller_process():
    """One controller process for the module (a fresh controller per test: ``reset``)."""
    try:
        host = free_loopback_host()
    except OSError as error:
        pytest.skip(f"no loopback address with the UR ports free: {error}")
    process = UrControllerSim(host=host)
    yield process
    process.shutdown()


def start_or_skip(sim):
    try:
        return sim.start()
    except OSError as error:
        pytest.skip(f"UR ports busy on {sim.host}: {error}")


@pytest.fixture
def started():
    """``started(sim)``: start a fake controller, or skip the test while its ports are busy."""
    return start_or_skip


@pytest.fixture
def sim(controller_process, request):
    """A fresh fake controller, e-series unless parametrised (indirect) with another version."""
    fake = start_or_skip(controller_process.reset(urcontrol_version=getattr(request, "param", E_SERIES)))
    yield fake
    fake.stop()


@pytest.fixture
def connect(sim):
    """Make ur_rtde clients; drop them (their destructors disconnect, ~0.5 s each) before the fake ends."""
    made = []

    def make(cls, *args):
        made.append(cls(*args))
        return made[-1]

    yield make
    made.clear()
    gc.collect()


