"""Policy configuration: sizes and choices of the HPT-style model, loaded from YAML files under
``config/model/`` (``tiny.yaml`` for tests, ``hpt_small.yaml`` for real runs)."""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from fedvla.config import ConfigError, from_mapping, parse_enum, require, require_positive
from fedvla.model.moe import EmptyTokenRule, FeedForwardKind


class ImageEncoderKind(str, enum.Enum):
    CONV = "conv"  # 4 strided convolutions: small and fast, trained from scratch
    RESNET18 = "resnet18"  # torchvision ResNet-18 without its classifier (HPT's image stem)


@dataclasses.dataclass(kw_only=True)
class PolicyConfig:
    # Observation and action spaces (filled in from the data where a file says ???).
    camera_names: tuple[str, ...] = ("corner", "top", "shoulder")
    image_size: int = 128
    proprio_dim: int = 4
    language_dim: int = 384  # sentence-embedding size (MiniLM); 0: no language input
    action_dim: int = 4
    # Stems: per camera a vision encoder, then cross-attention onto a fixed number of latents.
    embed_dim: int = 128
    image_encoder: ImageEncoderKind = ImageEncoderKind.CONV
    image_encoder_weights: str = ""  # optional path to pretrained encoder weights (.pt/.safetensors)
    image_latent_tokens: int = 16
    proprio_tokens: int = 4
    # IOSP (paper §3.1): per camera, k patch tokens of each object group (target / surrounding /
    # background, chosen by fedvla.iosp), each group refined by its own small DGMoE, before the
    # pooled latent tokens. False is the paper's "w/o IOSP" ablation (whole-image tokens only).
    iosp: bool = False
    iosp_tokens_per_group: int = 8
    iosp_experts: int = 4
    # Trunk: transformer blocks whose feed-forward layers are MoE layers.
    num_blocks: int = 16
    num_heads: int = 8
    feed_forward: FeedForwardKind = FeedForwardKind.DGMOE
    num_experts: int = 8
    expert_hidden_dim: int = 256
    lam: float = 0.5
    threshold_init_scale: float = 1.0  # DGMoE W_e starts at c/(λK): accept above c × uniform (moe.py)
    empty_token_rule: EmptyTokenRule = EmptyTokenRule.ARGMAX
    top_k: int = 2
    aux_loss_weight: float = 0.01
    dropout: float = 0.0
    # Head: an action chunk of `horizon` steps; the robot executes the first `execute_steps`.
    horizon: int = 8
    execute_steps: int = 4
    head_hidden_dim: int = 256
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        self.image_encoder = parse_enum(ImageEncoderKind, self.image_encoder, "image_encoder")
        self.feed_forward = parse_enum(FeedForwardKind, self.feed_forward, "feed_forward")
        self.empty_token_rule = parse_enum(EmptyTokenRule, self.empty_token_rule, "empty_token_rule")
        self.camera_names = tuple(self.camera_names)
        for name in ("image_size", "proprio_dim", "action_dim", "embed_dim", "image_latent_tokens", "num_blocks",
                     "num_heads", "num_experts", "expert_hidden_dim", "horizon", "execute_steps", "head_hidden_dim",
                     "iosp_tokens_per_group", "iosp_experts"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
                    f"must be a positive integer, got {value!r}", "an integer > 0")
        require(self.language_dim >= 0 and self.proprio_tokens >= 0, "language_dim",
                "language_dim and proprio_tokens must not be negative", "an integer >= 0")
        require(len(self.camera_names) > 0, "camera_names", "is empty", "at least one camera")
        require(self.embed_dim % self.num_heads == 0, "num_heads",
                f"{self.num_heads} does not divide embed_dim {self.embed_dim}", "a divisor of embed_dim")
        require(self.execute_steps <= self.horizon, "execute_steps",
                f"{self.execute_steps} is more than the horizon {self.horizon}", f"1..{self.horizon}")
        require(1 <= self.top_k <= self.num_experts, "top_k", f"{self.top_k} is out of range", f"1..{self.num_experts}")
        require_positive(self.lam, "lam")
        require_positive(self.threshold_init_scale, "threshold_init_scale")
        require_positive(self.huber_delta, "huber_delta")
        require(self.aux_loss_weight >= 0, "aux_loss_weight", "must not be negative", "a number >= 0")

    @property
    def num_tokens(self) -> int:
        return (len(self.camera_names) * (self.image_latent_tokens + self.num_iosp_tokens_per_view)
                + self.proprio_tokens + (1 if self.language_dim else 0))

    @property
    def num_iosp_tokens_per_view(self) -> int:
        return 3 * self.iosp_tokens_per_group if self.iosp else 0

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Rows and columns of the image encoder's patch grid (what IOSP selects tokens from)."""
        stride = 32 if self.image_encoder is ImageEncoderKind.RESNET18 else 16
        side = -(-self.image_size // stride)
        return side, side

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.value if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple) else value
        return out

    # The settings that define the trunk: clients may differ in everything else (cameras, proprio
    # and action spaces, stems, head) and still federate.
    TRUNK_FIELDS = ("embed_dim", "num_blocks", "num_heads", "feed_forward", "num_experts", "expert_hidden_dim",
                    "lam", "empty_token_rule", "top_k")

    def trunk_settings(self) -> dict[str, Any]:
        values = self.to_dict()
        return {name: values[name] for name in self.TRUNK_FIELDS}

    def config_hash(self) -> str:
        """Identifies the architecture: two policies with the same hash can exchange trunks."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> PolicyConfig:
        return from_mapping(cls, values, where=where)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PolicyConfig:
        """Load a model config file; ``overrides`` fill data-derived values (``???`` in the file)."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("model_config", f"{path} does not exist", "a file under config/model/") from None
        values.update(overrides)
        missing = [k for k, v in values.items() if v == "???"]
        if missing:
            raise ConfigError(missing[0], f"must be set (it is ??? in {path.name})", "a value from the dataset")
        return cls.from_dict(values, where=path.stem)
