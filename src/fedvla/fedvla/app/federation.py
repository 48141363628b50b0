"""Building a federation server or client from flat settings (the ``fed_server`` /
``fed_client`` node parameters, the ``fedvla federate`` command and simulations).

The trunk is defined by the model config file alone (:attr:`PolicyConfig.TRUNK_FIELDS`), so the
server needs no dataset: data-derived sizes (``???`` in the file: proprio and action dimensions)
do not change the trunk and are set to 1 there. Clients fill them from their
own data; each robot may have its own cameras, proprioception and action space.

Datasets: ``dataset`` is a directory in the episode format (:mod:`fedvla.data.episodes`), or
``synthetic`` for the square-reaching task (:mod:`fedvla.data.synthetic`; demos and tests), which
each client draws with its own seed (non-iid across clients by construction of the seeds).
"""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import yaml
from torch.utils.data import Dataset

from fedvla.config import ConfigError, require
from fedvla.data.episodes import ChunkDataset, check_policy_fits, fit_normalizer, load_meta
from fedvla.data.synthetic import SquareReachDataset
from fedvla.graph import find_config_dir
from fedvla.federation.client import FederationClient, FederationClientConfig, ServerApi, trunk_spec
from fedvla.federation.protocol import load_credentials
from fedvla.federation.server import FederationServer, FederationServerConfig
from fedvla.model.checkpoint import load_checkpoint, seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig
from fedvla.model.trunk import Trunk

SYNTHETIC = "synthetic"


def resolve_config_file(path: str, field: str) -> Path:
    """``path`` as given when it exists (absolute, or relative to the current directory), else
    relative to fedvla_bringup's config directory (so parameter files can say model/tiny.yaml)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_absolute():
        try:
            candidate = find_config_dir() / given
        except ConfigError:
            candidate = None
        if candidate is not None and candidate.is_file():
            return candidate
    raise ConfigError(field, f"{path} does not exist (looked in the current directory and the config directory)",
                      "a path to an existing file")


def _model_values(path: str) -> dict:
    return yaml.safe_load(resolve_config_file(path, "model_config").read_text()) or {}


def trunk_policy(model_config: str, seed: int, **data_sizes: int) -> Policy:
    """A policy whose trunk is the federation's initial trunk. Sizes the file leaves to the data
    (``???``) come from ``data_sizes``, else 1: they shape only the stems and head, not the trunk."""
    values = {k: (data_sizes.get(k, 1) if v == "???" else v) for k, v in _model_values(model_config).items()}
    return seeded_policy(PolicyConfig.from_dict(values, where=Path(model_config).stem), seed)


@dataclasses.dataclass(kw_only=True)
class FederationServerSettings(FederationServerConfig):
    model_config: str = ""  # config/model/*.yaml: defines the trunk
    init_seed: int = 0  # initial global trunk, when no initial_checkpoint
    initial_checkpoint: str = ""  # start from this checkpoint's trunk instead (e.g. a pretrained policy)
    credentials_file: str = ""  # YAML: clients: {client_id: secret}
    tick_period_s: float = 0.5  # how often round conditions and timeouts are checked

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.model_config), "model_config", "is empty", "a model config file, e.g. config/model/tiny.yaml")
        require(bool(self.credentials_file), "credentials_file", "is empty", "a YAML file with clients: {id: secret}")


def build_server(settings: FederationServerSettings) -> FederationServer:
    policy = trunk_policy(settings.model_config, settings.init_seed)
    if settings.initial_checkpoint:
        pretrained = load_checkpoint(settings.initial_checkpoint)
        if pretrained.config.trunk_settings() != policy.config.trunk_settings():
            raise ConfigError("initial_checkpoint", "its trunk differs from model_config's",
                              "a checkpoint trained with the same trunk settings")
        policy.trunk.load_state_dict(pretrained.trunk.state_dict())
    config = FederationServerConfig(**{f.name: getattr(settings, f.name)
                                       for f in dataclasses.fields(FederationServerConfig)})
    return FederationServer(config, trunk_spec(policy), policy.trunk.state_dict(),
                            load_credentials(resolve_config_file(settings.credentials_file, "credentials_file")),
                            Trunk.layer_of)


@dataclasses.dataclass(kw_only=True)
class LocalTrainingSettings:
    """What a robot trains on between rounds and how: the same for the ROS 2 ``fed_client`` and
    the Flower ClientApp (:mod:`fedvla.federation.flower_app`)."""

    model_config: str = ""  # the server's model config file: defines the trunk
    dataset: str = SYNTHETIC  # an episode directory, or "synthetic"
    synthetic_samples: int = 64
    seed: int = 0  # model init, data order (and the synthetic data)
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"

    def __post_init__(self) -> None:
        require(bool(self.model_config), "model_config", "is empty", "the server's model config file")
        require(self.dataset == SYNTHETIC or Path(self.dataset).expanduser().is_dir(), "dataset",
                f"{self.dataset!r} is not a directory", f"an episode dataset directory, or {SYNTHETIC!r}")
        require(self.synthetic_samples >= 1, "synthetic_samples", "must be at least 1")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           device=self.device)


@dataclasses.dataclass(kw_only=True)
class FederationClientSettings(FederationClientConfig, LocalTrainingSettings):
    credentials_file: str = ""  # only this client's entry is read
    poll_period_s: float = 1.0

    def __post_init__(self) -> None:
        FederationClientConfig.__post_init__(self)
        LocalTrainingSettings.__post_init__(self)
        require(bool(self.credentials_file), "credentials_file", "is empty", "a YAML file with clients: {id: secret}")


def client_dataset(settings: LocalTrainingSettings, client_id: str) -> tuple[PolicyConfig, Dataset]:
    values = _model_values(settings.model_config)
    where = Path(settings.model_config).stem
    if settings.dataset == SYNTHETIC:
        config = PolicyConfig.from_dict({**values, "proprio_dim": 4, "action_dim": 4}, where=where)
        # Each client draws its own data: the seed mixes in the client id (non-iid by construction).
        data_seed = zlib.crc32(f"{settings.seed}:{client_id}".encode())
        return config, SquareReachDataset(config, settings.synthetic_samples, seed=data_seed)
    meta = load_meta(settings.dataset)
    config = PolicyConfig.from_dict({**values, "proprio_dim": meta.proprio_dim, "action_dim": meta.action_dim,
                                     "camera_names": meta.camera_names, "image_size": meta.image_size}, where=where)
    check_policy_fits(meta, config)
    return config, ChunkDataset(settings.dataset, horizon=config.horizon, with_iosp=config.iosp)


def local_policy(settings: LocalTrainingSettings, client_id: str) -> tuple[Policy, Dataset]:
    """A client's policy before its first round (seeded; normaliser fitted on its own data) and
    its dataset."""
    config, dataset = client_dataset(settings, client_id)
    policy = seeded_policy(config, settings.seed)
    fit_normalizer(policy, dataset)
    return policy, dataset


def build_client(settings: FederationClientSettings, server: ServerApi, *, show_progress: bool = False) -> FederationClient:
    secret = load_credentials(resolve_config_file(settings.credentials_file, "credentials_file")).get(settings.client_id)
    if secret is None:
        raise ConfigError("client_id", f"{settings.client_id!r} has no secret in {settings.credentials_file}",
                          "a client id listed under clients:")
    policy, dataset = local_policy(settings, settings.client_id)
    train = settings.train_config()
    client_config = FederationClientConfig(**{f.name: getattr(settings, f.name)
                                              for f in dataclasses.fields(FederationClientConfig)})
    return FederationClient(client_config, secret, policy, dataset, train, server, show_progress=show_progress)
