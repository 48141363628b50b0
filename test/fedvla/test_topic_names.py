"""One source per topic name: no topic literal in src/ outside fedvla/topics.py (the check the
architecture issue gives: ``grep -rn '"/[a-z_]*/' src/fedvla_ros src/fedvla | grep -v topics.py``)."""
import re
from pathlib import Path

from fedvla import topics

SRC = Path(__file__).resolve().parents[2] / "src"
LITERAL = re.compile(r'"/[a-z_]*/')


def test_no_topic_literal_outside_topics_py() -> None:
    found = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
             for package in ("fedvla_ros", "fedvla") for path in sorted((SRC / package).rglob("*.py"))
             if path.name != "topics.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if LITERAL.search(line)]
    assert not found, "topic literals outside fedvla/topics.py:\n" + "\n".join(found)


def test_camera_and_replay_names_follow_the_conventions() -> None:
    assert topics.camera_topic("camera", topics.COLOR_IMAGE) == "/camera/camera/color/image_raw"  # realsense-ros
    assert topics.recorded_topic("/policy/action_chunk") == "/replay/recorded/policy/action_chunk"
