"""Stems: turn each modality into a fixed number of D-dimensional tokens (HPT-style).

* images: a vision encoder per camera view (shared weights, plus a learned per-view embedding)
  gives patch features, and a cross-attention from ``image_latent_tokens`` learned queries pools
  them into a fixed number of tokens, whatever the image size;
* proprioception: an MLP to ``proprio_tokens`` tokens;
* language: a linear map of the instruction's sentence embedding to one token.

The learned token-position embedding is part of the stem, not the trunk: the token layout is a
property of the embodiment (number of cameras, proprio size), so it stays personal in federation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fedvla.model.config import ImageEncoderKind, PolicyConfig


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
            resnet.load_state_dict(_load_state_dict(weights_path), strict=False)
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        self.project = nn.Linear(512, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.features(images).flatten(2).transpose(1, 2))


def _load_state_dict(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


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
        self.latents = nn.Parameter(torch.randn(config.image_latent_tokens, dim) * 0.02)
        self.cross_attention = nn.MultiheadAttention(dim, config.num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("mean", _MEAN.clone(), persistent=False)
        self.register_buffer("std", _STD.clone(), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """``images`` (B, V, 3, H, W), uint8 or float in [0, 1] → (B, V · latents, D)."""
        batch, views = images.shape[:2]
        x = images.flatten(0, 1)
        x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        features = self.encoder((x - self.mean) / self.std)  # (B·V, P, D)
        features = features.view(batch, views, *features.shape[1:]) + self.view_embedding.unsqueeze(0)
        features = self.norm(features.flatten(0, 1))
        queries = self.latents.expand(features.shape[0], -1, -1)
        pooled, _ = self.cross_attention(queries, features, features, need_weights=False)
        return pooled.reshape(batch, -1, pooled.shape[-1])


class Stems(nn.Module):
    """All input stems of one embodiment: observation dict → (B, num_tokens, D)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.image = ImageStem(config)
        self.proprio = (nn.Sequential(nn.Linear(config.proprio_dim, dim), nn.GELU(),
                                      nn.Linear(dim, config.proprio_tokens * dim)) if config.proprio_tokens else None)
        self.language = nn.Linear(config.language_dim, dim) if config.language_dim else None
        self.position = nn.Parameter(torch.randn(1, config.num_tokens, dim) * 0.02)

    def forward(self, images: Tensor, proprio: Tensor, language: Tensor | None = None) -> Tensor:
        tokens = [self.image(images)]
        if self.proprio is not None:
            tokens.append(self.proprio(proprio).view(proprio.shape[0], self.config.proprio_tokens, -1))
        if self.language is not None:
            if language is None:
                raise ValueError("this policy takes a language embedding (language_dim > 0) but none was given")
            tokens.append(self.language(language).unsqueeze(1))
        return torch.cat(tokens, dim=1) + self.position
