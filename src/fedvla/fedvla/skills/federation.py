"""Federated skill rounds (``federation_mode: skills``): the server keeps the skill library and the
router; per round each client routes its own tasks' instructions, fetches only the skills they
route to (and the router), fine-tunes them on its demonstrations with the base frozen, and uploads
per skill the delta and its sample count, and the router's delta. The server checks every upload
(:func:`~fedvla.skills.aggregation.check_skill_delta`), aggregates each skill over the clients that
trained it and the router over all (sample-weighted), and publishes a new library version.

Choices where the paper is silent: skills are named ``skill_<i>`` after their router output; the
router is federated like a skill that every client trains; a client's routed skills are the top-K
of each of its instructions (their union), fixed at the start of its round.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig
from fedvla.skills.aggregation import SkillDelta, SkillUploadError, aggregate_skill_deltas, check_skill_delta
from fedvla.skills.library import SkillLibrary, SkillSignature
from fedvla.skills.modules import ResidualSkill, SkillConfig, SkillRouter
from fedvla.skills.training import SkillTrainResult, train_skills

ROUTER_ID = "router"


def skill_id(index: int) -> str:
    return f"skill_{index}"


def _delta(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (after[k].detach() - before[k]).clone() for k in before}


@dataclasses.dataclass
class SkillUpload:
    client_id: str
    signature: SkillSignature
    routed: list[str]  # the skills the client fetched this round
    tasks: list[str]  # the tasks its demonstrations are of (recorded with the skills it trained)
    skills: list[SkillDelta]
    router: SkillDelta | None
    train: SkillTrainResult


class SkillServer:
    """The library's keeper: hands out routed skills, checks uploads, aggregates, publishes."""

    def __init__(self, library: SkillLibrary, config: SkillConfig, max_upload_bytes: int = 64 << 20) -> None:
        self.library, self.config, self.max_upload_bytes = library, config, max_upload_bytes
        self.rejections: list[tuple[str, str, str]] = []  # (client, skill, reason)
        if not library.skills:  # a new library: zero-residual skills and a fresh router, version 1
            torch.manual_seed(0)
            library.publish({skill_id(i): ResidualSkill(config).state_dict() for i in range(config.num_skills)},
                            {}, router=SkillRouter(config).state_dict())
        self._routed: dict[str, set[str]] = {}

    def fetch(self, client_id: str, signature: SkillSignature, routed: Sequence[str]) -> dict:
        """The routed skills, for a client whose base has ``signature`` (refused if not the library's)."""
        self._routed[client_id] = set(routed)
        return {s: self.library.load_skill(s, signature) for s in routed}

    def aggregate(self, uploads: Sequence[SkillUpload]) -> dict[str, int]:
        """Check every upload, aggregate the accepted ones, publish; the versions written."""
        accepted, routers = [], []
        templates = {s: self.library.load_skill(s, self.library.signature) for s in self.library.skills}
        router_template = self.library.load_router(self.library.signature)
        for upload in uploads:
            signature_ok = not self.library.signature.differences(upload.signature)
            for delta in upload.skills:
                try:
                    check_skill_delta(delta, self._routed.get(upload.client_id, ()), templates.get(delta.skill_id, {}),
                                      signature_ok, self.max_upload_bytes)
                    accepted.append(delta)
                except SkillUploadError as err:
                    self.rejections.append((upload.client_id, delta.skill_id, err.reason.value))
            if upload.router is not None:
                try:
                    check_skill_delta(upload.router, [ROUTER_ID], router_template, signature_ok, self.max_upload_bytes)
                    routers.append(upload.router)
                except SkillUploadError as err:
                    self.rejections.append((upload.client_id, ROUTER_ID, err.reason.value))
        merged = aggregate_skill_deltas(accepted + routers)
        new_skills = {s: {k: templates[s][k] + d[k] for k in d} for s, d in merged.items() if s != ROUTER_ID}
        router = ({k: router_template[k] + merged[ROUTER_ID][k] for k in router_template}
                  if ROUTER_ID in merged else None)
        tasks = {}
        for upload in uploads:
            for delta in upload.skills:
                tasks.setdefault(delta.skill_id, set()).update(upload.tasks)
        return self.library.publish(new_skills, {s: sorted(t) for s, t in tasks.items()}, router=router)


class SkillClient:
    """A robot: its frozen base, its demonstrations, its instructions (the tasks it trains)."""

    def __init__(self, client_id: str, base: Policy, signature: SkillSignature, dataset: Dataset,
                 instructions: torch.Tensor, config: SkillConfig, train: TrainConfig, tasks: Sequence[str] = ()) -> None:
        self.client_id, self.base, self.signature, self.tasks = client_id, base, signature, list(tasks)
        self.dataset, self.instructions, self.config, self.train_config = dataset, instructions, config, train

    def route(self, router_state: dict) -> list[str]:
        router = SkillRouter(self.config)
        router.load_state_dict(router_state)
        with torch.no_grad():
            indices = router(self.instructions.float()).indices
        return [skill_id(i) for i in sorted(set(indices.reshape(-1).tolist()))]

    def run_round(self, server: SkillServer) -> SkillUpload:
        router_state = server.library.load_router(self.signature)  # checks the signature too
        routed = self.route(router_state)
        skill_states = server.fetch(self.client_id, self.signature, routed)
        skills = nn.ModuleList(ResidualSkill(self.config) for _ in range(self.config.num_skills))
        for name, state in skill_states.items():
            skills[int(name.split("_")[1])].load_state_dict(state)
        router = SkillRouter(self.config)
        router.load_state_dict(router_state)
        result = train_skills(self.base, skills, router, self.dataset, self.train_config, self.config)
        samples = len(self.dataset)
        deltas = [SkillDelta(self.client_id, name, _delta(skills[int(name.split("_")[1])].state_dict(), state), samples)
                  for name, state in skill_states.items()]
        return SkillUpload(self.client_id, self.signature, routed, self.tasks, deltas,
                           SkillDelta(self.client_id, ROUTER_ID, _delta(router.state_dict(), router_state), samples), result)


def run_skill_rounds(server: SkillServer, clients: Sequence[SkillClient], rounds: int) -> list[dict]:
    """In-process federated skill rounds (the ROS transport runs the same server and clients)."""
    history = []
    for round_index in range(rounds):
        uploads = [client.run_round(server) for client in clients]
        versions = server.aggregate(uploads)
        history.append({"round": round_index, "versions": versions,
                        "routed": {u.client_id: u.routed for u in uploads},
                        "losses": {u.client_id: u.train.epoch_losses[-1] for u in uploads},
                        "upload_bytes": {u.client_id: sum(t.numel() * t.element_size() for d in [*u.skills, u.router]
                                                          for t in d.delta.values()) for u in uploads}})
    return history
