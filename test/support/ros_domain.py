"""Give each test run (or any concurrent job) its own ROS 2 domain on this machine.

DDS participants in different ``ROS_DOMAIN_ID``s never discover each other. A run takes the
first free id by locking ``<tmp>/fedvla-ros-domain-<id>.lock`` (``fcntl``, released by the OS
when the process exits, even on a crash), so two runs started at once cannot share an id.
Discovery is also kept on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

# 0 is the default domain that interactive ROS sessions use; 101 is the last id whose ports
# fit below the ephemeral range on Linux with the default port mapping.
DOMAIN_IDS = range(1, 102)

_held: list[IO] = []  # keep lock files open for the life of the process


class DomainUnavailable(RuntimeError):
    pass


def acquire_domain_id(lock_dir: str | Path | None = None) -> int:
    """Lock and return a domain id no other live process on this machine holds."""
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    start = os.getpid() % len(DOMAIN_IDS)  # spread concurrent starts over the range
    for offset in range(len(DOMAIN_IDS)):
        domain_id = DOMAIN_IDS[(start + offset) % len(DOMAIN_IDS)]
        handle = open(lock_dir / f"fedvla-ros-domain-{domain_id}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return domain_id
    raise DomainUnavailable(f"all ROS domain ids {DOMAIN_IDS.start}-{DOMAIN_IDS.stop - 1} are in use on this machine")


def isolate_ros_environment(env: dict[str, str] | None = None) -> int:
    """Set ``ROS_DOMAIN_ID`` (a freshly locked one) and localhost-only discovery in ``env``."""
    env = os.environ if env is None else env
    domain_id = acquire_domain_id()
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain_id
