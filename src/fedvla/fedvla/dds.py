"""The DDS transport settings the federation relies on (Fast DDS through rmw_fastrtps_cpp), in one
place: the federation nodes (fed_server, fed_client) and the federation tools (``fedvla soak``,
``fedvla bench transfer``) call :func:`federation_transport_environment` before ``rclpy.init``.

**Why (issue 19).** Root cause: Fast DDS' shared-memory (SHM) transport. A participant that is
SIGKILLed leaves its SHM port behind, still holding references to buffers in the segments of the
processes that were sending to it; a restarted client takes the same port over ("Port <n> Zombie.
Reset the port"). The sender's segment (512 KiB, Fast DDS' default, and the only size there is
under ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, where rmw_fastrtps adds its own SHM transport)
fills with such buffers; every new 64 KiB message (a fragment of a 65,536-byte fetch response or
of an upload chunk) can then only be allocated by invalidating older buffers, including ones live
readers have not taken yet ("Buffer is being invalidated, segment_size may be insufficient",
logged 703 times by the stalled server of one run). Reliable resends meet the same fate, so the
fetch never completes; small messages still fit. Measured with ``fedvla soak`` (a client killed
and restarted in every round unless noted; results/soak/README.md has the commands):

* SHM + UDPv4, rmw_fastrtps' default: stalled in every run: 50 rounds at the default fault rate,
  round 41 open 85 s until an unrelated process joined; kills every round: stalls at rounds 15,
  10 (LOCALHOST) and 13 (SUBNET), every client's fetch timing out 16-19 times in a row.
* UDPv4 only: no stall (50 rounds at the default rate; 30 rounds with kills every round, slowest
  round 17 s). A 16 MiB SHM segment also got through 30 such rounds, but only because more stale
  buffers fit before the segment overflows: every kill leaves some behind, and a 16 MiB upload
  chunk alone is 256 such fragments in flight.

So the federation's processes use **UDPv4 only**: nothing is shared between processes that a
SIGKILL can leave behind (only the discovery entry, which the lease expires). Large samples are
fragmented into datagrams and repaired by the reliable protocol; the profiles ask for 4 MiB socket
buffers (Linux caps them at ``net.core.rmem_max``/``wmem_max``) so bursts of fragments are not
dropped on loopback. Why an unrelated participant joining ended a stall was not established (its
discovery traffic changes what the server sends and which buffers it recycles); the fix does not
depend on it.

**Rules** (:func:`federation_transport_environment`):

* A user's own ``FASTDDS_DEFAULT_PROFILES_FILE`` wins (it is left alone), and so does another
  RMW than Fast DDS (``RMW_IMPLEMENTATION``).
* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (or ``ROS_LOCALHOST_ONLY=1``): rmw_fastrtps would
  replace the transports of any profile with SHM + UDPv4, so the process gets
  ``fastdds_federation_localhost.xml`` (UDPv4, no multicast, initial peer 127.0.0.1: the same
  discovery as rmw's LOCALHOST) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT`` so rmw keeps
  it. With ``ROS_STATIC_PEERS`` as well, nothing is changed (the profile cannot carry them) and a
  warning says the federation then runs with SHM.
* ``ROS_AUTOMATIC_DISCOVERY_RANGE=OFF``: nothing to change (no other process is reachable).
* Otherwise (``SUBNET``, the default, or ``SYSTEM_DEFAULT``): ``fastdds_federation.xml`` (UDPv4,
  the usual multicast discovery).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
RANGE_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"
LOCALHOST_ONLY_ENV = "ROS_LOCALHOST_ONLY"
STATIC_PEERS_ENV = "ROS_STATIC_PEERS"
RMW_ENV = "RMW_IMPLEMENTATION"
FAST_DDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
# Under fedvla_bringup's config directory (installed with it): the one place these files live.
NETWORK_PROFILE = "dds/fastdds_federation.xml"
LOCALHOST_PROFILE = "dds/fastdds_federation_localhost.xml"


@dataclasses.dataclass(frozen=True)
class TransportChoice:
    """What :func:`federation_transport_environment` did, in a line for the node's log."""

    profile: Path | None  # the profile file set, or None when the environment was left alone
    changed: dict[str, str | None]  # variable -> new value (None: removed)
    summary: str
    warning: bool = False  # the federation keeps a transport known to stall (issue 19)


def profile_path(localhost: bool) -> Path:
    """The installed (or source-tree) profile file."""
    from fedvla.graph import find_config_dir

    path = find_config_dir() / (LOCALHOST_PROFILE if localhost else NETWORK_PROFILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the workspace (.ci/setup) or reinstall fedvla_bringup")
    return path


def federation_transport_environment(env: MutableMapping[str, str] | None = None) -> TransportChoice:
    """Set the federation's DDS transport in ``env`` (default ``os.environ``) per the module's rules.
    Call before ``rclpy.init`` (rcl and Fast DDS read these variables when the context and the
    participant are created); child processes inherit the result."""
    env = os.environ if env is None else env
    rmw = env.get(RMW_ENV, "")
    if rmw and rmw not in FAST_DDS_RMWS:
        return TransportChoice(None, {}, f"DDS: {rmw} (its own transport settings; the federation's Fast DDS "
                                         "profile does not apply)")
    if env.get(PROFILE_ENV):
        given = Path(env[PROFILE_ENV])
        if given.name in (Path(NETWORK_PROFILE).name, Path(LOCALHOST_PROFILE).name):  # from a parent process
            return TransportChoice(None, {}, f"DDS: Fast DDS over UDPv4 only (no shared memory: {given.name}, "
                                             "set by the parent process)")
        return TransportChoice(None, {}, f"DDS: Fast DDS profile {given} (set by the user; it must keep "
                                         "SHM off for the federation, see README 'Federation')")
    discovery = env.get(RANGE_ENV, "").strip().upper()
    localhost = discovery == "LOCALHOST" or (not discovery and env.get(LOCALHOST_ONLY_ENV) == "1")
    if discovery == "OFF":
        return TransportChoice(None, {}, "DDS: discovery is OFF; transport left as it is")
    if localhost and env.get(STATIC_PEERS_ENV):
        return TransportChoice(None, {}, f"DDS: LOCALHOST with {STATIC_PEERS_ENV} keeps rmw_fastrtps' shared-memory "
                                         "transport, which stalls the federation after killed processes (issue 19): "
                                         f"set {PROFILE_ENV} to a UDPv4 profile that lists the peers", warning=True)
    path = profile_path(localhost)
    changed: dict[str, str | None] = {PROFILE_ENV: str(path)}
    if localhost:
        changed[RANGE_ENV] = "SYSTEM_DEFAULT"  # rmw_fastrtps would otherwise add its SHM transport back
        if LOCALHOST_ONLY_ENV in env:
            changed[LOCALHOST_ONLY_ENV] = None  # deprecated; it would force LOCALHOST again
    for name, value in changed.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    where = "localhost only, " if localhost else ""
    return TransportChoice(path, changed, f"DDS: Fast DDS over UDPv4 only ({where}no shared memory: {path.name})")
