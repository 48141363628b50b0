"""The simulation study (FedVLA §4.1, Tables 1 and 3, Figs. 5 and 6), end to end, resumable.

``fedvla study --scale smoke|cpu|paper`` runs, under one output directory:

1. ``data/<task>``: expert demonstrations (:mod:`fedvla.sim.collect`), one client per task;
2. per method (``config/study/methods/<name>.yaml``: aggregation mode and model switches, the
   same trainer and federation code for all): federated (or centralized) training through
   :func:`fedvla.federation.simulation.run_simulation`, with the validation loss of every task's
   policy (global trunk, that client's stems/head) after every round on held-out episodes;
3. closed-loop evaluation of every task's final checkpoint (:mod:`fedvla.sim.evaluate`);
4. the report (:mod:`fedvla.sim.report`): Markdown tables in the paper's layout next to the paper's
   numbers, plots, and ``run.json`` (command, config hash, seeds, date, machine).

A method whose ``result.json`` exists is not run again (delete it to rerun): a long study that was
interrupted resumes where it stopped. Scales (``config/study/scales/<scale>.yaml``) set the data
size, the model, the rounds × local epochs and the evaluation trials.

Choices where the paper is silent (all config): the centralized upper bound trains the FedVLA
model (IOSP + DGMoE) on the union of the data; "w/o DGMoE" keeps EDA, which with a dense FFN (one
"expert" used by every token) weighs clients equally; validation holds out the last
``validation_fraction`` of each task's episodes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from fedvla.config import ConfigError, from_mapping, require
from fedvla.federation.simulation import CENTRALIZED_CLIENT, Mode, SimulationConfig, run_simulation
from fedvla.sim.collect import CollectConfig, collect_study_data
from fedvla.sim.evaluate import EvalConfig, evaluate_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class MethodConfig:
    """One row of the paper's tables: how the clients' models are aggregated and which modules the
    model has (``model`` overrides the scale's model config, e.g. ``iosp: false``)."""

    name: str = ""
    label: str = ""  # as the tables print it
    mode: Mode = Mode.EDA
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    # federation server options (SimulationConfig.server_options), e.g. client-level DP
    federation: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A dense trunk as large as this method's MoE trunk: its feed-forward hidden width is that
    # method's experts x their hidden width (FedAvg matched to FedVLA's trunk parameters).
    match_trunk_of: str = ""
    # This method's client split (fedvla.sim.partition.ClientSplit fields) over the scale's: the
    # settings where EDA has something to act on (Dirichlet task mixes, 10x data sizes) run in the
    # same study as the paper's one client per task, on the same demonstrations and trials.
    clients: dict[str, Any] = dataclasses.field(default_factory=dict)
    # IOSP on the study's trained YOLOv8 (the scale's ``detector`` settings, trained under
    # ``detector/``) instead of the simulator's segmentation, in collection and closed loop: the
    # row that shows what perfect masks were worth. Its demonstrations are the same episodes,
    # parsed by the detector (``data_detector/``).
    detector: bool = False

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode) if not isinstance(self.mode, Mode) else self.mode
        require(bool(self.name), "name", "is empty", "the method's file name")
        self.label = self.label or self.name


@dataclasses.dataclass(kw_only=True)
class StudyScale:
    name: str = ""
    model_config: str = "hpt_small.yaml"  # under config/model/
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides for every method
    collect: dict[str, Any] = dataclasses.field(default_factory=dict)  # CollectConfig fields
    evaluate: dict[str, Any] = dataclasses.field(default_factory=dict)  # EvalConfig fields
    # The IOSP detector trained for the study: {data: ..., train: DetectorTrainConfig fields}, the
    # data being fedvla.sim.detector_data.MetaWorldDetectorData fields for the simulation study (its
    # methods with ``detector: true``) and fedvla.twin.detector.DetectorDataConfig fields for the twin.
    detector: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Which client holds which demonstrations (fedvla.sim.partition.ClientSplit fields): one client
    # per task (the paper's, the default), Dirichlet task mixes, or data sizes spanning a ratio.
    clients: dict[str, Any] = dataclasses.field(default_factory=dict)
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    # Training seeds per method (seed, seed + 1, ...; 1 where a method is not named): the model's
    # initialisation and the batch order; every seed trains on the same demonstrations and is
    # evaluated on the same layouts, so methods compare trial by trial within a seed.
    seeds: dict[str, int] = dataclasses.field(default_factory=dict)
    validation_fraction: float = 0.2
    methods: tuple[str, ...] = ("centralized", "fedavg", "fedavg_matched", "fedvla", "wo_iosp", "wo_dgmoe", "wo_eda")
    device: str = "auto"

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        require(0.0 < self.validation_fraction < 1.0, "validation_fraction",
                f"{self.validation_fraction} is outside (0, 1)", "e.g. 0.2")
        require(bool(self.methods), "methods", "is empty", "method names under config/study/methods/")

    def collect_config(self) -> CollectConfig:
        return from_mapping(CollectConfig, {"seed": self.seed, **self.collect}, where=f"{self.name}.collect")

    def client_split(self, method: MethodConfig | None = None):
        """The scale's split of the demonstrations over clients, with ``method``'s own over it."""
        from fedvla.sim.partition import ClientSplit

        own = method.clients if method is not None else {}
        return from_mapping(ClientSplit, {"seed": self.seed, **self.clients, **own},
                            where=f"{method.name}.clients" if own else f"{self.name}.clients")

    def eval_config(self) -> EvalConfig:
        # trials never on a layout the demonstrations were collected on
        collect = self.collect_config()
        return from_mapping(EvalConfig, {"training_seed": collect.seed, "detector": collect.detector, **self.evaluate},
                            where=f"{self.name}.evaluate")

    def training_seeds(self, method: MethodConfig) -> list[int]:
        count = int(self.seeds.get(method.name, 1))
        require(count >= 1, f"seeds.{method.name}", f"must be at least 1, got {count}")
        return [self.seed + k for k in range(count)]

    def simulation_config(self, method: MethodConfig, seed: int | None = None) -> SimulationConfig:
        seed = self.seed if seed is None else seed
        options = dict(method.federation)
        if options.get("dp_noise_multiplier"):
            options.setdefault("dp_noise_seed", seed)  # a study's DP noise is reproducible from its seed
        return SimulationConfig(mode=method.mode, rounds=self.rounds, local_epochs=self.local_epochs,
                                batch_size=self.batch_size, lr=self.lr, seed=seed, device=self.device,
                                server_options=options)


def _closed_rounds(training_dir: Path) -> int:
    """Rounds the federation server in ``training_dir`` has closed (0 before it exists)."""
    state = training_dir / "server" / "state.json"
    return len(json.loads(state.read_text())["history"]) if state.is_file() else 0


def load_scale(config_dir: Path, scale: str, folder: str = "scales", **overrides: Any) -> StudyScale:
    """``config/study/<folder>/<scale>.yaml`` (``scales``: the simulation study's; ``twin_scales``:
    the workcell twin's)."""
    path = config_dir / "study" / folder / f"{scale}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / "study" / folder).glob("*.yaml"))
        raise ConfigError("scale", f"no study scale {scale!r}", ", ".join(known))
    values = yaml.safe_load(path.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(StudyScale, {"name": scale, **values}, where=path.name)


def load_method(config_dir: Path, name: str) -> MethodConfig:
    path = config_dir / "study" / "methods" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / "study" / "methods").glob("*.yaml"))
        raise ConfigError("methods", f"no study method {name!r}", ", ".join(known))
    return from_mapping(MethodConfig, {"name": name, **(yaml.safe_load(path.read_text()) or {})}, where=path.name)


def config_hash(scale: StudyScale, methods: list[MethodConfig]) -> str:
    # Fields at their empty default are left out, so adding an option keeps earlier runs' hashes.
    described = [{k: v for k, v in dataclasses.asdict(m).items()
                  if not (k in ("federation", "match_trunk_of", "clients", "detector") and not v)} for m in methods]
    scale_fields = {k: v for k, v in dataclasses.asdict(scale).items()
                    if not (k in ("detector", "clients", "seeds") and not v)}
    text = json.dumps({"scale": scale_fields, "methods": described}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Study:
    # The command running the study, recorded in each run's run.json; set by run(). A class default
    # so that a subclass with its own __init__ (TwinStudy) has it too.
    command: str = ""

    def __init__(self, config_dir: Path, scale: StudyScale, output: Path, *, show_progress: bool = True) -> None:
        self.config_dir = Path(config_dir)
        self.scale = scale
        self.output = Path(output)
        self.show_progress = show_progress
        self.methods = [load_method(self.config_dir, name) for name in scale.methods]
        self.collect = scale.collect_config()
        self.evaluation = scale.eval_config()
        self.detector: Path | None = None  # the trained detector's weights, once ensure_detector ran

    # 1. data -------------------------------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        """One client per task."""
        return tuple(self.collect.tasks)

    @property
    def data_dir(self) -> Path:
        return self.output / "data"

    def method_data_dir(self, method: MethodConfig) -> Path:
        """Where ``method``'s demonstrations are: the study's, or the same episodes parsed by the
        trained detector."""
        return self.output / "data_detector" if method.detector else self.data_dir

    def ensure_data(self) -> None:
        self._collect(self.data_dir, self.collect)
        if any(method.detector for method in self.methods):
            self._collect(self.output / "data_detector", dataclasses.replace(self.collect, detector=str(self.detector)))

    def _collect(self, directory: Path, collect: CollectConfig) -> None:
        from fedvla.data.episodes import load_meta

        missing = []
        for task in self.tasks:
            try:
                if len(load_meta(directory / task).episodes) >= collect.episodes_per_task:
                    continue
            except ValueError:
                pass
            missing.append(task)
        if missing:
            collect_study_data(dataclasses.replace(collect, tasks=tuple(missing)), directory,
                               show_progress=self.show_progress)

    def ensure_detector(self) -> Path | None:
        """The trained YOLOv8 of the methods with ``detector: true``: the scale's ``detector``
        settings, trained under ``detector/`` once (resumable); None when no method uses one."""
        if not any(method.detector for method in self.methods):
            return None
        from fedvla.iosp.detector_training import DetectorTrainConfig, detector_weights
        from fedvla.sim.detector_data import MetaWorldDetectorData, build_metaworld_detector

        settings = self.scale.detector
        data = from_mapping(MetaWorldDetectorData, {"tasks": self.tasks, "image_size": self.collect.image_size,
                                                    **settings.get("data", {})}, where=f"{self.scale.name}.detector.data")
        train = from_mapping(DetectorTrainConfig, {"image_size": data.image_size, **settings.get("train", {})},
                             where=f"{self.scale.name}.detector.train")
        build_metaworld_detector(self.output / "detector", data, train, show_progress=self.show_progress)
        return detector_weights(self.output / "detector")

    # 2. training ------------------------------------------------------------------------------------
    def model_config(self, method: MethodConfig):
        from fedvla.data.episodes import load_meta
        from fedvla.model.config import PolicyConfig

        meta = load_meta(self.method_data_dir(method) / self.tasks[0])
        values = {**self.scale.model, **method.model, "camera_names": meta.camera_names, "image_size": meta.image_size,
                  "proprio_dim": meta.proprio_dim, "action_dim": meta.action_dim}
        if values.get("iosp", False):
            values.setdefault("iosp_tokens_per_group", meta.iosp_tokens_per_group)
        if method.match_trunk_of:
            reference = self.model_config(load_method(self.config_dir, method.match_trunk_of))
            require(values.get("feed_forward") == "dense", "match_trunk_of", "needs a dense trunk",
                    "feed_forward: dense in the method's model")
            values["expert_hidden_dim"] = reference.num_experts * reference.expert_hidden_dim
        config = PolicyConfig.from_yaml(self.config_dir / "model" / self.scale.model_config, **values)
        require(config.iosp or not method.detector, f"{method.name}.detector",
                "a detector only parses scenes for IOSP", "iosp: true in the method's model")
        return config

    def split(self, task: str, model, data_dir: Path | None = None):
        """(training, validation) datasets of one task for ``model`` (a PolicyConfig that must fit
        the data, the study's or ``data_dir``): the last episodes are held out."""
        from fedvla.data.episodes import ChunkDataset, check_policy_fits, load_meta

        data_dir = data_dir or self.data_dir
        meta = load_meta(data_dir / task)
        check_policy_fits(meta, model)
        horizon, with_iosp = model.horizon, model.iosp
        count = len(meta.episodes)
        held_out = max(1, round(count * self.scale.validation_fraction))
        if count - held_out < 1:
            raise ConfigError("episodes_per_task", f"{task} has {count} episodes: none left to train on after "
                              "holding out validation episodes", "at least 2")
        train = ChunkDataset(data_dir / task, horizon, episodes=range(count - held_out), with_iosp=with_iosp)
        validation = ChunkDataset(data_dir / task, horizon, episodes=range(count - held_out, count), with_iosp=with_iosp)
        return train, validation

    def client_datasets(self, model, training: dict, method: MethodConfig | None = None
                        ) -> tuple[dict, dict[str, str], dict[str, dict[str, int]]]:
        """The clients' (model, dataset) by the scale's split of each task's training episodes
        (``method``'s own where it has one), which client evaluates each task, and the episodes
        each client holds per task."""
        from torch.utils.data import ConcatDataset

        from fedvla.data.episodes import ChunkDataset
        from fedvla.sim.partition import SplitKind, evaluating_client, partition

        split = self.scale.client_split(method)
        if split.kind is SplitKind.TASK:
            return ({task: (model, data) for task, data in training.items()}, {task: task for task in training},
                    {task: {task: len(data.episodes)} for task, data in training.items()})
        parts = partition({task: list(range(len(data.episodes))) for task, data in training.items()}, split)
        data_dir = self.method_data_dir(method) if method is not None else self.data_dir
        datasets = {client: (model, ConcatDataset([ChunkDataset(data_dir / task, model.horizon, episodes=indices,
                                                                with_iosp=model.iosp)
                                                   for task, indices in tasks.items()]))
                    for client, tasks in parts.items()}
        holders = {task: evaluating_client(parts, task) for task in training}
        return datasets, holders, {client: {t: len(i) for t, i in tasks.items()} for client, tasks in parts.items()}

    def method_directory(self, method: MethodConfig, seed: int) -> Path:
        """``methods/<name>`` for the first training seed, ``methods/<name>_seed<k>`` for the k-th after it."""
        k = seed - self.scale.seed
        return self.output / "methods" / (method.name if k == 0 else f"{method.name}_seed{k}")

    def run_method(self, method: MethodConfig, seed: int | None = None) -> dict:
        from fedvla.model.train import evaluate_loss

        seed = self.scale.seed if seed is None else seed
        directory = self.method_directory(method, seed)
        result_path = directory / "result.json"
        if result_path.is_file():
            log.info("%s (seed %d): done before (%s), not rerun", method.name, seed, result_path)
            return json.loads(result_path.read_text())
        started, started_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
        model = self.model_config(method)
        training, validation = {}, {}
        for task in self.tasks:
            training[task], validation[task] = self.split(task, model, self.method_data_dir(method))
        datasets, holders, clients_data = self.client_datasets(model, training, method)
        training_dir, curves_path = directory / "federation", directory / "curves.json"
        curves: dict[str, list[float]] = {task: [] for task in self.tasks}
        resumed_at = None  # (the round an interrupted run resumed at: the rounds it had closed)
        if training_dir.exists() and curves_path.is_file():
            # An interrupted run resumes after its last closed round (server state, client
            # checkpoints and the validation curves so far are on disk).
            curves = json.loads(curves_path.read_text())
            resumed_at = _closed_rounds(training_dir)
            log.info("%s: resuming at round %d", method.name, resumed_at)
        elif training_dir.exists():  # interrupted before its first curve point: start again
            import shutil

            shutil.rmtree(training_dir)

        def client_of(task: str, clients: dict):
            return clients[CENTRALIZED_CLIENT] if CENTRALIZED_CLIENT in clients else clients[holders[task]]

        def record_validation(clients) -> None:
            for task in self.tasks:
                curves[task].append(evaluate_loss(client_of(task, clients).policy, validation[task]))
            directory.mkdir(parents=True, exist_ok=True)
            tmp = curves_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(curves))
            tmp.replace(curves_path)

        def on_start(clients) -> None:
            # The curves start with the initial model (before round 0), then one point per round;
            # a run stopped between closing a round and validating it misses that round's point.
            if len(next(iter(curves.values()))) < _closed_rounds(training_dir) + 1:
                record_validation(clients)

        def on_round(record, clients) -> None:
            for client in clients.values():
                client.load_global_trunk()  # the model the round produced (the next round starts from it)
            record_validation(clients)

        simulation = run_simulation(self.scale.simulation_config(method, seed), datasets, training_dir, on_round=on_round,
                                    on_start=on_start, show_progress=self.show_progress)
        trained_s = time.monotonic() - started
        evaluations = {}
        for task in self.tasks:
            checkpoint = client_of(task, simulation.clients).save_final_checkpoint()
            evaluations[task] = self.evaluate_task(checkpoint, task, directory, method)
            log.info("%s on %s: success %.1f%%", method.name, task, 100 * evaluations[task]["success_rate"])
        from fedvla.paths import working_tree_commit
        from fedvla.sim.report import machine

        # A long study's runs may come from several sittings and pinned commits: each run records
        # its own provenance (run.json beside result.json; the commit in both).
        commit = working_tree_commit()
        provenance = {"command": self.command, "commit": commit, "started": started_at,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": time.monotonic() - started,
                      "resumed_at_round": resumed_at, "machine": machine()}
        result = {"method": dataclasses.asdict(method) | {"mode": method.mode.value}, "seed": seed,
                  "commit": commit, "model": model.to_dict(),
                  "validation_loss": curves, "evaluation": evaluations,
                  "rounds": [dataclasses.asdict(r) for r in simulation.records],
                  "clients": clients_data, "evaluated_by": holders,
                  "train_seconds": trained_s, "seconds": time.monotonic() - started}
        directory.mkdir(parents=True, exist_ok=True)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(result_path)
        (directory / "run.json").write_text(json.dumps(provenance, indent=1))
        return result

    def evaluate_task(self, checkpoint: Path, task: str, directory: Path, method: MethodConfig) -> dict:
        """Closed loop of one task's final checkpoint (a dict with ``success_rate``); here the
        in-process Meta-World evaluation (IOSP parsing with the trained detector for a
        ``detector`` method), its trials recorded as rosbag2 under ``directory/bags``."""
        bags = directory / "bags"  # closed-loop trials recorded as rosbag2 (EvalConfig.record_trials)
        config = dataclasses.replace(self.evaluation, detector=str(self.detector)) if method.detector else self.evaluation
        evaluation = evaluate_checkpoint(checkpoint, task, config, bag_dir=bags).to_dict()
        evaluation["bags"] = sorted(str(p) for p in bags.glob(f"{task}_trial_*"))
        return evaluation

    def run(self, command: str = "", first_seeds: int = 0) -> dict[str, list[dict]]:
        """Every method at each of its training seeds: ``{method: [result per seed]}``. With
        ``first_seeds`` k, only each method's first k seeds (a long study's first pass: one seed of
        every method before the second seed of any)."""
        from fedvla.sim.report import write_report

        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.command = command
        self.detector = self.ensure_detector()
        self.ensure_data()
        results = {method.name: [self.run_method(method, seed)
                                 for seed in self.scale.training_seeds(method)[:first_seeds or None]]
                   for method in self.methods}
        write_report(self.output, self.scale, self.methods, results, command=command, started=started,
                     config_hash=config_hash(self.scale, self.methods), expert=self.expert_ceiling())
        return results

    def report(self, command: str, started: str = "", first_seeds: int = 0) -> Path:
        """The report from the results already on disk (every method at each of its training seeds,
        or its first ``first_seeds``, must have its ``result.json``), and the expert's ceiling on the
        same trials (``expert.json``, run if missing: the scripted expert needs no training): no
        policy is trained or evaluated."""
        from fedvla.sim.report import write_report

        results = {}
        for method in self.methods:
            runs = []
            for seed in self.scale.training_seeds(method)[:first_seeds or None]:
                path = self.method_directory(method, seed) / "result.json"
                if not path.is_file():
                    raise ConfigError("methods", f"{method.name} (training seed {seed}) has no {path}",
                                      "run the study first, or leave the method out")
                runs.append({"seed": seed, **json.loads(path.read_text())})
            results[method.name] = runs
        recorded = json.loads((self.output / "run.json").read_text()) if (self.output / "run.json").is_file() else {}
        return write_report(self.output, self.scale, self.methods, results, command=command,
                            started=started or recorded.get("started", ""), finished=recorded.get("finished", ""),
                            config_hash=config_hash(self.scale, self.methods), expert=self.expert_ceiling(),
                            record="report.json")

    def expert_ceiling(self) -> dict:
        """The scripted expert's successes (repeats, trials) per task on the evaluation's own trials
        (``expert.json``, kept once computed)."""
        import numpy as np

        from fedvla.sim.evaluate import evaluate_expert

        path = self.output / "expert.json"
        trials = dataclasses.asdict(self.evaluation)
        kept = json.loads(path.read_text()) if path.is_file() else {}
        done = kept.get("successes", {}) if kept.get("evaluation") == trials else {}
        for task in self.tasks:
            if task not in done:
                done[task] = evaluate_expert(task, self.evaluation).astype(int).tolist()
                path.write_text(json.dumps({"evaluation": trials, "successes": done}))
        return {task: np.asarray(done[task], dtype=bool) for task in self.tasks}
