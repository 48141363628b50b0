"""The VLA policy: stems → trunk → head, with the action normaliser.

The split is explicit and is what federation relies on: ``policy.stems`` and ``policy.head``
(and the normaliser) stay on the robot; only ``policy.trunk`` travels
(:meth:`Policy.trunk_state_dict` / :meth:`Policy.load_trunk_state_dict`).

Observations are dicts of tensors: ``images`` (B, V, 3, H, W) uint8 or float in [0, 1], one view
per ``config.camera_names``; ``proprio`` (B, proprio_dim) in robot units; ``language`` (B,
language_dim) the instruction's sentence embedding; with ``iosp`` ``iosp_indices`` (B, V, 3, k)
long and ``iosp_valid`` (B, V, 3, k) bool from :mod:`fedvla.iosp`; optionally ``token_groups``
(B, T) with the IOSP group of each token (derived from ``iosp_valid`` when IOSP is on).
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedvla.model.config import PolicyConfig
from fedvla.model.heads import ChunkHead
from fedvla.model.normalize import Normalizer
from fedvla.model.stems import Stems
from fedvla.model.trunk import Trunk

Observation = dict[str, Tensor]


class ObservationError(ValueError):
    """An observation does not match the policy's configuration."""


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.stems = Stems(config)
        self.trunk = Trunk(config)
        self.head = ChunkHead(config)
        self.normalizer = Normalizer(config.action_dim, config.proprio_dim)
        self._queue: deque[Tensor] = deque()

    # -- inference ------------------------------------------------------------------------------
    def check_observation(self, obs: Observation) -> None:
        cfg = self.config
        images = obs.get("images")
        if images is None or images.dim() != 5 or images.shape[1] != len(cfg.camera_names) or images.shape[2] != 3:
            shape = None if images is None else tuple(images.shape)
            raise ObservationError(f"images: expected (B, {len(cfg.camera_names)}, 3, H, W) for cameras "
                                   f"{list(cfg.camera_names)}, got {shape}")
        proprio = obs.get("proprio")
        if proprio is None or proprio.shape[-1] != cfg.proprio_dim:
            raise ObservationError(f"proprio: expected (B, {cfg.proprio_dim}), got "
                                   f"{None if proprio is None else tuple(proprio.shape)}")
        if cfg.language_dim and (obs.get("language") is None or obs["language"].shape[-1] != cfg.language_dim):
            raise ObservationError(f"language: expected (B, {cfg.language_dim}) sentence embeddings")
        if cfg.iosp:
            expected = (images.shape[0], len(cfg.camera_names), 3, cfg.iosp_tokens_per_group)
            for key, dtype in (("iosp_indices", torch.long), ("iosp_valid", torch.bool)):
                value = obs.get(key)
                if value is None or tuple(value.shape) != expected or value.dtype != dtype:
                    got = None if value is None else (tuple(value.shape), value.dtype)
                    raise ObservationError(f"{key}: this policy uses IOSP (iosp: true) and needs {dtype} {expected} "
                                           f"from fedvla.iosp, got {got}")

    def forward_features(self, obs: Observation) -> tuple[Tensor, Tensor]:
        self.check_observation(obs)
        proprio = self.normalizer.normalize_proprio(obs["proprio"].float())
        tokens = self.stems(obs["images"], proprio, obs.get("language"), obs.get("iosp_indices"), obs.get("iosp_valid"))
        groups = obs.get("token_groups")
        if groups is None and self.config.iosp:
            groups = self.stems.token_groups(obs["iosp_valid"])
        return self.trunk(tokens, groups=groups)

    def forward(self, obs: Observation) -> Tensor:
        """Normalised action chunk (B, horizon, action_dim)."""
        features, _ = self.forward_features(obs)
        return self.head(features)

    @torch.no_grad()
    def predict_action_chunk(self, obs: Observation) -> Tensor:
        """Action chunk in robot units (B, horizon, action_dim)."""
        return self.normalizer.denormalize_action(self(obs))

    @torch.no_grad()
    def select_action(self, obs: Observation) -> Tensor:
        """One action (B, action_dim): replan every ``execute_steps`` steps (open-loop in between)."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)
            self._queue.extend(chunk[:, : self.config.execute_steps].unbind(1))
        return self._queue.popleft()

    def reset(self) -> None:
        """Forget the queued actions (call at the start of an episode)."""
        self._queue.clear()

    # -- training -------------------------------------------------------------------------------
    def compute_loss(self, batch: Observation) -> tuple[Tensor, dict[str, float]]:
        """Huber loss on normalised action chunks (+ the MoE load-balancing term where used)."""
        features, aux = self.forward_features(batch)
        predicted = self.head(features)
        target = self.normalizer.normalize_action(batch["actions"].float())
        action_loss = F.huber_loss(predicted, target, delta=self.config.huber_delta)
        loss = action_loss + self.config.aux_loss_weight * aux
        return loss, {"loss": loss.item(), "action_loss": action_loss.item(), "aux_loss": float(aux.detach())}

    # -- federation -----------------------------------------------------------------------------
    def trunk_state_dict(self) -> dict[str, Tensor]:
        """The only parameters a client sends: the trunk's, keyed ``trunk.<name>``."""
        return {f"trunk.{k}": v.detach().clone() for k, v in self.trunk.state_dict().items()}

    def load_trunk_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = set(self.trunk_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"trunk state does not match this policy (missing {missing[:3]}, unexpected {extra[:3]})")
        self.trunk.load_state_dict({k.removeprefix("trunk."): v for k, v in state.items()})

    def expert_counts(self) -> Tensor:
        return self.trunk.expert_counts()

    def reset_expert_counts(self) -> None:
        self.trunk.reset_expert_counts()
