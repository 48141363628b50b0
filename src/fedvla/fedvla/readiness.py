"""How a node tells the project's runner that it is up (like systemd's ``sd_notify(READY=1)``).

A node process is *started* long before it is *up*: the scene parser loads its models, a camera
connects and starts streaming, the driver reaches the arm. ``fedvla launch --duration`` and
``fedvla demo`` count their duration from the moment every node is up, so a slow start on a
loaded machine shortens nothing. The runner passes a directory in ``FEDVLA_READY_DIR``; a node
that has finished constructing itself creates a file named after its fully qualified name there.
Without the variable (``ros2 launch``, ``ros2 run``) reporting does nothing.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

READY_DIR_ENV = "FEDVLA_READY_DIR"


def ready_marker(directory: str | Path, fully_qualified_name: str) -> Path:
    """The file that says node ``/namespace/name`` is up (``namespace.name``)."""
    return Path(directory) / (fully_qualified_name.strip("/").replace("/", ".") or "_")


def report_ready(fully_qualified_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Mark the node as up for the runner that started it; False when no runner asked."""
    directory = (os.environ if env is None else env).get(READY_DIR_ENV)
    if not directory:
        return False
    ready_marker(directory, fully_qualified_name).touch()
    return True
