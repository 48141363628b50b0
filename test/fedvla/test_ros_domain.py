import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.ros_domain import DomainUnavailable, acquire_domain_id

CHILD = "from support.ros_domain import acquire_domain_id; print(acquire_domain_id({!r}))"
SUPPORT_ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))  # children import support/


def test_concurrent_processes_get_different_domain_ids(tmp_path) -> None:
    held = acquire_domain_id(tmp_path)
    # While this process holds its lock, another process must pick another id.
    other = int(subprocess.check_output([sys.executable, "-c", CHILD.format(str(tmp_path))], text=True,
                                        env=SUPPORT_ENV))
    assert other != held
    assert 1 <= other <= 101


def test_the_last_free_id_is_found_and_exhaustion_is_reported(tmp_path) -> None:
    held = {acquire_domain_id(tmp_path) for _ in range(100)}
    assert len(held) == 100
    (free,) = set(range(1, 102)) - held
    child = int(subprocess.check_output([sys.executable, "-c", CHILD.format(str(tmp_path))], text=True,
                                        env=SUPPORT_ENV))
    assert child == free  # the child's lock died with it...
    assert acquire_domain_id(tmp_path) == free  # ...so the id is free again
    with pytest.raises(DomainUnavailable, match="all ROS domain ids 1-101 are in use"):
        acquire_domain_id(tmp_path)


def test_this_test_run_is_isolated() -> None:
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 101
