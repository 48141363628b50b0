"""The skill library: versioned residual skills for one base policy, kept by the server.

On disk (``directory``)::

    library.json                      signature, router version, per skill: versions with their
                                      tasks, metrics, parameter count and sha256
    router/v<version>.safetensors     the task router
    skills/<skill_id>/v<version>.safetensors

A skill's **signature** is what it was trained against: the base checkpoint's hash and its action
space (and the sizes the skill's layers take). A robot whose base policy has another signature is
refused with :class:`SkillSignatureError`, naming what differs: a skill's residuals mean nothing
on another base. Versions only grow; every write is atomic (temporary file, then rename), so a
crash never leaves a half-written library.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedvla.skills.encryption import PARAMETERS, is_encrypted

INDEX = "library.json"


class SkillLibraryError(ValueError):
    """A skill or the library cannot be read or written as asked."""


class SkillSignatureError(SkillLibraryError):
    """A skill trained against another base policy (or action space) than the robot's."""


@dataclasses.dataclass(frozen=True)
class SkillSignature:
    base_hash: str  # sha256 of the frozen base checkpoint's weights
    action_space: dict  # fedvla.robot.retarget.ActionSpace.to_dict() of the base
    observation_dim: int
    action_dim: int
    horizon: int

    def differences(self, other: SkillSignature) -> list[str]:
        return [f"{f.name}: {getattr(other, f.name)!r} here, {getattr(self, f.name)!r} in the library"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclasses.dataclass
class SkillVersion:
    version: int
    tasks: list[str]
    metrics: dict
    parameters: int
    sha256: str
    encrypted: bool = False  # CKKS ciphertexts of Σ n_c θ_c with Σ n_c (fedvla.skills.encryption)


class SkillLibrary:
    def __init__(self, directory: str | Path, signature: SkillSignature | None = None) -> None:
        """Open the library in ``directory``; a new one needs its ``signature``."""
        self.directory = Path(directory)
        index = self.directory / INDEX
        if index.is_file():
            data = json.loads(index.read_text())
            self.signature = SkillSignature(**data["signature"])
            self.router_version = int(data["router_version"])
            self.published_round = int(data.get("published_round", -1))
            self.skills = {k: [SkillVersion(**v) for v in versions] for k, versions in data["skills"].items()}
            if signature is not None:
                self.check(signature)
        else:
            if signature is None:
                raise SkillLibraryError(f"{self.directory} holds no skill library: give the base's signature to start one")
            self.signature, self.router_version, self.skills = signature, 0, {}
            self.published_round = -1  # the last federated round whose aggregate this library holds
            self._save_index()

    # -- reading ---------------------------------------------------------------------------------
    def check(self, signature: SkillSignature) -> None:
        differences = self.signature.differences(signature)
        if differences:
            raise SkillSignatureError("the robot's base policy does not match the skill library (" +
                                      "; ".join(differences) + "): load the base the skills were trained on, "
                                      "or start a library for this base")

    def latest(self, skill_id: str) -> SkillVersion:
        if skill_id not in self.skills:
            raise SkillLibraryError(f"no skill {skill_id!r} in {self.directory} (skills: {', '.join(sorted(self.skills))})")
        return self.skills[skill_id][-1]

    def load_skill(self, skill_id: str, signature: SkillSignature, version: int | None = None) -> dict[str, torch.Tensor]:
        """A skill's weights for a robot whose base has ``signature`` (refused if it differs)."""
        from safetensors.torch import load_file

        self.check(signature)
        chosen = self.latest(skill_id) if version is None else next(
            (v for v in self.skills.get(skill_id, []) if v.version == version), None)
        if chosen is None:
            raise SkillLibraryError(f"skill {skill_id!r} has no version {version}")
        state = load_file(str(self._skill_path(skill_id, chosen.version)))
        if state_dict_hash(state) != chosen.sha256:
            raise SkillLibraryError(f"{self._skill_path(skill_id, chosen.version)} does not match its recorded sha256")
        return state

    def load_router(self, signature: SkillSignature) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        self.check(signature)
        return load_file(str(self._router_path(self.router_version))) if self.router_version else None

    # -- writing ---------------------------------------------------------------------------------
    def publish(self, skills: Mapping[str, Mapping[str, torch.Tensor]], tasks: Mapping[str, Sequence[str]],
                metrics: Mapping[str, dict] | None = None, router: Mapping[str, torch.Tensor] | None = None,
                round_index: int | None = None) -> dict[str, int]:
        """New versions of ``skills`` (and of the router): the versions written. ``round_index``: the
        federated round they aggregate, recorded in the same index write (a server that crashed
        after publishing knows on restart that the round is in)."""
        from safetensors.torch import save_file

        written = {}
        for skill_id, state in skills.items():
            versions = self.skills.setdefault(skill_id, [])
            version = versions[-1].version + 1 if versions else 1
            path = self._skill_path(skill_id, version)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic(path, lambda p, s=state: save_file({k: v.detach().cpu().contiguous() for k, v in s.items()}, str(p)))
            known = sorted(set(tasks.get(skill_id, [])) | (set(versions[-1].tasks) if versions else set()))
            encrypted = is_encrypted(state)
            parameters = int(state[PARAMETERS].item()) if encrypted else sum(v.numel() for v in state.values())
            versions.append(SkillVersion(version, known, dict((metrics or {}).get(skill_id, {})), parameters,
                                         state_dict_hash(state), encrypted))
            written[skill_id] = version
        if router is not None:
            self.router_version += 1
            path = self._router_path(self.router_version)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic(path, lambda p: save_file({k: v.detach().cpu().contiguous() for k, v in router.items()}, str(p)))
        if round_index is not None:
            self.published_round = round_index
        self._save_index()
        return written

    def _skill_path(self, skill_id: str, version: int) -> Path:
        return self.directory / "skills" / skill_id / f"v{version}.safetensors"

    def _router_path(self, version: int) -> Path:
        return self.directory / "router" / f"v{version}.safetensors"

    def _save_index(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"signature": dataclasses.asdict(self.signature), "router_version": self.router_version,
                "published_round": self.published_round,
                "skills": {k: [dataclasses.asdict(v) for v in versions] for k, versions in self.skills.items()}}
        _atomic(self.directory / INDEX, lambda p: p.write_text(json.dumps(data, indent=1)))


def _atomic(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def base_signature(checkpoint: str | Path):
    """A base policy checkpoint, loaded frozen, and its signature (the library's key): the hash of
    its weights, the action space training recorded in it ({} when none), and the sizes skills take."""
    from fedvla.model.checkpoint import load_checkpoint
    from fedvla.model.checkpoint_meta import read_checkpoint_description
    from fedvla.skills.training import freeze

    policy = freeze(load_checkpoint(checkpoint))
    recorded = (read_checkpoint_description(checkpoint).get("metadata") or {}).get("action_space") or {}
    config = policy.config
    return policy, SkillSignature(base_hash=state_dict_hash(policy.state_dict()), action_space=recorded,
                                  observation_dim=config.embed_dim, action_dim=config.action_dim, horizon=config.horizon)
