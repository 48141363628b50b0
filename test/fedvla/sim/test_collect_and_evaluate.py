"""The simulation study's data and closed loop: Meta-World expert demonstrations recorded as
episode datasets (views, proprio, actions, IOSP selections), and closed-loop trials through the
policy runtime on layouts the demonstrations never showed."""
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("metaworld")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.data.episodes import ChunkDataset, load_meta  # noqa: E402
from fedvla.sim.collect import (STUDY_CAMERAS, TASK_INSTRUCTIONS, CollectConfig, EpisodeRecorder,  # noqa: E402
                                collect_task, expert_policy, metaworld_benchmark, start_episode)
from fedvla.sim.evaluate import ClosedLoopStats, EvalConfig, evaluate_checkpoint, run_closed_loop  # noqa: E402

CONFIG = Path(__file__).resolve().parents[3] / "config"
TASK = "drawer-close-v3"  # the expert's shortest task


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("collect") / TASK
    config = CollectConfig(tasks=(TASK,), episodes_per_task=2, image_size=64, iosp_grid=(4, 4), iosp_tokens_per_group=4)
    result = collect_task(TASK, directory, config, language=np.ones(384, np.float32))
    return config, result


def test_expert_episodes_are_recorded_as_a_dataset(dataset) -> None:
    config, result = dataset
    meta = load_meta(result.directory)
    assert result.episodes == 2 and len(meta.episodes) == 2 and result.steps == sum(e.length for e in meta.episodes)
    assert all(1 <= e.length <= config.max_steps for e in meta.episodes)
    assert meta.camera_names == ["corner", "top", "shoulder"] and meta.image_size == 64
    assert (meta.proprio_dim, meta.action_dim, meta.iosp_grid, meta.iosp_tokens_per_group) == (4, 4, (4, 4), 4)
    assert {e.instruction for e in meta.episodes} == {TASK_INSTRUCTIONS[TASK]}
    assert meta.control_rate_hz == pytest.approx(80.0)  # Meta-World: frame_skip 5 x 2.5 ms
    data = ChunkDataset(result.directory, horizon=4, with_iosp=True)
    sample = data[0]
    assert sample["images"].shape == (3, 3, 64, 64) and sample["images"].float().std() > 10
    actions = data.all_actions()
    assert actions.abs().max() <= 1.0 and actions[:, :3].abs().sum() > 0  # the expert moved the hand
    # The two episodes start from different layouts and hand positions.
    starts = [data[0]["proprio"], data[meta.episodes[0].length]["proprio"]]
    assert not np.allclose(starts[0].numpy(), starts[1].numpy())
    # The drawer is the target in every view at the start (IOSP selections recorded per camera).
    assert sample["iosp_valid"].shape == (3, 3, 4) and bool(sample["iosp_valid"][:, 0].any(dim=1).all())


def test_an_interrupted_collection_resumes_with_the_missing_episodes(dataset) -> None:
    config, result = dataset
    again = collect_task(TASK, result.directory, config, language=np.ones(384, np.float32))
    assert again.episodes == 0 and len(load_meta(result.directory).episodes) == 2  # complete: nothing added


def test_the_study_cameras_are_the_sim_profiles_cameras() -> None:
    """config/camera_sim.yaml and the collector name the same Meta-World view per policy camera."""
    sim = yaml.safe_load((CONFIG / "camera_sim.yaml").read_text())
    profile = {name: sim[f"/camera/{name}"]["ros__parameters"]["sim_camera"] for name in STUDY_CAMERAS}
    assert profile == STUDY_CAMERAS


def test_the_closed_loop_succeeds_with_an_expert_behind_the_runtime() -> None:
    """run_closed_loop wires observation → policy chunk → env → success: with the scripted expert
    standing in for the policy runtime, trials on held-out layouts succeed."""
    env, layouts = metaworld_benchmark(TASK, 1000)
    expert = expert_policy(TASK)
    views = CollectConfig(tasks=(TASK,), image_size=32, iosp=False)
    recorder = EpisodeRecorder(env, TASK, views)
    observed = {}

    class ExpertRuntime:
        class model_config:
            execute_steps = 1

        def step(self, images, proprio, instruction, selections):
            from fedvla.app.policy_runtime import PolicyStep

            observed.update(images=len(images), proprio=np.asarray(proprio), instruction=instruction)
            action = expert.get_action(observed["observation"])
            return PolicyStep(chunk=np.asarray([action]), expert_counts=np.zeros((1, 1)), experts_per_token=1.0,
                              latency_s=0.0)

    stats = ClosedLoopStats()
    rng = np.random.default_rng(0)
    results = []
    try:
        for trial in range(2):
            observation = start_episode(env, layouts, trial, rng, np.asarray(env.hand_init_pos).copy(), 0.0)
            observed["observation"] = observation

            def track():  # the expert reads the full observation; the runtime only gets proprio
                observed["observation"] = env.unwrapped._get_obs()

            results.append(run_closed_loop(env, ExpertRuntime(), recorder, observation, TASK_INSTRUCTIONS[TASK],
                                           150, stats, on_step=track))
    finally:
        recorder.close()
        env.close()
    assert all(success for success, _ in results) and all(10 < steps < 150 for _, steps in results)
    assert observed["images"] == 3 and observed["proprio"].shape == (4,)
    assert observed["instruction"] == "push the drawer closed"
    assert len(stats.latencies) == sum(steps for _, steps in results)  # replanned every step (execute_steps 1)


def test_a_checkpoint_is_evaluated_through_the_policy_runtime(dataset, tmp_path) -> None:
    from fedvla.data.episodes import fit_normalizer
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig

    _, result = dataset
    config = PolicyConfig.from_yaml(CONFIG / "model" / "tiny.yaml", image_size=64, iosp=True, iosp_tokens_per_group=4)
    policy = seeded_policy(config)
    fit_normalizer(policy, ChunkDataset(result.directory, horizon=config.horizon, with_iosp=True))
    save_checkpoint(policy, tmp_path / "ckpt")
    evaluation = evaluate_checkpoint(tmp_path / "ckpt", TASK, EvalConfig(trials=2, repeats=2, max_steps=8,
                                                                         record_trials=1), bag_dir=tmp_path / "bags")
    assert evaluation.successes.shape == (2, 2) and evaluation.steps.shape == (2, 2)
    assert 0.0 <= evaluation.success_rate <= 1.0 and len(evaluation.repeat_rates) == 2
    # 8 steps, replanning every execute_steps (2): 4 policy steps per trial.
    assert len(evaluation.policy_latency_s) == 2 * 2 * 4
    assert evaluation.group_expert_counts.shape == (3, config.num_experts)
    assert evaluation.group_tokens[0] > 0  # target tokens reached the trunk
    assert evaluation.to_dict()["successes"] == evaluation.successes.astype(int).tolist()

    # The recorded trial, replayed open loop through the same checkpoint, gives back the chunks the
    # policy issued in closed loop: at every replanning step, for the steps it executed.
    from fedvla.bag import summarize_bag
    from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
    from fedvla.replay import replay_bag

    (bag,) = sorted((tmp_path / "bags").iterdir())
    assert bag.name == f"{TASK}_trial_0"
    summary = summarize_bag(bag)
    assert summary.topic("/camera/top/color/image_raw").count == 8 and summary.topic("/policy/action_chunk").count == 4
    assert summary.topic("/scene_parser/parsed_scene").count == 8 * 3
    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(tmp_path / "ckpt")))
    record, sampling = replay_bag(bag, runtime)
    assert sampling.steps == 8 and sampling.rate_hz == pytest.approx(80.0) and len(record) == 8
    for n in range(0, 8, config.execute_steps):
        np.testing.assert_allclose(record.predicted[n][:config.execute_steps],
                                   record.recorded[n][:config.execute_steps], atol=1e-5)
    # between replanning steps the policy sees new views, so its chunk differs from the one executed
    assert not np.allclose(record.predicted[1][0], record.recorded[1][0], atol=1e-5)


def test_bad_study_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="tasks: unknown Meta-World task 'door-open'"):
        CollectConfig(tasks=("door-open",))
    with pytest.raises(ConfigError, match="tasks: no instruction for 'button-press-v3'"):
        CollectConfig(tasks=("button-press-v3",))
    with pytest.raises(ConfigError, match="cameras: unknown study camera 'wrist'"):
        CollectConfig(cameras=("wrist",))
    with pytest.raises(ConfigError, match="trials: must be at least 1"):
        EvalConfig(trials=0)
