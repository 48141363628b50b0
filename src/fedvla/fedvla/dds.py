"""The DDS transport settings of our processes (Fast DDS through rmw_fastrtps_cpp), in one place.
Two roles, each with a network and a localhost profile under ``config/dds/``:

* **federation** (fed_server, fed_client, ``fedvla soak``, ``fedvla bench transfer``:
  :func:`federation_transport_environment`): UDPv4 only, for the reasons below.
* **robot** (every other node: cameras, twin, scene parser, policy, driver, recorder:
  :func:`robot_transport_environment`, the default of ``fedvla_ros.node_main``): shared memory
  with 16 MiB segments, plus UDPv4 with 4 MiB socket buffers. A D435i colour image is 921,600
  bytes: it does not fit Fast DDS' default 512 KiB segment, so it went over UDP in 15 fragments,
  and a best-effort subscriber (the recorder) lost about half the images of a 10 Hz twin episode
  (only 28-33 of 61 steps imported). With the 16 MiB segment, images go through shared memory.
  The federation's SHM stall (below) needs reliable multi-megabyte transfers to SIGKILLed readers;
  camera topics are best-effort and keep only the latest samples, so stale buffers are recycled.

Both roles are applied before ``rclpy.init``; a child process of another role (a launch started
from a federation tool, say) recognises its parent's choice by the file name and takes its own
role's file for the same discovery.

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

**Rules** (:func:`transport_environment`, the same for both roles):

* A user's own ``FASTDDS_DEFAULT_PROFILES_FILE`` wins (it is left alone), and so does another
  RMW than Fast DDS (``RMW_IMPLEMENTATION``).
* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (or ``ROS_LOCALHOST_ONLY=1``): rmw_fastrtps would
  replace the transports of any profile with SHM + UDPv4, so the process gets
  the role's localhost profile (``fastdds_federation_localhost.xml``: UDPv4, no multicast, initial
  peer 127.0.0.1: the same discovery as rmw's LOCALHOST) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT`` so rmw keeps
  it. With ``ROS_STATIC_PEERS`` as well, nothing is changed (the profile cannot carry them) and a
  warning says the federation then runs with SHM.
* ``ROS_AUTOMATIC_DISCOVERY_RANGE=OFF``: nothing to change (no other process is reachable).
* Otherwise (``SUBNET``, the default, or ``SYSTEM_DEFAULT``): the role's network profile
  (``fastdds_federation.xml``: UDPv4, the usual multicast discovery).
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


@dataclasses.dataclass(frozen=True)
class Role:
    """A kind of process and its Fast DDS profiles (files under fedvla_bringup's config directory,
    installed with it: the one place they live)."""

    name: str
    network_profile: str
    localhost_profile: str
    transport: str  # what the profiles set up, for the log line
    stalls_under_rmw_shm: bool  # rmw_fastrtps' own SHM transport is known to stall this role

    def profile(self, localhost: bool) -> str:
        return self.localhost_profile if localhost else self.network_profile


FEDERATION = Role("federation", "dds/fastdds_federation.xml", "dds/fastdds_federation_localhost.xml",
                  "UDPv4 only, no shared memory", stalls_under_rmw_shm=True)
ROBOT = Role("robot", "dds/fastdds_robot.xml", "dds/fastdds_robot_localhost.xml",
             "16 MiB shared-memory segments + UDPv4, images in one piece", stalls_under_rmw_shm=False)
ROLES = (FEDERATION, ROBOT)


@dataclasses.dataclass(frozen=True)
class TransportChoice:
    """What :func:`transport_environment` did, in a line for the node's log."""

    profile: Path | None  # the profile file set, or None when the environment was left alone
    changed: dict[str, str | None]  # variable -> new value (None: removed)
    summary: str
    warning: bool = False  # the process keeps a transport known to stall it (issue 19)


def profile_path(localhost: bool, role: Role = FEDERATION) -> Path:
    """The installed (or source-tree) profile file."""
    from fedvla.graph import find_config_dir

    path = find_config_dir() / role.profile(localhost)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the workspace (.ci/setup) or reinstall fedvla_bringup")
    return path


def _ours(given: Path) -> tuple[Role, bool] | None:
    """The role and localhost flag of a profile file we set (in this or a parent process)."""
    for role in ROLES:
        for localhost in (False, True):
            if given.name == Path(role.profile(localhost)).name:
                return role, localhost
    return None


def _set(env: MutableMapping[str, str], changed: dict[str, str | None]) -> None:
    for name, value in changed.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


def transport_environment(role: Role, env: MutableMapping[str, str] | None = None) -> TransportChoice:
    """Set ``role``'s DDS transport in ``env`` (default ``os.environ``) per the module's rules.
    Call before ``rclpy.init`` (rcl and Fast DDS read these variables when the context and the
    participant are created); child processes inherit the result."""
    env = os.environ if env is None else env
    rmw = env.get(RMW_ENV, "")
    if rmw and rmw not in FAST_DDS_RMWS:
        return TransportChoice(None, {}, f"DDS: {rmw} (its own transport settings; the {role.name} Fast DDS "
                                         "profile does not apply)")
    if env.get(PROFILE_ENV):
        given = Path(env[PROFILE_ENV])
        parent = _ours(given)
        if parent is None:
            return TransportChoice(None, {}, f"DDS: Fast DDS profile {given} (set by the user; see README "
                                             "'Federation' for what the federation needs)")
        parent_role, localhost = parent
        if parent_role is role:
            return TransportChoice(None, {}, f"DDS: Fast DDS over {role.transport} ({given.name}, set by the "
                                             "parent process)")
        path = profile_path(localhost, role)  # a parent of the other role: same discovery, our transport
        changed: dict[str, str | None] = {PROFILE_ENV: str(path)}
        _set(env, changed)
        return TransportChoice(path, changed, f"DDS: Fast DDS over {role.transport} ({path.name}; the parent "
                                              f"process used {given.name})")
    discovery = env.get(RANGE_ENV, "").strip().upper()
    localhost = discovery == "LOCALHOST" or (not discovery and env.get(LOCALHOST_ONLY_ENV) == "1")
    if discovery == "OFF":
        return TransportChoice(None, {}, "DDS: discovery is OFF; transport left as it is")
    if localhost and env.get(STATIC_PEERS_ENV):
        consequence = ("which stalls the federation after killed processes (issue 19)" if role.stalls_under_rmw_shm
                       else "whose 512 KiB segments send camera images over UDP, in fragments that can be lost")
        return TransportChoice(None, {}, f"DDS: LOCALHOST with {STATIC_PEERS_ENV} keeps rmw_fastrtps' shared-memory "
                                         f"transport, {consequence}: set {PROFILE_ENV} to a profile that lists "
                                         f"the peers (see {role.profile(False)})", warning=role.stalls_under_rmw_shm)
    path = profile_path(localhost, role)
    changed = {PROFILE_ENV: str(path)}
    if localhost:
        changed[RANGE_ENV] = "SYSTEM_DEFAULT"  # rmw_fastrtps would otherwise put its own transports back
        if LOCALHOST_ONLY_ENV in env:
            changed[LOCALHOST_ONLY_ENV] = None  # deprecated; it would force LOCALHOST again
    _set(env, changed)
    where = "localhost only, " if localhost else ""
    return TransportChoice(path, changed, f"DDS: Fast DDS over {role.transport} ({where}{path.name})")


def federation_transport_environment(env: MutableMapping[str, str] | None = None) -> TransportChoice:
    """The federation's transport: UDPv4 only (the module docstring says why)."""
    return transport_environment(FEDERATION, env)


def robot_transport_environment(env: MutableMapping[str, str] | None = None) -> TransportChoice:
    """The robot nodes' transport: 16 MiB shared-memory segments for camera images, plus UDPv4."""
    return transport_environment(ROBOT, env)
