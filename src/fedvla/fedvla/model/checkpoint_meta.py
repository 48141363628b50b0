"""A checkpoint's description without loading it (no torch): what the arm driver checks before a
policy may drive the arm. The files themselves: :mod:`fedvla.model.checkpoint`."""
from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"


def read_checkpoint_description(directory: str | Path) -> dict:
    """The checkpoint's ``config.json``: ``policy`` (the model config), ``metadata`` (what training
    recorded: round, client, ``action_space``). ValueError, naming the file, if it is not there or
    not JSON."""
    path = Path(directory).expanduser() / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{Path(directory)} is not a checkpoint: {CONFIG_FILE} is missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is malformed: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is malformed: not a JSON object")
    return data
