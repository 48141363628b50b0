"""Running a base policy with its skills: the router and the skills a robot saved
(:meth:`fedvla.skills.federation.SkillFederationClient.save_skills`) on the frozen base, for the
policy node and closed-loop evaluation.

The set is refused (:class:`~fedvla.skills.library.SkillSignatureError`) on a base whose weights
are not the ones the skills were trained on. A skill the router picks that the set does not hold
(the robot saved the skills its own tasks route to) adds nothing, and the step's routing says so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fedvla.model.policy import Policy
from fedvla.skills.library import SkillLibraryError, SkillSignature, SkillSignatureError, state_dict_hash
from fedvla.skills.modules import ResidualSkill, SkillConfig, SkillRouter, apply_skills
from fedvla.skills.training import base_outputs

log = logging.getLogger("fedvla.skills.inference")
INDEX = "skills.json"


@dataclasses.dataclass(frozen=True)
class StepRouting:
    skills: tuple[str, ...]  # the top-K skills of this step, best first
    weights: tuple[float, ...]
    missing: tuple[str, ...] = ()  # routed but not in the set (they added nothing)


def write_skill_set(directory: str | Path, router_state: dict, skill_states: dict[str, dict], config: SkillConfig,
                    signature: SkillSignature, **provenance) -> Path:
    """Save a router and skills (``router.safetensors``, ``skills/<id>.safetensors``, ``skills.json``)
    for :class:`SkillSet`; ``provenance`` (round, versions, base checkpoint ...) goes into the index."""
    from safetensors.torch import save_file

    from fedvla.federation.state import atomic_write_json

    directory = Path(directory)
    (directory / "skills").mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in router_state.items()}, str(directory / "router.safetensors"))
    for name, state in skill_states.items():
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / "skills" / f"{name}.safetensors"))
    atomic_write_json(directory / INDEX, {"routed": sorted(skill_states), "skill_config": dataclasses.asdict(config),
                                          "signature": dataclasses.asdict(signature), **provenance})
    return directory


class SkillSet:
    def __init__(self, directory: str | Path, base: Policy) -> None:
        directory = Path(directory).expanduser()
        try:
            index = json.loads((directory / INDEX).read_text())
            self.config = SkillConfig(**index["skill_config"])
            signature = SkillSignature(**index["signature"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SkillLibraryError(f"{directory} is not a saved skill set ({INDEX}: {err}): save one with a skill "
                                    "federation client (its state_dir/final)") from None
        base_hash = state_dict_hash(base.state_dict())
        if base_hash != signature.base_hash:
            raise SkillSignatureError(f"the skills in {directory} were trained on base {signature.base_hash[:12]}, this "
                                      f"policy is {base_hash[:12]}: load the base checkpoint they were trained on")
        self.router = SkillRouter(self.config)
        self.router.load_state_dict(load_file(str(directory / "router.safetensors")))
        self.skills = nn.ModuleList(ResidualSkill(self.config) for _ in range(self.config.num_skills))
        self.held: set[int] = set()
        for path in sorted((directory / "skills").glob("skill_*.safetensors")):
            index_of = int(path.stem.removeprefix("skill_"))
            self.skills[index_of].load_state_dict(load_file(str(path)))
            self.held.add(index_of)
        self.router.eval()
        self.skills.eval()

    @torch.no_grad()
    def predict(self, base: Policy, obs: dict) -> tuple[torch.Tensor, StepRouting]:
        """The action chunk in robot units (B, H, A) with the routed skills' residuals, and the
        routing of the first batch item."""
        observation, chunk = base_outputs(base, obs)
        routing = self.router(obs["language"].float())
        held = torch.tensor([i in self.held for i in range(self.config.num_skills)])
        # A routed skill the set does not hold contributes nothing: its weight is zeroed.
        weights = routing.weights * held[routing.indices]
        final = apply_skills(chunk, observation, self.skills, dataclasses.replace(routing, weights=weights))
        names = tuple(f"skill_{i}" for i in routing.indices[0].tolist())
        missing = tuple(n for n, i in zip(names, routing.indices[0].tolist()) if i not in self.held)
        return base.normalizer.denormalize_action(final), StepRouting(names, tuple(weights[0].tolist()), missing)
