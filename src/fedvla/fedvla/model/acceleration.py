"""Faster policy steps on CPU: the same policy, run by another engine where it pays.

A policy step at batch 1 is bound by dispatch and per-operator overhead rather than arithmetic
(``fedvla bench policy`` shows where its time goes). The options, each a :class:`StepBackend`:

* ``eager``: plain PyTorch (the reference every other backend is checked against);
* ``compile``: ``torch.compile`` (inductor) of the whole forward. The MoE routing is data-dependent
  (which tokens each expert takes), so the graph breaks around it and the dispatch runs eagerly;
  the dense stretches between (stems, attention, norms, the gates) become fused kernels. The first
  step compiles (tens of seconds on 2 cores; inductor caches the result on disk);
* ``torchscript``: the image encoder (the stems' convolutions: most of a step's arithmetic)
  traced, frozen and optimised for inference (oneDNN convolution fusion); the rest eager;
* ``onnxruntime`` / ``openvino``: the image encoder run by ONNX Runtime or OpenVINO; the rest,
  MoE dispatch included, in PyTorch.

Two options that the issue lists are already how the eager policy runs, and the bench measures them
against their unfused forms: the three camera views go through the encoder as one batch
(:class:`fedvla.model.stems.ImageStem`), and the experts of a layer run as one grouped call at
inference (:func:`fedvla.model.moe._experts_grouped`).

:func:`accelerate` converts an inference-only policy in place and checks the converted step
against eager on an example observation: the action chunk must agree within ``tolerance`` (1e-5,
normalised action units) or the conversion is refused, with the measured difference.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import time

import torch
from torch import Tensor, nn

from fedvla.config import ConfigError
from fedvla.model.policy import Observation, Policy
from fedvla.model.step_backend import StepBackend

DEFAULT_TOLERANCE = 1e-5


class AccelerationError(ConfigError):
    """A backend is unavailable here, or its step differs from eager beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Acceleration:
    backend: StepBackend
    build_s: float  # conversion plus the first (compiling) step
    max_abs_difference: float  # against eager on the example, normalised action units


class _ExternalEncoder(nn.Module):
    """An image encoder run outside PyTorch: (N, 3, H, W) float → (N, P, D), as the module it replaces."""

    def __init__(self, run) -> None:
        super().__init__()
        self._run = run

    def forward(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self._run(images.detach().contiguous().numpy()))


def _encoder_input(example: Observation) -> Tensor:
    images = example["images"]
    x = images.flatten(0, 1)
    return x.float() / 255.0 if images.dtype == torch.uint8 else x.float()


def _onnx_bytes(encoder: nn.Module, example: Tensor) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter handles this static convolution stack in a second,
        # without onnxscript; the torch.export one would add a dependency for no difference here.
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "views"}}, opset_version=17)
    return buffer.getvalue()


def _onnxruntime_encoder(encoder: nn.Module, example: Tensor, threads: int) -> nn.Module:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The policy shares its cores with the camera, the driver and the renderer: threads that spin
    # while waiting for work would take cores the others need (see PolicyRuntimeConfig.torch_threads).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(_onnx_bytes(encoder, example), options,
                                           providers=["CPUExecutionProvider"])
    return _ExternalEncoder(lambda images: session.run(None, {"images": images})[0])


def _openvino_encoder(encoder: nn.Module, example: Tensor, threads: int) -> nn.Module:
    import warnings

    import openvino

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its converter traces with torch.jit, and says so
        model = openvino.convert_model(encoder, example_input=example)
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                             "INFERENCE_PRECISION_HINT": "f32"})
    return _ExternalEncoder(lambda images: compiled(images)[0])


def _torchscript_encoder(encoder: nn.Module, example: Tensor) -> nn.Module:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it is one of the measured options
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(encoder.eval(), example)))


def _converted(policy: Policy, backend: StepBackend, example: Observation, threads: int) -> None:
    if backend is StepBackend.EAGER:
        return
    if backend is StepBackend.COMPILE:
        # The MoE dispatch is data-dependent (which tokens each expert takes) and grouped_mm has no
        # CPU meta kernel to trace: it stays eager between the compiled stretches. (Disabled here,
        # per layer, not by a decorator: that would import torch._dynamo, seconds, in every process.)
        for layer in policy.trunk.moe_layers:
            layer._dispatch = torch.compiler.disable(layer._dispatch)
        for stem_moe in getattr(policy.stems.image, "group_moe", ()):
            stem_moe._dispatch = torch.compiler.disable(stem_moe._dispatch)
        policy.forward = torch.compile(policy.forward, dynamic=False)
        return
    stem = policy.stems.image
    x = (_encoder_input(example) - stem.mean) / stem.std
    if backend in (StepBackend.ONNXRUNTIME, StepBackend.OPENVINO) and x.device.type != "cpu":
        raise AccelerationError("step_backend", f"{backend.value} runs the encoder on the CPU, the policy is on "
                                f"{x.device}", "eager, compile or torchscript")
    builders = {StepBackend.TORCHSCRIPT: lambda: _torchscript_encoder(stem.encoder, x),
                StepBackend.ONNXRUNTIME: lambda: _onnxruntime_encoder(stem.encoder, x, threads),
                StepBackend.OPENVINO: lambda: _openvino_encoder(stem.encoder, x, threads)}
    try:
        stem.encoder = builders[backend]()
    except ImportError as err:
        raise AccelerationError("step_backend", f"{backend.value} is not installed here ({err.name})",
                                f"eager, or {backend.value} after pip install {backend.value}") from None


def example_observation(config, seed: int = 0) -> Observation:
    """A random observation of the shape ``config`` takes (batch 1), for checking a conversion."""
    generator = torch.Generator().manual_seed(seed)
    views, size = len(config.camera_names), config.image_size
    obs = {"images": torch.randint(0, 256, (1, views, 3, size, size), generator=generator, dtype=torch.uint8),
           "proprio": torch.randn(1, config.proprio_dim, generator=generator)}
    if config.language_dim:
        obs["language"] = torch.randn(1, config.language_dim, generator=generator)
    if config.iosp:
        rows, cols = config.patch_grid
        shape = (1, views, 3, config.iosp_tokens_per_group)
        obs["iosp_indices"] = torch.randint(0, rows * cols, shape, generator=generator)
        obs["iosp_valid"] = torch.rand(shape, generator=generator) < 0.7
    return obs


def accelerate(policy: Policy, backend: StepBackend | str, example: Observation, *,
               tolerance: float = DEFAULT_TOLERANCE, threads: int = 0) -> Acceleration:
    """Convert ``policy`` (in eval mode, inference only: a converted encoder has no parameters
    to train or save) to run its steps on ``backend``; ``example`` is one observation of the
    shape it will see. Refuses, leaving ``policy`` as it was, when the converted step's
    normalised action chunk differs from eager's by more than ``tolerance``."""
    backend = StepBackend(backend)
    threads = threads or torch.get_num_threads()
    policy.eval()
    with torch.inference_mode():
        reference = policy(example)
    started = time.perf_counter()
    original = {"encoder": policy.stems.image.encoder, "forward": policy.__dict__.get("forward")}
    try:
        _converted(policy, backend, example, threads)
        with torch.inference_mode():
            difference = float((policy(example) - reference).abs().max())
    except AccelerationError:
        _restore(policy, original)
        raise
    except Exception as err:  # a converter or compiler failing on this machine: say which, run eager
        _restore(policy, original)
        raise AccelerationError("step_backend", f"{backend.value} failed here: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}", "another backend, or eager") from None
    build_s = time.perf_counter() - started
    if not difference <= tolerance:
        _restore(policy, original)
        raise AccelerationError("step_backend", f"{backend.value} changes the action chunk by {difference:.3g} "
                                f"(at most {tolerance:g})", "another backend, or eager")
    policy.reset_expert_counts()
    return Acceleration(backend=backend, build_s=build_s, max_abs_difference=difference)


def _restore(policy: Policy, original: dict) -> None:
    for layer in [*policy.trunk.moe_layers, *getattr(policy.stems.image, "group_moe", ())]:
        layer.__dict__.pop("_dispatch", None)  # (the compile backend's per-layer wrapper)
    policy.stems.image.encoder = original["encoder"]
    if original["forward"] is None:
        policy.__dict__.pop("forward", None)
    else:
        policy.forward = original["forward"]


def accelerated_copy(policy: Policy, backend: StepBackend | str, example: Observation, **options) -> tuple[Policy, Acceleration]:
    """A converted copy, ``policy`` untouched (for measuring backends side by side)."""
    converted = copy.deepcopy(policy)
    return converted, accelerate(converted, backend, example, **options)
