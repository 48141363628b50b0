"""What a recording of the running stack shows: the topics a profile's nodes must have published,
how the arm moved, and the last scene parse of each camera (the demo's checks, usable on any bag
the sim or real_robot profile recorded)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.bag import read_messages
from fedvla.data.messages import ParsedSceneContent, parse_parsed_scene
from fedvla.graph import Graph


def expected_topics(graph: Graph, profile: str) -> list[str]:
    """The camera topics of the profile's camera nodes, its scene parses, and its arm's joint
    states and tool pose: what a recording of the profile must contain."""
    nodes = graph.resolve(profile)
    cameras = [topics.node_topic(n.spec.fully_qualified_name, rel)
               for n in nodes if n.spec.executable == "camera_node" for rel in topics.CAMERA_TOPICS]
    parses = [topics.node_topic(n.spec.fully_qualified_name, topics.PARSED_SCENE)
              for n in nodes if n.spec.executable == "scene_parser"]
    arms = [t for n in nodes if n.spec.executable == "ur3_driver"
            for t in (topics.JOINT_STATES, topics.node_topic(n.spec.fully_qualified_name, topics.TOOL_POSE))]
    return cameras + parses + arms


@dataclasses.dataclass(frozen=True)
class ArmMotion:
    path_m: float  # length of the tool's path
    reach_m: float  # largest distance of the tool from where it started
    refused: dict[str, int] = dataclasses.field(default_factory=dict)  # refused chunks per reason (diagnostics)

    @property
    def refused_chunks(self) -> int:
        """Action chunks the driver refused, all reasons."""
        return sum(self.refused.values())

    @property
    def unsafe_chunks(self) -> int:
        """Chunks refused by the safety checks (limits, speed, workspace, IK): the motion itself was
        wrong. The other refusals came while the arm could take nothing (``arm is fault``,
        ``disconnected``: a watchdog stop when the machine stalled the control loop, and the
        reconnection after it)."""
        from fedvla.robot.safety import Violation

        return sum(n for reason, n in self.refused.items() if reason in {v.value for v in Violation})

    def refusals(self) -> str:
        """The refusals as 'n reason, ...' (empty when none)."""
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.refused.items()))


def arm_motion(bag: str | Path, driver: str = topics.UR3_DRIVER_NODE) -> ArmMotion:
    poses = [(m.pose.position.x, m.pose.position.y, m.pose.position.z)
             for _, _, m in read_messages(bag, [topics.node_topic(driver, topics.TOOL_POSE)])]
    if len(poses) < 2:
        return ArmMotion(0.0, 0.0)
    track = np.asarray(poses)
    refused: dict[str, int] = {}  # the counters only grow: the largest seen is the last
    for _, _, array in read_messages(bag, [topics.DIAGNOSTICS]):
        for value in (v for s in array.status for v in s.values if v.key.startswith("refused_chunks.")):
            reason = value.key.removeprefix("refused_chunks.")
            refused[reason] = max(refused.get(reason, 0), int(value.value))
    return ArmMotion(float(np.linalg.norm(np.diff(track, axis=0), axis=1).sum()),
                     float(np.linalg.norm(track - track[0], axis=1).max()), refused)


def last_scene_parses(bag: str | Path, parser: str = topics.SCENE_PARSER_NODE) -> list[ParsedSceneContent]:
    """The last recorded scene parse of each camera, by camera name."""
    last = {msg.camera_name: msg for _, _, msg in read_messages(bag, [topics.node_topic(parser, topics.PARSED_SCENE)])}
    return [parse_parsed_scene(msg) for _, msg in sorted(last.items())]
