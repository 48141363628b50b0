"""Federated experiments in one process, through the same server and client code as the ROS nodes
(:class:`FederationServer`, :class:`FederationClient`, wire format included): the simulation
study's methods are one config field apart.

* ``eda`` — FedVLA: one client per dataset (task), Expert-Driven Aggregation;
* ``fedavg`` — one client per dataset, sample-count weighted (with a DGMoE model this is the
  paper's "w/o EDA" ablation);
* ``centralized`` — one client that holds the union of the datasets (so stems, head and
  normaliser are shared too): plain training on all data, with the same rounds × local epochs.
"""
from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from fedvla.config import ConfigError, parse_enum, require
from fedvla.data.episodes import fit_normalizer
from fedvla.federation.client import (FederationClient, FederationClientConfig, run_until_finished,
                                     trunk_spec)
from fedvla.federation.aggregator import Aggregation
from fedvla.federation.rounds import RoundRecord
from fedvla.federation.server import FederationServer, FederationServerConfig
from fedvla.federation.wire import WireDtype
from fedvla.model.checkpoint import load_checkpoint, seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.train import TrainConfig
from fedvla.model.trunk import Trunk

CENTRALIZED_CLIENT = "centralized"


class Mode(str, enum.Enum):
    EDA = "eda"
    FEDAVG = "fedavg"
    CENTRALIZED = "centralized"


@dataclasses.dataclass(kw_only=True)
class SimulationConfig:
    mode: Mode = Mode.EDA
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    upload_dtype: WireDtype = WireDtype.FLOAT32
    device: str = "auto"
    # FederationServerConfig fields beyond the mode, e.g. {dp_noise_multiplier: 1.0, dp_clip_norm: 4.0}
    # or {secure_aggregation: true}
    server_options: dict = dataclasses.field(default_factory=dict)
    # Fine-tune a trained policy instead of training from scratch: the initial global trunk and every
    # client's stems, head and normaliser come from this checkpoint (its model must be the clients').
    initial_checkpoint: str = ""

    def __post_init__(self) -> None:
        self.mode = parse_enum(Mode, self.mode, "mode")
        self.upload_dtype = parse_enum(WireDtype, self.upload_dtype, "upload_dtype")
        require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}", "an integer >= 1")
        fixed = {"rounds", "quorum", "aggregation", "state_dir"}
        known = {f.name for f in dataclasses.fields(FederationServerConfig)} - fixed
        unknown = sorted(set(self.server_options) - known)
        require(not unknown, "server_options", f"unknown option(s) {unknown}", ", ".join(sorted(known)))


@dataclasses.dataclass
class SimulationResult:
    records: list[RoundRecord]
    clients: dict[str, FederationClient]  # each with its final policy (global trunk + own stems/head)


def run_simulation(config: SimulationConfig, datasets: Mapping[str, tuple[PolicyConfig, Dataset]],
                   state_dir: str | Path, *, on_round: Callable[[RoundRecord, dict[str, FederationClient]], None]
                   | None = None, on_start: Callable[[dict[str, FederationClient]], None] | None = None,
                   show_progress: bool = True) -> SimulationResult:
    """Run ``config.rounds`` rounds; ``datasets`` maps a client name to its model config and data.
    ``on_start`` sees the clients before the first round (joined, holding the initial global trunk),
    ``on_round`` after every round."""
    if not datasets:
        raise ConfigError("datasets", "no client dataset", "at least one")
    state_dir = Path(state_dir)
    if config.mode is Mode.CENTRALIZED:
        configs = {name: c.to_dict() for name, (c, _) in datasets.items()}
        first = next(iter(configs.values()))
        differing = [name for name, c in configs.items() if c != first]
        if differing:
            raise ConfigError("mode", f"centralized training needs one observation/action space, but "
                              f"{differing[0]}'s model config differs", "clients with identical model configs")
        model_config = next(iter(datasets.values()))[0]
        datasets = {CENTRALIZED_CLIENT: (model_config, ConcatDataset([d for _, d in datasets.values()]))}
    credentials = {name: secrets.token_hex(16) for name in datasets}
    aggregation = Aggregation.EDA if config.mode is Mode.EDA else Aggregation.FEDAVG
    initial = load_checkpoint(config.initial_checkpoint) if config.initial_checkpoint else None
    server_policy = initial or seeded_policy(next(iter(datasets.values()))[0], config.seed)
    server = FederationServer(
        FederationServerConfig(rounds=config.rounds, quorum=len(datasets), aggregation=aggregation,
                               state_dir=str(state_dir / "server"), **config.server_options),
        trunk_spec(server_policy), server_policy.trunk.state_dict(), credentials, Trunk.layer_of)
    clients = {}
    for index, (name, (model_config, dataset)) in enumerate(datasets.items()):
        if initial is not None:
            if model_config.config_hash() != initial.config.config_hash():
                raise ConfigError("initial_checkpoint", f"its model differs from client {name}'s", "a checkpoint of "
                                  "the clients' model config")
            policy = load_checkpoint(config.initial_checkpoint)  # its normaliser: the outputs keep their meaning
        else:
            policy = seeded_policy(model_config, config.seed + 1 + index)
            fit_normalizer(policy, dataset)
        train = TrainConfig(epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr,
                            seed=config.seed + index, device=config.device)
        client_config = FederationClientConfig(client_id=name, upload_dtype=config.upload_dtype,
                                               state_dir=str(state_dir / name), heartbeat_interval_s=3600.0)
        clients[name] = FederationClient(client_config, credentials[name], policy, dataset, train, server)
    if on_start is not None:
        for client in clients.values():
            client.join()
            client.load_global_trunk()
        on_start(clients)
    # A state_dir of an interrupted run resumes: the server from its state, every client from its
    # checkpoint; the bar and the result count the rounds of both runs.
    with tqdm(total=config.rounds, initial=len(server.history), desc=f"{config.mode.value} rounds",
              disable=not show_progress) as bar:
        def closed(record: RoundRecord) -> None:
            bar.update(1)
            if on_round is not None:
                on_round(record, clients)
        run_until_finished(server, list(clients.values()), on_round=closed)
    for client in clients.values():
        client.load_global_trunk()
    return SimulationResult(records=list(server.history), clients=clients)
