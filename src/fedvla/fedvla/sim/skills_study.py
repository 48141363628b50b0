"""The skill-federation experiment (issue 25) on Meta-World, end to end, resumable.

``fedvla study-skills --scale smoke|cpu`` runs, under one output directory:

1. ``data/<task>``: expert demonstrations of the base tasks and the new tasks (:mod:`fedvla.sim.collect`);
2. ``base``: a policy trained centrally on the base tasks' demonstrations, then frozen;
3. per method, the new tasks learned from their robots' demonstrations only, one robot per new
   task (``methods/<name>/result.json``; a method whose result exists is not run again):

   * ``base`` — the base alone;
   * ``skills_federated`` — residual skills and their router federated over the transport's skill
     rounds (:mod:`fedvla.skills.federation`), the base frozen;
   * ``skills_local`` — the same skills trained by each robot alone (no federation);
   * ``full_ft_federated`` — federated fine-tuning of the whole base (trunk by FedAvg, stems and
     head local): an oracle the scenario forbids (the base may not be retrained);
   * ``lora_federated`` — LoRA adapters (peft) on the trunk's feed-forward layers, FedAvg over the
     robots each round, the base frozen; merged into the trunk for evaluation.

4. closed-loop success of every method on the new tasks and on the base tasks (forgetting), with
   Wilson intervals, the bytes each robot uploads per round and its training time per round (edge
   compute), in ``results.md``, ``success.png``, ``cost.png`` and ``run.json``.

Choices where the issue is silent (all in the scale): the base tasks' success under a method is
measured with what a robot of that method would run (the federated library's router and all its
skills; each local robot's own set, averaged; each fine-tuned robot's policy, averaged); every
method gets the same rounds × local epochs; the base's normaliser is kept (its outputs keep their
meaning for the skills and the adapters).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fedvla.config import from_mapping, require
from fedvla.sim.collect import CollectConfig, collect_study_data
from fedvla.sim.evaluate import EvalConfig, evaluate_checkpoint

log = logging.getLogger(__name__)
METHODS = ("base", "skills_federated", "skills_local", "full_ft_federated", "lora_federated")
LABELS = {"base": "Base alone", "skills_federated": "Base + federated skills", "skills_local": "Base + local skills",
          "full_ft_federated": "Full federated fine-tuning (oracle)", "lora_federated": "Federated LoRA on the trunk"}


@dataclasses.dataclass(kw_only=True)
class SkillsStudyScale:
    name: str = ""
    model_config: str = "tiny.yaml"  # under config/model/
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    collect: dict[str, Any] = dataclasses.field(default_factory=dict)  # CollectConfig fields (tasks: base + new)
    base_tasks: tuple[str, ...] = ("door-lock-v3", "drawer-close-v3")
    new_tasks: tuple[str, ...] = ("sweep-into-v3", "window-open-v3")
    evaluate: dict[str, Any] = dataclasses.field(default_factory=dict)  # EvalConfig fields
    base_epochs: int = 30
    rounds: int = 5
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    skills: dict[str, Any] = dataclasses.field(default_factory=dict)  # SkillConfig fields beyond the base's sizes
    lora_rank: int = 8
    lora_alpha: float = 16.0
    seed: int = 0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        self.base_tasks, self.new_tasks, self.methods = tuple(self.base_tasks), tuple(self.new_tasks), tuple(self.methods)
        require(bool(self.base_tasks) and bool(self.new_tasks), "new_tasks", "base and new tasks are both needed",
                "e.g. base_tasks: [door-lock-v3, drawer-close-v3], new_tasks: [sweep-into-v3, window-open-v3]")
        require(not set(self.base_tasks) & set(self.new_tasks), "new_tasks", "overlaps base_tasks", "other tasks")
        unknown = sorted(set(self.methods) - set(METHODS))
        require(not unknown, "methods", f"unknown {unknown}", ", ".join(METHODS))
        for name in ("base_epochs", "rounds", "local_epochs", "lora_rank"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.base_tasks + self.new_tasks

    def collect_config(self) -> CollectConfig:
        return from_mapping(CollectConfig, {"seed": self.seed, "iosp": False, **self.collect, "tasks": self.tasks},
                            where=f"{self.name}.collect")

    def eval_config(self) -> EvalConfig:
        return from_mapping(EvalConfig, {"training_seed": self.seed, **self.evaluate}, where=f"{self.name}.evaluate")


def load_skills_scale(config_dir: Path, scale: str, **overrides: Any) -> SkillsStudyScale:
    path = Path(config_dir) / "study" / "skills_scales" / f"{scale}.yaml"
    require(path.is_file(), "scale", f"no {path}", ", ".join(p.stem for p in path.parent.glob("*.yaml")))
    values = {**(yaml.safe_load(path.read_text()) or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return from_mapping(SkillsStudyScale, {"name": scale, **values}, where=str(path))


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    from safetensors.torch import save

    return len(save({k: v.detach().contiguous() for k, v in state.items()}))


class SkillsStudy:
    def __init__(self, config_dir: Path, scale: SkillsStudyScale, output: Path, *, show_progress: bool = True) -> None:
        self.config_dir, self.scale, self.output = Path(config_dir), scale, Path(output)
        self.show_progress = show_progress
        self.evaluation = scale.eval_config()

    # data and the base -------------------------------------------------------------------------------
    def ensure_data(self) -> None:
        from fedvla.data.episodes import load_meta

        collect = self.scale.collect_config()
        missing = []
        for task in collect.tasks:
            try:
                if len(load_meta(self.output / "data" / task).episodes) >= collect.episodes_per_task:
                    continue
            except ValueError:
                pass
            missing.append(task)
        if missing:
            collect_study_data(dataclasses.replace(collect, tasks=tuple(missing)), self.output / "data",
                               show_progress=self.show_progress)

    def model_config(self):
        from fedvla.data.episodes import load_meta
        from fedvla.model.config import PolicyConfig

        meta = load_meta(self.output / "data" / self.scale.tasks[0])
        return PolicyConfig.from_yaml(self.config_dir / "model" / self.scale.model_config,
                                      **{**self.scale.model, "iosp": False, "camera_names": meta.camera_names,
                                         "image_size": meta.image_size, "proprio_dim": meta.proprio_dim,
                                         "action_dim": meta.action_dim})

    def dataset(self, task: str):
        from fedvla.data.episodes import ChunkDataset

        return ChunkDataset(self.output / "data" / task, horizon=self.model_config().horizon)

    def train_config(self, epochs: int, seed_offset: int = 0):
        from fedvla.model.train import TrainConfig

        return TrainConfig(epochs=epochs, batch_size=self.scale.batch_size, lr=self.scale.lr,
                           seed=self.scale.seed + seed_offset)

    @property
    def base_checkpoint(self) -> Path:
        return self.output / "base"

    def ensure_base(self) -> dict:
        """The base policy, trained centrally on the base tasks (once)."""
        from torch.utils.data import ConcatDataset

        from fedvla.data.episodes import fit_normalizer
        from fedvla.model.checkpoint import save_checkpoint, seeded_policy
        from fedvla.model.train import train_policy

        info_path = self.output / "base.json"
        if info_path.is_file() and (self.base_checkpoint / "config.json").is_file():
            return json.loads(info_path.read_text())
        data = ConcatDataset([self.dataset(t) for t in self.scale.base_tasks])
        policy = seeded_policy(self.model_config(), self.scale.seed)
        fit_normalizer(policy, data)
        started = time.monotonic()
        result = train_policy(policy, data, self.train_config(self.scale.base_epochs), show_progress=self.show_progress,
                              description="base")
        save_checkpoint(policy, self.base_checkpoint, metadata={"tasks": list(self.scale.base_tasks)})
        info = {"tasks": list(self.scale.base_tasks), "epochs": self.scale.base_epochs, "samples": len(data),
                "losses": result.epoch_losses, "seconds": time.monotonic() - started,
                "parameters": sum(p.numel() for p in policy.parameters())}
        _atomic_json(info_path, info)
        return info

    # methods ---------------------------------------------------------------------------------------
    def evaluate(self, task: str, checkpoint: Path | None = None, skills: Path | None = None) -> dict:
        return evaluate_checkpoint(checkpoint or self.base_checkpoint, task, self.evaluation,
                                   skills_path=skills or "").to_dict()

    def run_method(self, name: str) -> dict:
        directory = self.output / "methods" / name
        path = directory / "result.json"
        if path.is_file():
            return json.loads(path.read_text())
        started = time.monotonic()
        runner = getattr(self, f"_run_{name}")
        evaluation, costs = runner(directory)
        result = {"method": {"name": name, "label": LABELS[name]}, "evaluation": evaluation, "costs": costs,
                  "seconds": time.monotonic() - started}
        _atomic_json(path, result)
        return result

    def _evaluate_all(self, new: dict[str, dict], old_runs: dict[str, list[dict]]) -> dict:
        """Per task: the new tasks' evaluations, and each base task's trials pooled over the robots'
        variants (their successes concatenated as extra repeats)."""
        evaluation = dict(new)
        for task, runs in old_runs.items():
            merged = dict(runs[0])
            merged["successes"] = [row for run in runs for row in run["successes"]]
            merged["steps"] = [row for run in runs for row in run["steps"]]
            merged["variants"] = len(runs)
            evaluation[task] = merged
        return evaluation

    def _run_base(self, directory: Path) -> tuple[dict, dict]:
        evaluation = {task: self.evaluate(task) for task in self.scale.tasks}
        return evaluation, {"upload_bytes_per_round": 0, "train_seconds_per_round": 0.0, "trainable_parameters": 0}

    def _skill_config(self, base):
        from fedvla.skills.modules import SkillConfig

        return SkillConfig(observation_dim=base.config.embed_dim, action_dim=base.config.action_dim,
                           instruction_dim=base.config.language_dim,
                           **{"num_skills": 4, "top_k": 1, "hidden_dim": 128, "router_hidden_dim": 64, **self.scale.skills})

    def _run_skills_federated(self, directory: Path) -> tuple[dict, dict]:
        from fedvla.skills.federation import (SkillFederationClient, SkillFederationServer, SkillServerConfig,
                                              run_skill_rounds)
        from fedvla.skills.inference import write_skill_set
        from fedvla.skills.library import base_signature

        base, signature = base_signature(self.base_checkpoint)
        tasks = self.scale.new_tasks
        credentials = {f"robot_{i}": secrets.token_hex(16) for i in range(len(tasks))}
        server = SkillFederationServer(SkillServerConfig(rounds=self.scale.rounds, quorum=len(tasks),
                                                         state_dir=str(directory / "server")),
                                       self._skill_config(base), signature, credentials)
        clients = [SkillFederationClient(robot, credentials[robot], server, base, signature, self.dataset(task),
                                         self.train_config(self.scale.local_epochs, i), [task], heartbeat_interval_s=3600,
                                         state_dir=directory / robot, base_checkpoint=str(self.base_checkpoint))
                   for i, (robot, task) in enumerate(zip(credentials, tasks))]
        history = run_skill_rounds(server, clients)
        new = {task: self.evaluate(task, skills=client.save_final_checkpoint())
               for client, task in zip(clients, tasks)}
        # A robot of the fleet on a base task: the library's router and every skill.
        library = server.library
        fleet = write_skill_set(directory / "library_set", library.load_router(signature),
                                {s: library.load_skill(s, signature) for s in library.skills}, server.skill_config,
                                signature)
        old = {task: [self.evaluate(task, skills=fleet)] for task in self.scale.base_tasks}
        reports = [r for h in history for r in h["reports"].values()]
        costs = {"upload_bytes_per_round": sum(r.upload_bytes for r in reports) / len(reports),
                 "fetch_bytes_per_round": sum(r.fetch_bytes for r in reports) / len(reports),
                 "train_seconds_per_round": sum(r.train.seconds for r in reports) / len(reports),
                 "trainable_parameters": sum(v[-1].parameters for v in library.skills.values()) // len(library.skills),
                 "routed_per_round": [{robot: r.routed for robot, r in h["reports"].items()} for h in history]}
        return self._evaluate_all(new, old), costs

    def _run_skills_local(self, directory: Path) -> tuple[dict, dict]:
        from torch import nn

        from fedvla.skills.inference import write_skill_set
        from fedvla.skills.library import base_signature
        from fedvla.skills.modules import ResidualSkill, SkillRouter
        from fedvla.skills.training import train_skills

        base, signature = base_signature(self.base_checkpoint)
        config = self._skill_config(base)
        new, old, seconds, parameters = {}, {t: [] for t in self.scale.base_tasks}, [], 0
        for i, task in enumerate(self.scale.new_tasks):
            torch.manual_seed(self.scale.seed)
            skills = nn.ModuleList(ResidualSkill(config) for _ in range(config.num_skills))
            router = SkillRouter(config)
            result = train_skills(base, skills, router, self.dataset(task),
                                  self.train_config(self.scale.rounds * self.scale.local_epochs, i), config)
            seconds.append(result.seconds / self.scale.rounds)
            used = sorted(result.routed)
            saved = write_skill_set(directory / f"robot_{i}", router.state_dict(),
                                    {f"skill_{k}": skills[k].state_dict() for k in used}, config, signature)
            parameters = sum(p.numel() for p in skills[0].parameters())
            new[task] = self.evaluate(task, skills=saved)
            for old_task in self.scale.base_tasks:
                old[old_task].append(self.evaluate(old_task, skills=saved))
        return self._evaluate_all(new, old), {"upload_bytes_per_round": 0, "train_seconds_per_round": sum(seconds) / len(seconds),
                                              "trainable_parameters": parameters}

    def _run_full_ft_federated(self, directory: Path) -> tuple[dict, dict]:
        from fedvla.federation.simulation import Mode, SimulationConfig, run_simulation

        model = self.model_config()
        datasets = {f"robot_{i}": (model, self.dataset(task)) for i, task in enumerate(self.scale.new_tasks)}
        config = SimulationConfig(mode=Mode.FEDAVG, rounds=self.scale.rounds, local_epochs=self.scale.local_epochs,
                                  batch_size=self.scale.batch_size, lr=self.scale.lr, seed=self.scale.seed,
                                  initial_checkpoint=str(self.base_checkpoint))
        rounds_started = time.monotonic()
        simulation = run_simulation(config, datasets, directory / "federation", show_progress=self.show_progress)
        seconds = (time.monotonic() - rounds_started) / (self.scale.rounds * len(datasets))
        checkpoints = {robot: client.save_final_checkpoint() for robot, client in simulation.clients.items()}
        new = {task: self.evaluate(task, checkpoint=checkpoints[f"robot_{i}"])
               for i, task in enumerate(self.scale.new_tasks)}
        old = {task: [self.evaluate(task, checkpoint=c) for c in checkpoints.values()]
               for task in self.scale.base_tasks}
        client = next(iter(simulation.clients.values()))
        upload = _state_bytes(client.policy.trunk.state_dict())
        return self._evaluate_all(new, old), {"upload_bytes_per_round": upload, "train_seconds_per_round": seconds,
                                              "trainable_parameters": sum(p.numel() for p in client.policy.parameters())}

    def _run_lora_federated(self, directory: Path) -> tuple[dict, dict]:
        from fedvla.model.checkpoint import load_checkpoint, save_checkpoint
        from fedvla.model.train import train_policy

        robots = [load_checkpoint(self.base_checkpoint) for _ in self.scale.new_tasks]
        targets = lora_targets(robots[0])
        for policy in robots:
            add_lora(policy, targets, self.scale.lora_rank, self.scale.lora_alpha, self.scale.seed)
        datasets = [self.dataset(task) for task in self.scale.new_tasks]
        global_adapter = adapter_state(robots[0])
        seconds = []
        for round_index in range(self.scale.rounds):
            states, sizes = [], []
            for i, (policy, data) in enumerate(zip(robots, datasets)):
                policy.load_state_dict(global_adapter, strict=False)
                started = time.monotonic()
                train_policy(policy, data, self.train_config(self.scale.local_epochs, 100 * round_index + i),
                             show_progress=self.show_progress, description=f"lora robot_{i} round {round_index}")
                seconds.append(time.monotonic() - started)
                states.append(adapter_state(policy))
                sizes.append(len(data))
            total = float(sum(sizes))
            global_adapter = {k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in global_adapter}
        robots[0].load_state_dict(global_adapter, strict=False)
        merged = merged_policy(robots[0], load_checkpoint(self.base_checkpoint))
        checkpoint = save_checkpoint(merged, directory / "merged")
        evaluation = {task: self.evaluate(task, checkpoint=checkpoint) for task in self.scale.tasks}
        return evaluation, {"upload_bytes_per_round": _state_bytes(global_adapter),
                            "train_seconds_per_round": sum(seconds) / len(seconds),
                            "trainable_parameters": sum(v.numel() for v in global_adapter.values())}

    # all ---------------------------------------------------------------------------------------------
    def run(self, command: str = "") -> Path:
        from fedvla.sim.skills_report import write_skills_report

        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.ensure_data()
        base = self.ensure_base()
        results = {name: self.run_method(name) for name in self.scale.methods}
        return write_skills_report(self.output, self.scale, base, results, command=command, started=started,
                                   aggregation=self.aggregation_figures())

    def aggregation_figures(self) -> list[dict]:
        """One skill's aggregation under CKKS and under SecAgg masks (fedvla.skills.aggregation_cost)
        at this study's skill size and robot count: what encrypting the study's rounds would cost."""
        from fedvla.skills.aggregation_cost import skill_round_figures
        from fedvla.skills.encryption import parameter_count
        from fedvla.skills.modules import ResidualSkill

        path = self.output / "aggregation.json"
        if path.is_file():
            return json.loads(path.read_text())
        from fedvla.skills.library import base_signature

        base, _ = base_signature(self.base_checkpoint)
        parameters = parameter_count(ResidualSkill(self._skill_config(base)).state_dict())
        figures = [dict(dataclasses.asdict(f), parameters=parameters, clients=len(self.scale.new_tasks))
                   for f in skill_round_figures(max(2, len(self.scale.new_tasks)), parameters)]
        _atomic_json(path, figures)
        return figures


# LoRA on the trunk (peft) ---------------------------------------------------------------------------
def lora_targets(policy) -> list[str]:
    """The trunk's feed-forward Linear layers (experts, and the dense FFN): attention's output
    projection is read by ``nn.MultiheadAttention`` as a bare weight (an adapter there would be
    skipped), and the MoE routers choose experts rather than transform features."""
    return [f"trunk.{name}" for name, module in policy.trunk.named_modules()
            if isinstance(module, torch.nn.Linear) and ".ff." in f".{name}." and not name.endswith("router")
            and "attention" not in name]


def add_lora(policy, targets: list[str], rank: int, alpha: float, seed: int) -> None:
    """LoRA adapters (peft) on ``targets``; every other weight frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0), policy)
    for name, parameter in policy.named_parameters():
        parameter.requires_grad_("lora_" in name)


def adapter_state(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items() if "lora_" in k}


def merged_policy(adapted, base):
    """``base`` with each adapted layer's weight W + (α/r)·B·A, as a plain policy (grouped MoE
    inference reads the experts' weights directly, so an unmerged adapter would be skipped)."""
    state = base.state_dict()
    modules = dict(adapted.named_modules())
    with torch.no_grad():
        for name, module in modules.items():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
                state[f"{name}.weight"] = state[f"{name}.weight"] + delta
    base.load_state_dict(state)
    return base.eval()
