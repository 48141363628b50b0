"""Closed-loop evaluation never reuses a layout the demonstrations were collected on (issue: the
paired evaluation runs on held-out layouts)."""
import pytest

pytest.importorskip("metaworld")

from fedvla.sim.collect import CollectConfig, layout_key, metaworld_benchmark  # noqa: E402
from fedvla.sim.evaluate import EvalConfig, held_out_layouts  # noqa: E402
from fedvla.sim.study import StudyScale  # noqa: E402


@pytest.mark.timeout(600)  # builds 44 Meta-World benchmarks
def test_evaluation_layouts_differ_from_the_training_layouts() -> None:
    scale = StudyScale(name="test")  # the study's defaults: 15 trials x 5 repeats
    collect, evaluation = scale.collect_config(), scale.eval_config()
    assert evaluation.training_seed == collect.seed
    coinciding = 0
    for task in collect.tasks:
        env, training = metaworld_benchmark(task, collect.seed)
        env.close()
        seen = {layout_key(layout) for layout in training}  # every layout collection may draw
        assert len(seen) == len(training)  # the key tells the layouts apart
        for repeat in range(evaluation.repeats):
            env, layouts = held_out_layouts(task, evaluation.seed + repeat, evaluation.training_seed)
            env.close()
            assert len(layouts) >= evaluation.trials
            used = [layout_key(layouts[trial % len(layouts)]) for trial in range(evaluation.trials)]
            assert not seen.intersection(used), (task, repeat)
            env, unfiltered = metaworld_benchmark(task, evaluation.seed + repeat)
            env.close()
            coinciding += len(unfiltered) - len(layouts)
    assert coinciding >= 1  # (drawer-close's one-dimensional layouts do coincide: the filter is needed)


def test_the_evaluation_names_its_training_seed() -> None:
    assert EvalConfig().training_seed == CollectConfig().seed == 0
    assert StudyScale(name="test", collect={"seed": 7}).eval_config().training_seed == 7


@pytest.mark.timeout(300)
def test_the_expert_ceiling_runs_on_the_evaluations_own_trials() -> None:
    """The scripted expert on the same (repeat, trial) starts as a policy's evaluation: the same
    layout and hand start for trial i of repeat r."""
    import numpy as np

    from fedvla.sim.evaluate import evaluate_expert, trial_starts

    config = EvalConfig(trials=3, repeats=2, max_steps=150)
    successes = evaluate_expert("drawer-close-v3", config)
    assert successes.shape == (2, 3) and successes.sum() >= 5  # the expert closes the drawer
    first = [start(1)[:7].copy() for _, _, start in trial_starts("drawer-close-v3", config)]
    again = [start(1)[:7].copy() for _, _, start in trial_starts("drawer-close-v3", config)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))  # seeded: every policy meets these starts
