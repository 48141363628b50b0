"""Every step backend (fedvla.model.acceleration) keeps the policy's output equal to eager's within
1e-5, on an IOSP + DGMoE policy and observations other than the one it was checked on."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvla.model.acceleration import AccelerationError, accelerate, accelerated_copy, example_observation
from fedvla.model.checkpoint import seeded_policy
from fedvla.model.config import PolicyConfig
from fedvla.model.step_backend import StepBackend

CONFIG = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"
TOLERANCE = 1e-5


def _policy():
    config = PolicyConfig.from_yaml(CONFIG, iosp=True, iosp_tokens_per_group=2)
    policy = seeded_policy(config, 4)
    policy.normalizer.fit(torch.randn(64, config.action_dim) * 0.1, torch.randn(64, config.proprio_dim))
    return policy.eval()


def _check_equal_to_eager(backend: StepBackend) -> None:
    policy = _policy()
    converted, acceleration = accelerated_copy(policy, backend, example_observation(policy.config, seed=0))
    assert acceleration.backend is backend and acceleration.max_abs_difference <= TOLERANCE
    for seed in (1, 2, 3):
        obs = example_observation(policy.config, seed=seed)
        with torch.inference_mode():
            policy.reset_expert_counts()
            converted.reset_expert_counts()
            expected, got = policy.predict_action_chunk(obs), converted.predict_action_chunk(obs)
            torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)
            # the expert counts federation and the activation topic use are the eager policy's too
            assert torch.equal(converted.expert_counts(), policy.expert_counts())


@pytest.mark.parametrize("backend", [StepBackend.EAGER, StepBackend.TORCHSCRIPT, StepBackend.ONNXRUNTIME,
                                     StepBackend.OPENVINO])
def test_backend_step_equals_eager(backend) -> None:
    _check_equal_to_eager(backend)


@pytest.mark.timeout(900)  # inductor compiles the graph pieces between the MoE dispatches (minutes on 2 busy cores)
def test_compiled_step_equals_eager() -> None:
    _check_equal_to_eager(StepBackend.COMPILE)


def test_a_backend_beyond_the_tolerance_is_refused_and_the_policy_left_as_it_was() -> None:
    policy = _policy()
    encoder = policy.stems.image.encoder
    # ONNX Runtime's convolutions round differently from oneDNN's (about 1e-7 here): a zero
    # tolerance must refuse them
    with pytest.raises(AccelerationError, match=r"step_backend: onnxruntime changes the action chunk by .* \(at most 0\)"):
        accelerate(policy, "onnxruntime", example_observation(policy.config), tolerance=0.0)
    assert policy.stems.image.encoder is encoder and "forward" not in policy.__dict__


def test_a_backend_that_is_not_installed_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    policy = _policy()
    with pytest.raises(AccelerationError, match=r"openvino is not installed here"):
        accelerate(policy, StepBackend.OPENVINO, example_observation(policy.config))
    assert policy.stems.image.encoder.__class__.__name__ == "ConvEncoder"


def test_the_policy_runtime_steps_on_its_configured_backend(tmp_path) -> None:
    from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
    from fedvla.config import ConfigError
    from fedvla.model.checkpoint import save_checkpoint

    config = PolicyConfig.from_yaml(CONFIG, language_dim=0, camera_names=["top"])
    policy = seeded_policy(config, 5)
    policy.normalizer.fit(torch.randn(64, config.action_dim) * 0.1, torch.randn(64, config.proprio_dim))
    checkpoint = str(save_checkpoint(policy, tmp_path / "ckpt"))
    eager = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=checkpoint))
    fast = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=checkpoint, step_backend="onnxruntime"))
    assert eager.acceleration is None and fast.acceleration.backend is StepBackend.ONNXRUNTIME
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    a, b = eager.step([image], np.ones(config.proprio_dim), ""), fast.step([image], np.ones(config.proprio_dim), "")
    np.testing.assert_allclose(b.chunk, a.chunk, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(b.expert_counts, a.expert_counts)
    with pytest.raises(ConfigError, match="step_backend"):
        PolicyRuntimeConfig(checkpoint_path=checkpoint, step_backend="tensorrt")


def test_bench_backends_measures_each_and_the_unfused_forms() -> None:
    from fedvla.bench.model import bench_backends

    policy = _policy()
    figures = bench_backends(policy, example_observation(policy.config), [StepBackend.EAGER, StepBackend.TORCHSCRIPT],
                             repeats=2, warmup=1)
    assert [f.name for f in figures] == ["eager", "torchscript", "eager, 1 call per camera",
                                         "eager, 1 call per expert"]
    for f in figures:
        assert not f.error and len(f.step_ms) == 2 and f.max_abs_difference <= TOLERANCE, f
