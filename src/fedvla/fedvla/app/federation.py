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
import enum
import zlib
from pathlib import Path

import yaml
from torch.utils.data import Dataset

from fedvla.config import ConfigError, parse_enum, require
from fedvla.data.episodes import ChunkDataset, check_policy_fits, fit_normalizer, load_meta
from fedvla.data.synthetic import SquareReachDataset
from fedvla.graph import find_config_dir
from fedvla.federation.client import FederationClient, FederationClientConfig, trunk_spec
from fedvla.federation.round_client import ServerApi
from fedvla.federation.protocol import load_credentials
from fedvla.federation.server import FederationServer, FederationServerConfig
from fedvla.model.checkpoint import load_checkpoint, seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig
from fedvla.model.trunk import Trunk
from fedvla.federation.round_server import RoundServer
from fedvla.skills.encryption import EncryptionError, read_robot_key, read_server_key
from fedvla.skills.federation import SkillEncryption, SkillFederationClient, SkillFederationServer, SkillServerConfig
from fedvla.skills.library import base_signature
from fedvla.skills.modules import SkillConfig

SYNTHETIC = "synthetic"


class FederationMode(str, enum.Enum):
    """What a federation federates (the ``federation_mode`` parameter of both nodes)."""

    TRUNK = "trunk"  # FedVLA: the trunk and its expert counts, EDA (fedvla.federation.server)
    SKILLS = "skills"  # residual skills on a frozen base policy, and their router (fedvla.skills.federation)


@dataclasses.dataclass(kw_only=True)
class FederationModeSettings:
    federation_mode: FederationMode = FederationMode.TRUNK
    base_checkpoint: str = ""  # skills: the frozen base policy (the skill library's signature comes from it)
    skill_encryption: SkillEncryption = SkillEncryption.NONE  # skills: plaintext deltas, or CKKS ciphertexts
    skill_keys: str = ""  # skill_encryption ckks: the fleet's key directory (fedvla federation skill-keys)

    def __post_init__(self) -> None:
        self.federation_mode = parse_enum(FederationMode, self.federation_mode, "federation_mode")
        self.skill_encryption = parse_enum(SkillEncryption, self.skill_encryption, "skill_encryption")
        if self.skills:
            require(bool(self.base_checkpoint) and Path(self.base_checkpoint).expanduser().is_dir(), "base_checkpoint",
                    f"{self.base_checkpoint!r} is not a checkpoint directory", "the frozen base policy's checkpoint "
                    "(federation_mode skills)")
            require(self.skill_encryption is SkillEncryption.NONE or Path(self.skill_keys).expanduser().is_dir(),
                    "skill_keys", f"{self.skill_keys!r} is not a directory", "the key directory `fedvla federation "
                    "skill-keys DIR` wrote (skill_encryption ckks)")

    def skill_key(self, read):
        """``read(skill_keys)`` when the skills travel encrypted, else None; a bad key is a config error."""
        if self.skill_encryption is SkillEncryption.NONE:
            return None
        try:
            return read(Path(self.skill_keys).expanduser())
        except EncryptionError as err:
            raise ConfigError("skill_keys", str(err), "the fleet's key directory from `fedvla federation skill-keys`") from None

    @property
    def skills(self) -> bool:
        return self.federation_mode is FederationMode.SKILLS


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
class SkillShapeSettings:
    """The skills a new library starts with (federation_mode skills; fedvla.skills.modules.SkillConfig)."""

    num_skills: int = 8
    skill_top_k: int = 2  # skills each instruction routes to
    skill_hidden_dim: int = 256
    router_hidden_dim: int = 256
    skill_balance_weight: float = 0.01  # of the router's load-balancing loss

    def skill_config(self, base: PolicyConfig) -> SkillConfig:
        return SkillConfig(observation_dim=base.embed_dim, action_dim=base.action_dim, hidden_dim=self.skill_hidden_dim,
                           num_skills=self.num_skills, top_k=self.skill_top_k, instruction_dim=base.language_dim,
                           router_hidden_dim=self.router_hidden_dim, balance_weight=self.skill_balance_weight)


@dataclasses.dataclass(kw_only=True)
class FederationServerSettings(FederationServerConfig, SkillServerConfig, FederationModeSettings, SkillShapeSettings):
    model_config: str = ""  # config/model/*.yaml: defines the trunk (federation_mode trunk)
    init_seed: int = 0  # initial global trunk, when no initial_checkpoint
    initial_checkpoint: str = ""  # start from this checkpoint's trunk instead (e.g. a pretrained policy)
    credentials_file: str = ""  # YAML: clients: {client_id: secret}
    tick_period_s: float = 0.5  # how often round conditions and timeouts are checked

    def __post_init__(self) -> None:
        FederationServerConfig.__post_init__(self)  # (and SkillServerConfig's, RoundServerConfig's)
        FederationModeSettings.__post_init__(self)
        require(self.skills or bool(self.model_config), "model_config", "is empty", "a model config file, e.g. "
                "config/model/tiny.yaml")
        require(bool(self.credentials_file), "credentials_file", "is empty", "a YAML file with clients: {id: secret}")


def _config_of(config_class: type, settings) -> object:
    return config_class(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(config_class)})


def build_server(settings: FederationServerSettings) -> RoundServer:
    credentials = load_credentials(resolve_config_file(settings.credentials_file, "credentials_file"))
    if settings.skills:
        base, signature = base_signature(settings.base_checkpoint)
        return SkillFederationServer(_config_of(SkillServerConfig, settings), settings.skill_config(base.config),
                                     signature, credentials, public_key=settings.skill_key(read_server_key))
    policy = trunk_policy(settings.model_config, settings.init_seed)
    if settings.initial_checkpoint:
        pretrained = load_checkpoint(settings.initial_checkpoint)
        if pretrained.config.trunk_settings() != policy.config.trunk_settings():
            raise ConfigError("initial_checkpoint", "its trunk differs from model_config's",
                              "a checkpoint trained with the same trunk settings")
        policy.trunk.load_state_dict(pretrained.trunk.state_dict())
    return FederationServer(_config_of(FederationServerConfig, settings), trunk_spec(policy), policy.trunk.state_dict(),
                            credentials, Trunk.layer_of)


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
        require(bool(self.model_config) or self.model_from_base, "model_config", "is empty", "the server's model config file")
        require(self.dataset == SYNTHETIC or Path(self.dataset).expanduser().is_dir(), "dataset",
                f"{self.dataset!r} is not a directory", f"an episode dataset directory, or {SYNTHETIC!r}")
        require(self.synthetic_samples >= 1, "synthetic_samples", "must be at least 1")

    @property
    def model_from_base(self) -> bool:
        """The model is a base checkpoint's (the skill federation), not model_config's."""
        return False

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           device=self.device)


@dataclasses.dataclass(kw_only=True)
class FederationClientSettings(FederationClientConfig, LocalTrainingSettings, FederationModeSettings):
    credentials_file: str = ""  # only this client's entry is read
    poll_period_s: float = 1.0

    @property
    def model_from_base(self) -> bool:
        return self.skills

    def __post_init__(self) -> None:
        FederationModeSettings.__post_init__(self)
        FederationClientConfig.__post_init__(self)
        LocalTrainingSettings.__post_init__(self)
        require(bool(self.credentials_file), "credentials_file", "is empty", "a YAML file with clients: {id: secret}")


def _dataset_for(settings: LocalTrainingSettings, client_id: str, config_of) -> tuple[PolicyConfig, Dataset]:
    """The client's data and the policy config that trains on it; ``config_of(sizes)`` makes that
    config from the data's sizes (a model config file's, or a base checkpoint's checked against them)."""
    if settings.dataset == SYNTHETIC:
        config = config_of({"proprio_dim": 4, "action_dim": 4})
        # Each client draws its own data: the seed mixes in the client id (non-iid by construction).
        data_seed = zlib.crc32(f"{settings.seed}:{client_id}".encode())
        return config, SquareReachDataset(config, settings.synthetic_samples, seed=data_seed)
    meta = load_meta(settings.dataset)
    config = config_of({"proprio_dim": meta.proprio_dim, "action_dim": meta.action_dim,
                        "camera_names": meta.camera_names, "image_size": meta.image_size})
    check_policy_fits(meta, config)
    return config, ChunkDataset(settings.dataset, horizon=config.horizon, with_iosp=config.iosp)


def client_dataset(settings: LocalTrainingSettings, client_id: str) -> tuple[PolicyConfig, Dataset]:
    values = _model_values(settings.model_config)
    where = Path(settings.model_config).stem
    return _dataset_for(settings, client_id, lambda sizes: PolicyConfig.from_dict({**values, **sizes}, where=where))


def local_policy(settings: LocalTrainingSettings, client_id: str) -> tuple[Policy, Dataset]:
    """A client's policy before its first round (seeded; normaliser fitted on its own data) and
    its dataset."""
    config, dataset = client_dataset(settings, client_id)
    policy = seeded_policy(config, settings.seed)
    fit_normalizer(policy, dataset)
    return policy, dataset


def build_client(settings: FederationClientSettings, server: ServerApi, *,
                 show_progress: bool = False) -> FederationClient | SkillFederationClient:
    secret = load_credentials(resolve_config_file(settings.credentials_file, "credentials_file")).get(settings.client_id)
    if secret is None:
        raise ConfigError("client_id", f"{settings.client_id!r} has no secret in {settings.credentials_file}",
                          "a client id listed under clients:")
    if settings.skills:
        return build_skill_client(settings, secret, server)
    policy, dataset = local_policy(settings, settings.client_id)
    train = settings.train_config()
    client_config = FederationClientConfig(**{f.name: getattr(settings, f.name)
                                              for f in dataclasses.fields(FederationClientConfig)})
    return FederationClient(client_config, secret, policy, dataset, train, server, show_progress=show_progress)


def build_skill_client(settings: FederationClientSettings, secret: str, server: ServerApi) -> SkillFederationClient:
    """A robot of the skill federation: its frozen base (the checkpoint), its demonstrations (the
    base's observation and action space: refused if they differ), and the tasks they are of."""
    base, signature = base_signature(settings.base_checkpoint)

    def base_config(sizes: dict) -> PolicyConfig:
        differing = {k: (v, getattr(base.config, k)) for k, v in sizes.items() if getattr(base.config, k) != v}
        if differing:
            raise ConfigError("dataset", f"{settings.dataset} does not fit the base policy: " + ", ".join(
                f"{k} {mine!r} (the base's {theirs!r})" for k, (mine, theirs) in differing.items()),
                "demonstrations recorded with the base policy's cameras and action space")
        return base.config

    _, dataset = _dataset_for(settings, settings.client_id, base_config)
    tasks = (sorted({e.instruction for e in load_meta(settings.dataset).episodes}) if settings.dataset != SYNTHETIC
             else [f"synthetic:{settings.client_id}"])
    return SkillFederationClient(settings.client_id, secret, server, base, signature, dataset, settings.train_config(),
                                 tasks, heartbeat_interval_s=settings.heartbeat_interval_s,
                                 upload_attempts=settings.upload_attempts, state_dir=settings.state_dir,
                                 base_checkpoint=settings.base_checkpoint,
                                 robot_key=settings.skill_key(read_robot_key))
