"""Where installed ROS packages live: the ament prefixes (``AMENT_PREFIX_PATH``), then this
Python environment's prefix (where .ci/setup builds the workspace)."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path


def ament_prefixes(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    entries = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    return [Path(p) for p in dict.fromkeys(entries)]


def run_directory(kind: str) -> Path:
    """The default output of a run: ``runs/<kind>_<date>_<time>`` in the working directory."""
    import time

    return Path("runs") / time.strftime(f"{kind}_%Y%m%d_%H%M%S")


def working_tree_commit() -> str:
    """The git commit checked out in the working directory (a run's provenance), or "" outside git."""
    import subprocess

    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
