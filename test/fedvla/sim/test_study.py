"""The simulation study at its smoke scale, end to end: demonstrations → every method (one config
file each, the same trainer and federation code) → closed-loop evaluation → tables and plots."""
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("metaworld")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.sim.study import Study, load_method, load_scale  # noqa: E402

CONFIG = Path(__file__).resolve().parents[3] / "config"
ALL_METHODS = ("centralized", "fedavg", "fedvla", "wo_iosp", "wo_dgmoe", "wo_eda")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output = tmp_path_factory.mktemp("study")
    scale = load_scale(CONFIG, "smoke")
    results = Study(CONFIG, scale, output, show_progress=False).run(command="fedvla study --scale smoke")
    return scale, output, results


def test_training_lowers_the_validation_loss_of_every_method_on_every_task(smoke) -> None:
    scale, _, results = smoke
    assert tuple(results) == ALL_METHODS
    for name, result in results.items():
        for task, curve in result["validation_loss"].items():
            assert len(curve) == scale.rounds + 1  # the initial model, then every round
            assert curve[-1] < curve[0], (name, task, curve)


def test_the_methods_differ_only_where_their_config_says(smoke) -> None:
    _, _, results = smoke
    models = {name: r["model"] for name, r in results.items()}
    assert models["fedvla"]["iosp"] and models["fedvla"]["feed_forward"] == "dgmoe"
    assert not models["wo_iosp"]["iosp"] and models["wo_dgmoe"]["feed_forward"] == "dense"
    assert not models["fedavg"]["iosp"] and models["fedavg"]["feed_forward"] == "dense"
    modes = {name: r["method"]["mode"] for name, r in results.items()}
    assert modes == {"centralized": "centralized", "fedavg": "fedavg", "fedvla": "eda", "wo_iosp": "eda",
                     "wo_dgmoe": "eda", "wo_eda": "fedavg"}
    # Federated methods close every round with both task clients; centralized has one learner.
    assert all(r["clients"] == ["drawer-close-v3", "sweep-into-v3"] for r in results["fedvla"]["rounds"])
    assert all(r["clients"] == ["centralized"] for r in results["centralized"]["rounds"])


def test_every_checkpoint_records_the_action_space_an_arm_driver_checks(smoke) -> None:
    from fedvla.app.arm import checked_action_space
    from fedvla.robot.retarget import RetargetConfig
    from fedvla.sim.collect import METAWORLD_ACTION_SPACE

    _, _, results = smoke
    checkpoints = {e["checkpoint"] for r in results.values() for e in r["evaluation"].values()}
    assert checkpoints and all(checked_action_space(c, RetargetConfig()) == METAWORLD_ACTION_SPACE for c in checkpoints)


def test_the_report_has_the_papers_tables_plots_and_provenance(smoke) -> None:
    scale, output, results = smoke
    report = (output / "results.md").read_text()
    for label in ("Centralized", "FedAvg", "FedVLA (Ours)", "w/o IOSP", "w/o DGMoE", "w/o EDA"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {label} | ")]
        assert rows, label
    table1 = report.split("## Table 1")[1].split("The paper's")[0]
    rows = [line for line in table1.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert len(rows) == 3 and all(re.fullmatch(r"\| [^|]+ \| \d+\.\d \| \d+\.\d \| \d+\.\d \|", r) for r in rows)
    assert "| FedVLA (Ours) | 63.3 | 80.0 | 80.0 | 53.3 | 40.0 |" in report  # the paper's row beside ours
    for plot in ("success.png", "validation_loss.png", "experts.png"):
        assert (output / plot).stat().st_size > 1000
    run = json.loads((output / "run.json").read_text())
    assert run["command"] == "fedvla study --scale smoke" and run["seed"] == scale.seed
    assert len(run["config_hash"]) == 16 and run["machine"]["cpus"] >= 1
    evaluation = results["fedvla"]["evaluation"]["drawer-close-v3"]
    assert len(evaluation["successes"]) == scale.eval_config().repeats


def test_a_finished_method_is_not_run_again(smoke) -> None:
    scale, output, results = smoke
    before = (output / "methods" / "fedvla" / "result.json").stat().st_mtime_ns
    again = Study(CONFIG, load_scale(CONFIG, "smoke", methods=("fedvla",)), output, show_progress=False)
    assert again.run_method(again.methods[0]) == results["fedvla"]
    assert (output / "methods" / "fedvla" / "result.json").stat().st_mtime_ns == before


def test_an_interrupted_method_resumes_after_its_last_closed_round(smoke, tmp_path, monkeypatch) -> None:
    import shutil

    import fedvla.sim.study as study_module

    scale, output, _ = smoke
    shutil.copytree(output / "data", tmp_path / "data")  # the demonstrations are kept; only training is redone
    real_run_simulation = study_module.run_simulation

    def stopped_after_two_rounds(config, datasets, state_dir, *, on_round, **kwargs):
        def on_round_then_stop(record, clients):
            on_round(record, clients)
            if record.round == 1:
                raise KeyboardInterrupt  # Ctrl-C, or the end of a session
        return real_run_simulation(config, datasets, state_dir, on_round=on_round_then_stop, **kwargs)

    study = Study(CONFIG, load_scale(CONFIG, "smoke", methods=("fedvla",)), tmp_path, show_progress=False)
    monkeypatch.setattr(study_module, "run_simulation", stopped_after_two_rounds)
    with pytest.raises(KeyboardInterrupt):
        study.run_method(study.methods[0])
    curves = json.loads((tmp_path / "methods" / "fedvla" / "curves.json").read_text())
    assert all(len(c) == 3 for c in curves.values())  # the initial model, rounds 0 and 1

    monkeypatch.setattr(study_module, "run_simulation", real_run_simulation)
    result = study.run_method(study.methods[0])
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    for task, curve in result["validation_loss"].items():
        assert len(curve) == scale.rounds + 1 and curve[:3] == curves[task]


def test_unknown_scales_and_methods_are_named() -> None:
    with pytest.raises(ConfigError, match="scale: no study scale 'huge' .*cpu.*smoke"):
        load_scale(CONFIG, "huge")
    with pytest.raises(ConfigError, match="methods: no study method 'fedprox'"):
        load_method(CONFIG, "fedprox")
    with pytest.raises(ConfigError, match="validation_fraction"):
        load_scale(CONFIG, "smoke", validation_fraction=1.5)


def test_a_private_method_reports_success_against_its_epsilon(smoke, tmp_path) -> None:
    import shutil

    _, output, _ = smoke
    shutil.copytree(output / "data", tmp_path / "data")
    shutil.copytree(output / "methods" / "fedvla", tmp_path / "methods" / "fedvla")  # finished: not rerun
    scale = load_scale(CONFIG, "smoke", methods=("fedvla", "fedvla_dp_strong"))
    results = Study(CONFIG, scale, tmp_path, show_progress=False).run(command="fedvla study --scale smoke")
    epsilons = [r["dp_epsilon"] for r in results["fedvla_dp_strong"]["rounds"]]
    assert 0 < epsilons[0] < epsilons[-1]  # composed over the rounds
    assert all(r["dp_epsilon"] == 0 for r in results["fedvla"]["rounds"])
    report = (tmp_path / "results.md").read_text()
    section = report.split("## Client-level differential privacy: success vs ε")[1].split("##")[0]
    assert "| FedVLA + DP (z = 1) | 1 | 4 | " in section and "| FedVLA (Ours) | 0 | 0 | inf | " in section
    assert (tmp_path / "privacy.png").stat().st_size > 1000
