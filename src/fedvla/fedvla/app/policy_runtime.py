"""Running a trained policy on live inputs (used by the policy node, and by closed-loop
evaluation): numpy images/proprio/instruction in, an action chunk and expert activity out."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedvla.app.inference_schedule import InferenceMode, require_refill_threshold
from fedvla.config import parse_enum, require, require_positive
from fedvla.data.observations import policy_images
from fedvla.iosp.types import SelectedTokens
from fedvla.model.checkpoint import CheckpointError, load_checkpoint
from fedvla.model.step_backend import StepBackend
from fedvla.skills.inference import SkillSet, StepRouting


@dataclasses.dataclass(kw_only=True)
class PolicyRuntimeConfig:
    """Field names are the policy node's parameters."""

    checkpoint_path: str = ""
    rate_hz: float = 10.0
    instruction: str = ""  # initial instruction; the /instruction topic replaces it
    proprio_joint_names: tuple[str, ...] = ()  # JointState names in proprio order; empty: the first ones
    max_input_age_s: float = 0.5  # older camera/proprio inputs are stale: no step
    expected_action_dim: int = 0  # 0: whatever the checkpoint predicts
    available_cameras: tuple[str, ...] = ()  # the cameras this robot has (/camera/<name>/...); empty: no check
    language_model_path: str = ""  # sentence-transformers model; empty: the bundled MiniLM
    device: str = "cpu"
    # CPU threads of torch in this process (0: leave torch's default, one per core). On a robot
    # computer the policy shares the cores with the camera, the driver and (in the twin) the
    # renderer, and OpenMP's spinning workers wait for cores others hold: a tiny policy's 12 ms step
    # took 34 ms with 2 threads on 2 busy cores, and 268 ms beside the twin's software renderer
    # (20 ms with 1). The policy node's config sets 1.
    torch_threads: int = 0
    # When to observe next (fedvla.app.inference_schedule): rate (every 1/rate_hz), async (once
    # refill_threshold of the last chunk's executed horizon is left) or sync (once it has all run).
    inference_mode: InferenceMode = InferenceMode.RATE
    refill_threshold: float = 0.5
    # The engine of the policy step (fedvla.model.acceleration; fedvla bench policy measures them):
    # eager, compile, torchscript, onnxruntime or openvino. A backend whose chunk differs from
    # eager's by more than 1e-5 on a check observation is refused at startup.
    step_backend: StepBackend = StepBackend.EAGER
    # Benchmarks only: hold each chunk this long before publishing it, as a slower policy would.
    injected_latency_s: float = 0.0
    # A saved skill set (the skill federation's <state_dir>/final: router and residual skills) run
    # on this checkpoint as their frozen base; refused if they were trained on another base. Empty: none.
    skills_path: str = ""

    def __post_init__(self) -> None:
        require(bool(self.checkpoint_path), "checkpoint_path", "is empty", "a checkpoint directory (fedvla train)")
        require(Path(self.checkpoint_path).expanduser().is_dir(), "checkpoint_path",
                f"{self.checkpoint_path!r} is not a directory", "a checkpoint directory with config.json")
        require_positive(self.rate_hz, "rate_hz")
        require_positive(self.max_input_age_s, "max_input_age_s")
        self.inference_mode = parse_enum(InferenceMode, self.inference_mode, "inference_mode")
        self.step_backend = parse_enum(StepBackend, self.step_backend, "step_backend")
        require_refill_threshold(self.refill_threshold)
        require(self.injected_latency_s >= 0, "injected_latency_s", "must not be negative", "seconds, 0 for none")
        require(self.torch_threads >= 0, "torch_threads", "must not be negative", "1, or 0 for torch's default")
        require(self.expected_action_dim >= 0, "expected_action_dim", "must not be negative", "0 or the robot's action size")
        require(not self.skills_path or self.step_backend is StepBackend.EAGER, "step_backend",
                f"{self.step_backend.value} with skills_path", "eager: the skills need the base's features")
        self.proprio_joint_names = tuple(self.proprio_joint_names)
        self.available_cameras = tuple(self.available_cameras)


@dataclasses.dataclass
class PolicyStep:
    chunk: np.ndarray  # (horizon, action_dim), robot units
    expert_counts: np.ndarray  # (layers, experts) tokens processed in this step
    experts_per_token: float
    latency_s: float
    # IOSP policies (token groups known): (layers, 3, experts) tokens of each group (target,
    # surrounding, background) per expert, and (layers, 3) tokens per group; None otherwise.
    group_expert_counts: np.ndarray | None = None
    group_tokens: np.ndarray | None = None
    routing: StepRouting | None = None  # with skills: the skills the router chose this step


class PolicyRuntime:
    def __init__(self, config: PolicyRuntimeConfig) -> None:
        self.config = config
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.policy = load_checkpoint(Path(config.checkpoint_path).expanduser(),
                                      action_dim=config.expected_action_dim or None).to(config.device)
        self.model_config = self.policy.config
        missing = [c for c in self.model_config.camera_names if c not in config.available_cameras]
        if config.available_cameras and missing:
            raise CheckpointError(f"the checkpoint sees cameras {list(self.model_config.camera_names)}; this robot has "
                                  f"{list(config.available_cameras)} (no {', '.join(missing)}): use a checkpoint "
                                  "trained with this robot's camera names")
        if self.config.proprio_joint_names and len(self.config.proprio_joint_names) != self.model_config.proprio_dim:
            raise CheckpointError(f"proprio_joint_names has {len(self.config.proprio_joint_names)} joints, the "
                                  f"checkpoint expects proprio_dim={self.model_config.proprio_dim}")
        self.acceleration = None
        if config.step_backend is not StepBackend.EAGER:
            from fedvla.model.acceleration import accelerate, example_observation

            example = {k: v.to(config.device) for k, v in example_observation(self.model_config).items()}
            self.acceleration = accelerate(self.policy, config.step_backend, example,
                                           threads=config.torch_threads)
        self.skill_set = SkillSet(config.skills_path, self.policy) if config.skills_path else None
        self.encoder = None
        self._language_cache: tuple[str, torch.Tensor] | None = None
        if self.model_config.language_dim:
            from fedvla.language import shared_instruction_encoder

            self.encoder = shared_instruction_encoder(config.language_model_path, config.device)
            if self.encoder.dim != self.model_config.language_dim:
                raise CheckpointError(f"the language model gives {self.encoder.dim}-d embeddings, the checkpoint "
                                      f"was trained with language_dim={self.model_config.language_dim}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.model_config.camera_names

    def _images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if len(images) != len(self.camera_names):
            raise ValueError(f"got {len(images)} images, the policy takes {len(self.camera_names)} "
                             f"({', '.join(self.camera_names)})")
        return torch.from_numpy(policy_images(images, self.model_config.image_size)).unsqueeze(0).to(self.config.device)

    @property
    def uses_iosp(self) -> bool:
        return self.model_config.iosp

    def _iosp(self, selections: Sequence[SelectedTokens] | None) -> dict[str, torch.Tensor]:
        cfg = self.model_config
        if selections is None or len(selections) != len(cfg.camera_names):
            raise ValueError(f"this policy uses IOSP: it needs one token selection per camera "
                             f"({', '.join(cfg.camera_names)}) from the scene parser")
        k = cfg.iosp_tokens_per_group
        for name, selection in zip(cfg.camera_names, selections):
            if selection.indices.shape != (3, k):
                raise ValueError(f"{name}: {selection.indices.shape[1]} tokens per group, the policy takes {k}")
        device = self.config.device
        return {"iosp_indices": torch.from_numpy(np.stack([s.indices for s in selections])).unsqueeze(0).to(device),
                "iosp_valid": torch.from_numpy(np.stack([s.valid for s in selections])).unsqueeze(0).to(device)}

    def _language(self, instruction: str) -> torch.Tensor:
        # The instruction changes once per task, the images every step: encode it once (a sentence
        # model forward pass is tens of milliseconds on a CPU, more than a small policy's).
        if self._language_cache is None or self._language_cache[0] != instruction:
            embedding = torch.from_numpy(self.encoder.encode(instruction)).view(1, -1).to(self.config.device)
            self._language_cache = (instruction, embedding)
        return self._language_cache[1]

    @torch.inference_mode()
    def step(self, images: Sequence[np.ndarray], proprio: np.ndarray, instruction: str,
             selections: Sequence[SelectedTokens] | None = None) -> PolicyStep:
        """One policy step; ``selections`` (one per camera, from the scene parser) when IOSP is on."""
        start = time.perf_counter()
        obs = {"images": self._images(images),
               "proprio": torch.as_tensor(np.asarray(proprio, dtype=np.float32)).view(1, -1).to(self.config.device)}
        if self.uses_iosp:
            obs.update(self._iosp(selections))
        if self.encoder is not None:
            obs["language"] = self._language(instruction)
        self.policy.reset_expert_counts()
        routing = None
        if self.skill_set is not None:
            chunk_tensor, routing = self.skill_set.predict(self.policy, obs)
        else:
            chunk_tensor = self.policy.predict_action_chunk(obs)
        chunk = chunk_tensor[0].cpu().numpy()
        counts = self.policy.expert_counts().cpu().numpy()
        tokens = self.model_config.num_tokens
        groups = {}
        if self.uses_iosp:
            layers = self.policy.trunk.moe_layers
            groups = {"group_expert_counts": np.stack([layer.group_counts.cpu().numpy() for layer in layers]),
                      "group_tokens": np.stack([layer.group_tokens.cpu().numpy() for layer in layers])}
        return PolicyStep(chunk=chunk, expert_counts=counts, experts_per_token=float(counts.sum(1).mean() / tokens),
                          latency_s=time.perf_counter() - start, routing=routing, **groups)
