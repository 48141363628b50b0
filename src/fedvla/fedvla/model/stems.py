"""Stems: turn each modality into a fixed number of D-dimensional tokens (HPT-style).

* images: a vision encoder per camera view (shared weights, plus a learned per-view embedding)
  gives patch features, and a cross-attention from ``image_latent_tokens`` learned queries pools
  them into a fixed number of tokens, whatever the image size;
* proprioception: an MLP to ``proprio_tokens`` tokens;
* language: a linear map of the instruction's sentence embedding to one token.

With ``iosp`` (FedVLA §3.1), the image stem also gathers, per camera and per object group, the
k patch features that :mod:`fedvla.iosp` selected (``iosp_indices``/``iosp_valid``), refines each
group with its own small DGMoE (residual) and adds a group embedding; slots with no selection hold
a learned "empty" token. Token order: [target, surrounding, background] × views, then the pooled
latents: ``X_in = concat(X_TO, X_SO, X_BO, latents, s, l)``.

The learned token-position embedding is part of the stem, not the trunk: the token layout is a
property of the embodiment (number of cameras, proprio size), so it stays personal in federation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fedvla.config import ConfigError
from fedvla.iosp.types import NUM_GROUPS  # target, surrounding, background
from fedvla.model.config import ImageEncoderKind, PolicyConfig
from fedvla.model.moe import DGMoE



class ConvEncoder(nn.Module):
    """Four stride-2 convolutions: (B, 3, H, W) → (B, H/16 · W/16, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        channels = [3, 32, 64, 128, dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class ResNet18Encoder(nn.Module):
    """torchvision ResNet-18 up to its last stage: (B, 3, H, W) → (B, H/32 · W/32, D)."""

    def __init__(self, dim: int, weights_path: str = "") -> None:
        super().__init__()
        import torchvision

        resnet = torchvision.models.resnet18(weights=None)
        if weights_path:
            load_backbone_weights(resnet, _load_state_dict(weights_path), weights_path)
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.project = nn.Linear(512, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.features(images).flatten(2).transpose(1, 2))


def _load_state_dict(path: str) -> dict[str, Tensor]:
    import pickle

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError("image_encoder_weights", f"cannot read {path}: {err}",
                          "a ResNet-18 state dict (.pth or .safetensors)") from None


def load_backbone_weights(resnet: nn.Module, weights: dict[str, Tensor], path: str) -> None:
    """Load a torchvision ResNet-18 state dict, refusing any other file: every backbone tensor
    must be there with its shape. Only the ImageNet classifier (``fc.*``, which the encoder drops)
    may be missing."""
    expected = resnet.state_dict()
    missing = sorted(k for k in expected if k not in weights and not k.startswith("fc."))
    unexpected = sorted(k for k in weights if k not in expected)
    wrong_shape = sorted(k for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k].shape))
    problems = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if keys]
    if problems:
        raise ConfigError("image_encoder_weights", f"{path} is not a ResNet-18 state dict: {'; '.join(problems)}",
                          "torchvision's resnet18 weights (e.g. ResNet18_Weights.IMAGENET1K_V1), .pth or .safetensors")
    resnet.load_state_dict(weights, strict=False)  # checked above; fc.* may be absent


# ImageNet statistics: what torchvision's encoders expect (and a sane scale for the small CNN).
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ImageStem(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        if config.image_encoder is ImageEncoderKind.RESNET18:
            self.encoder: nn.Module = ResNet18Encoder(dim, config.image_encoder_weights)
        else:
            self.encoder = ConvEncoder(dim)
        self.view_embedding = nn.Parameter(torch.zeros(len(config.camera_names), 1, dim))
        # Where a patch is in the image: without it, pooled latents and IOSP's gathered patches
        # would know what they see but not where (the convolutions are translation-equivariant).
        rows, cols = config.patch_grid
        self.patch_position = nn.Parameter(torch.randn(1, 1, rows * cols, dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(config.image_latent_tokens, dim) * 0.02)
        self.cross_attention = nn.MultiheadAttention(dim, config.num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("mean", _MEAN.clone(), persistent=False)
        self.register_buffer("std", _STD.clone(), persistent=False)
        self.iosp = config.iosp
        if config.iosp:
            self.group_moe = nn.ModuleList(DGMoE(dim, config.iosp_experts, 2 * dim, lam=config.lam)
                                           for _ in range(NUM_GROUPS))
            self.group_embedding = nn.Parameter(torch.zeros(NUM_GROUPS, dim))
            self.empty_token = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, images: Tensor, iosp_indices: Tensor | None = None,
                iosp_valid: Tensor | None = None) -> Tensor:
        """``images`` (B, V, 3, H, W), uint8 or float in [0, 1] → (B, V · (3k + latents), D); with
        IOSP, ``iosp_indices`` (B, V, 3, k) patch indices and ``iosp_valid`` (B, V, 3, k) bool."""
        batch, views = images.shape[:2]
        x = images.flatten(0, 1)
        x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        features = self.encoder((x - self.mean) / self.std)  # (B·V, P, D)
        if features.shape[1] != self.patch_position.shape[2]:
            raise ValueError(f"images of {tuple(images.shape[-2:])} give {features.shape[1]} patches; this policy was "
                             f"built for {self.patch_position.shape[2]} (image_size in its config)")
        features = (features.view(batch, views, *features.shape[1:]) + self.view_embedding.unsqueeze(0)
                    + self.patch_position)
        features = self.norm(features.flatten(0, 1))
        queries = self.latents.expand(features.shape[0], -1, -1)
        pooled, _ = self.cross_attention(queries, features, features, need_weights=False)
        pooled = pooled.reshape(batch, -1, pooled.shape[-1])
        if not self.iosp:
            return pooled
        return torch.cat([self._group_tokens(features.view(batch, views, -1, features.shape[-1]),
                                             iosp_indices, iosp_valid), pooled], dim=1)

    def _group_tokens(self, features: Tensor, indices: Tensor, valid: Tensor) -> Tensor:
        """(B, V, P, D) patch features → (B, 3·V·k, D): per group, its selected patches refined."""
        batch, views, patches, dim = features.shape
        k = indices.shape[-1]
        flat = indices.clamp(0, patches - 1).reshape(batch, views, NUM_GROUPS * k)
        gathered = torch.gather(features, 2, flat.unsqueeze(-1).expand(-1, -1, -1, dim))
        gathered = gathered.view(batch, views, NUM_GROUPS, k, dim)
        groups = []
        for g, moe in enumerate(self.group_moe):
            tokens = gathered[:, :, g].reshape(batch, views * k, dim)
            refined = tokens + moe(tokens).y + self.group_embedding[g]
            mask = valid[:, :, g].reshape(batch, views * k, 1)
            groups.append(torch.where(mask, refined, self.empty_token))
        return torch.cat(groups, dim=1)


class Stems(nn.Module):
    """All input stems of one embodiment: observation dict → (B, num_tokens, D)."""

    def token_groups(self, iosp_valid: Tensor) -> Tensor:
        """(B, num_tokens) IOSP group of each token (-1: not a selected object token), for the
        trunk's per-group expert statistics."""
        batch, views, groups, k = iosp_valid.shape
        ids = torch.arange(groups, device=iosp_valid.device).view(1, groups, 1, 1).expand(batch, groups, views, k)
        object_tokens = torch.where(iosp_valid.transpose(1, 2), ids, torch.full_like(ids, -1)).reshape(batch, -1)
        rest = object_tokens.new_full((batch, self.config.num_tokens - object_tokens.shape[1]), -1)
        return torch.cat([object_tokens, rest], dim=1)

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.image = ImageStem(config)
        self.proprio = (nn.Sequential(nn.Linear(config.proprio_dim, dim), nn.GELU(),
                                      nn.Linear(dim, config.proprio_tokens * dim)) if config.proprio_tokens else None)
        self.language = nn.Linear(config.language_dim, dim) if config.language_dim else None
        self.position = nn.Parameter(torch.randn(1, config.num_tokens, dim) * 0.02)

    def forward(self, images: Tensor, proprio: Tensor, language: Tensor | None = None,
                iosp_indices: Tensor | None = None, iosp_valid: Tensor | None = None) -> Tensor:
        tokens = [self.image(images, iosp_indices, iosp_valid)]
        if self.proprio is not None:
            tokens.append(self.proprio(proprio).view(proprio.shape[0], self.config.proprio_tokens, -1))
        if self.language is not None:
            if language is None:
                raise ValueError("this policy takes a language embedding (language_dim > 0) but none was given")
            tokens.append(self.language(language).unsqueeze(1))
        return torch.cat(tokens, dim=1) + self.position
