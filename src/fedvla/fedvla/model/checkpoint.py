"""Self-contained checkpoints: a directory with

* ``config.json`` — the :class:`PolicyConfig`, its hash and a format version;
* ``model.safetensors`` — stems, trunk and head weights;
* ``normalizer.safetensors`` — the client's action/proprio statistics.

Never pickle: safetensors files carry only tensors, so loading a checkpoint runs no code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedvla.model.config import PolicyConfig
from fedvla.model.policy import Policy

from fedvla.model.checkpoint_meta import CONFIG_FILE

FORMAT_VERSION = 1
MODEL_FILE, NORMALIZER_FILE = "model.safetensors", "normalizer.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or does not fit the expected policy."""


def save_checkpoint(policy: Policy, directory: str | Path, metadata: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not bool(policy.normalizer.fitted):
        raise CheckpointError("the normaliser was never fitted: call policy.normalizer.fit() on the training data")
    state = {k: v.contiguous() for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    normalizer = {k: v.contiguous() for k, v in policy.normalizer.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE))
    save_file(normalizer, str(directory / NORMALIZER_FILE))
    config = {"format_version": FORMAT_VERSION, "config_hash": policy.config.config_hash(),
              "policy": policy.config.to_dict(), "metadata": metadata or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: str | Path, expected: PolicyConfig | None = None,
                    action_dim: int | None = None) -> Policy:
    """Load a checkpoint; refuse it clearly if it does not match ``expected`` / ``action_dim``."""
    directory = Path(directory)
    for name in (CONFIG_FILE, MODEL_FILE, NORMALIZER_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a checkpoint: {name} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        config = PolicyConfig.from_dict(meta["policy"], where="checkpoint")
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE} is malformed: {err}") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: checkpoint format {meta.get('format_version')} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
    if config.config_hash() != meta.get("config_hash"):
        raise CheckpointError(f"{directory}: config_hash does not match the config it stores (edited by hand?)")
    if action_dim is not None and config.action_dim != action_dim:
        raise CheckpointError(f"{directory}: the policy predicts {config.action_dim} action dimensions, "
                              f"this robot needs {action_dim}")
    if expected is not None and config.config_hash() != expected.config_hash():
        diff = {k: (v, expected.to_dict()[k]) for k, v in config.to_dict().items() if expected.to_dict()[k] != v}
        raise CheckpointError(f"{directory}: the checkpoint's model config differs from the expected one: "
                              + ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in list(diff.items())[:4]))
    policy = Policy(config)
    state = load_file(str(directory / MODEL_FILE))
    state.update({f"normalizer.{k}": v for k, v in load_file(str(directory / NORMALIZER_FILE)).items()})
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{directory}: the weights do not fit the stored config: {str(err).splitlines()[0]}") from err
    return policy.eval()


def seeded_policy(config: PolicyConfig, seed: int = 0) -> Policy:
    """A freshly initialised policy whose weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return Policy(config)
