"""The simulation study at its smoke scale, end to end: demonstrations → every method (one config
file each, the same trainer and federation code) → closed-loop evaluation → tables and plots."""
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")
# The module's smoke study (every method, FedVLA at two seeds, the expert's ceiling) runs in the
# first test's setup: minutes on 2 cores, which the global 300 s must not cut short.
pytestmark = pytest.mark.timeout(1800)

from fedvla.config import ConfigError  # noqa: E402
from fedvla.sim.study import Study, load_method, load_scale  # noqa: E402

CONFIG = Path(__file__).resolve().parents[3] / "config"
ALL_METHODS = ("centralized", "fedavg", "fedavg_matched", "fedvla", "wo_iosp", "wo_dgmoe", "wo_eda", "fedvla_dirichlet",
               "wo_eda_dirichlet", "fedvla_sizes", "wo_eda_sizes", "fedvla_detector")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output = tmp_path_factory.mktemp("study")
    scale = load_scale(CONFIG, "smoke")
    results = Study(CONFIG, scale, output, show_progress=False).run(command="fedvla study --scale smoke")
    return scale, output, results


def test_training_lowers_the_validation_loss_of_every_method_on_every_task(smoke) -> None:
    scale, _, results = smoke
    assert tuple(results) == ALL_METHODS
    assert [r["seed"] for r in results["fedvla"]] == [0, 1] and len(results["fedavg"]) == 1
    for name, runs in results.items():
        for result in runs:
            for task, curve in result["validation_loss"].items():
                assert len(curve) == scale.rounds + 1  # the initial model, then every round
                assert curve[-1] < curve[0], (name, task, curve)


def test_the_methods_differ_only_where_their_config_says(smoke) -> None:
    _, _, results = smoke
    models = {name: runs[0]["model"] for name, runs in results.items()}
    assert models["fedvla"]["iosp"] and models["fedvla"]["feed_forward"] == "dgmoe"
    assert not models["wo_iosp"]["iosp"] and models["wo_dgmoe"]["feed_forward"] == "dense"
    assert not models["fedavg"]["iosp"] and models["fedavg"]["feed_forward"] == "dense"
    assert models["fedavg_matched"]["feed_forward"] == "dense" and models["fedavg_matched"]["expert_hidden_dim"] == (
        models["fedvla"]["num_experts"] * models["fedvla"]["expert_hidden_dim"])
    modes = {name: runs[0]["method"]["mode"] for name, runs in results.items()}
    assert modes == {"centralized": "centralized", "fedavg": "fedavg", "fedavg_matched": "fedavg", "fedvla": "eda",
                     "wo_iosp": "eda", "wo_dgmoe": "eda", "wo_eda": "fedavg", "fedvla_dirichlet": "eda",
                     "wo_eda_dirichlet": "fedavg", "fedvla_sizes": "eda", "wo_eda_sizes": "fedavg", "fedvla_detector": "eda"}
    # Federated methods close every round with both task clients; centralized has one learner.
    assert all(r["clients"] == ["drawer-close-v3", "sweep-into-v3"] for r in results["fedvla"][0]["rounds"])
    assert all(r["clients"] == ["centralized"] for r in results["centralized"][0]["rounds"])
    # the two training seeds of FedVLA start from different models, on the same data and trials
    first, second = results["fedvla"]
    assert first["validation_loss"] != second["validation_loss"]


def test_every_checkpoint_records_the_action_space_an_arm_driver_checks(smoke) -> None:
    from fedvla.app.arm import checked_action_space
    from fedvla.robot.retarget import RetargetConfig
    from fedvla.sim.collect import METAWORLD_ACTION_SPACE

    _, _, results = smoke
    checkpoints = {e["checkpoint"] for runs in results.values() for r in runs for e in r["evaluation"].values()}
    assert checkpoints and all(checked_action_space(c, RetargetConfig()) == METAWORLD_ACTION_SPACE for c in checkpoints)


def test_the_report_has_the_papers_tables_plots_and_provenance(smoke) -> None:
    scale, output, results = smoke
    report = (output / "results.md").read_text()
    for label in ("Centralized", "FedAvg", "FedAvg (trunk matched)", "FedVLA (Ours)", "w/o IOSP", "w/o DGMoE",
                  "w/o EDA"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {label} | ")]
        assert rows, label
    table1 = report.split("## Table 1")[1].split("The paper's")[0]
    rows = [line for line in table1.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    cell = r"\d+\.\d \(\d+-\d+\)"  # success % (Wilson 95 % interval)
    assert len(rows) == 5  # four methods and the scripted expert's ceiling on the same trials
    assert re.fullmatch(rf"\| FedVLA \(Ours\) \| 2 \| \d+\.\d ± \d+\.\d \| {cell} \| {cell} \|", rows[3]), rows[3]
    assert re.fullmatch(rf"\| Scripted expert \(ceiling\) \| - \| \d+\.\d \| {cell} \| {cell} \|", rows[4]), rows[4]
    assert "| FedVLA (Ours) | 63.3 | 80.0 | 80.0 | 53.3 | 40.0 |" in report  # the paper's row beside ours
    paired = report.split("## Paired tests")[1].split("##")[0]
    assert "| w/o EDA | 1 | +" in paired and "OR " in paired  # (FedVLA's 2 seeds against its 1: seed 0 pairs)
    claims = report.split("## The paper's claims at this scale")[1].split("##")[0]
    for claim in ("FedVLA ≈ Centralized", "FedVLA > FedAvg", "FedVLA > FedAvg (trunk matched)",
                  "w/o IOSP below FedVLA", "w/o DGMoE below FedVLA", "w/o EDA below FedVLA", "Table 3's ordering"):
        assert re.search(rf"\* {re.escape(claim)}.*\*\*(holds|does not hold) at this scale\*\*", claims), claim
    assert re.search(r"\* w/o EDA below FedVLA.*, paired on the 1 training seed both have\)", claims)
    assert "## EDA weights per round: FedVLA (Ours)" in report
    sizes = {row.split(" | ")[0][2:]: row.split(" | ")[2:] for row in
             report.split("## Model size")[1].split("##")[0].splitlines() if row.startswith("| ") and "---" not in row}
    trunk = {label: float(values[0]) for label, values in sizes.items() if label != "Method"}
    tokens = {label: int(values[2].rstrip(" |")) for label, values in sizes.items() if label != "Method"}
    assert trunk["FedAvg (trunk matched)"] == pytest.approx(trunk["FedVLA (Ours)"], rel=0.05)
    assert trunk["FedAvg"] < trunk["FedVLA (Ours)"] and tokens["FedVLA (Ours)"] > tokens["FedAvg"]
    assert tokens["w/o IOSP"] == tokens["FedAvg (trunk matched)"] == tokens["FedAvg"]
    for plot in ("success.png", "validation_loss.png", "experts.png"):
        assert (output / plot).stat().st_size > 1000
    run = json.loads((output / "run.json").read_text())
    assert run["command"] == "fedvla study --scale smoke" and run["seed"] == scale.seed
    assert run["training_seeds"]["fedvla"] == [0, 1]
    assert len(run["config_hash"]) == 16 and run["machine"]["cpus"] >= 1
    assert run["machine"]["metaworld"] == importlib.metadata.version("metaworld")  # the package, not "?"
    evaluation = results["fedvla"][0]["evaluation"]["drawer-close-v3"]
    assert len(evaluation["successes"]) == scale.eval_config().repeats
    expert = json.loads((output / "expert.json").read_text())["successes"]
    assert np.asarray(expert["drawer-close-v3"]).shape == np.asarray(evaluation["successes"]).shape


def test_a_finished_method_is_not_run_again(smoke) -> None:
    scale, output, results = smoke
    before = (output / "methods" / "fedvla" / "result.json").stat().st_mtime_ns
    again = Study(CONFIG, load_scale(CONFIG, "smoke", methods=("fedvla",)), output, show_progress=False)
    assert again.run_method(again.methods[0]) == results["fedvla"][0]
    assert again.run_method(again.methods[0], seed=1) == results["fedvla"][1]
    assert (output / "methods" / "fedvla_seed1" / "result.json").is_file()
    assert (output / "methods" / "fedvla" / "result.json").stat().st_mtime_ns == before
    # each run names the commit it trained at (a long study's runs come from several pinned commits)
    # and keeps its provenance beside its result
    assert len(results["fedvla"][1]["commit"]) == 40
    run = json.loads((output / "methods" / "fedvla_seed1" / "run.json").read_text())
    assert (run["command"], run["commit"]) == ("fedvla study --scale smoke", results["fedvla"][1]["commit"])
    assert run["machine"]["cpus"] >= 1 and run["started"] <= run["finished"] and run["resumed_at_round"] is None


def test_a_first_pass_runs_only_each_methods_first_seeds(smoke, tmp_path) -> None:
    scale, output, results = smoke
    shutil.copytree(output, tmp_path / "study")  # its report is rewritten
    again = Study(CONFIG, load_scale(CONFIG, "smoke", methods=("fedvla",)), tmp_path / "study", show_progress=False)
    first_pass = again.run(command="fedvla study --first-seeds 1", first_seeds=1)
    assert first_pass == {"fedvla": results["fedvla"][:1]}


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
    assert json.loads((tmp_path / "methods" / "fedvla" / "run.json").read_text())["resumed_at_round"] == 2
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
    for finished in ("fedvla", "fedvla_seed1"):  # finished: not rerun
        shutil.copytree(output / "methods" / finished, tmp_path / "methods" / finished)
    scale = load_scale(CONFIG, "smoke", methods=("fedvla", "fedvla_dp_strong"))
    results = Study(CONFIG, scale, tmp_path, show_progress=False).run(command="fedvla study --scale smoke")
    epsilons = [r["dp_epsilon"] for r in results["fedvla_dp_strong"][0]["rounds"]]
    assert 0 < epsilons[0] < epsilons[-1]  # composed over the rounds
    assert all(r["dp_epsilon"] == 0 for r in results["fedvla"][0]["rounds"])
    report = (tmp_path / "results.md").read_text()
    section = report.split("## Client-level differential privacy: success vs ε")[1].split("##")[0]
    assert "| FedVLA + DP (z = 1) | 1 | 4 | " in section and "| FedVLA (Ours) | 0 | 0 | inf | " in section
    assert (tmp_path / "privacy.png").stat().st_size > 1000


def test_a_dirichlet_split_trains_many_clients_and_reports_their_eda_weights(smoke, tmp_path) -> None:
    """The heterogeneity setting: clients holding Dirichlet mixes of the tasks (here 3 clients over
    the smoke scale's 2 tasks x 2 training episodes), each task evaluated by its largest holder."""
    import shutil

    _, output, _ = smoke
    shutil.copytree(output / "data", tmp_path / "data")
    scale = load_scale(CONFIG, "smoke", methods=("fedvla",))
    scale.clients, scale.seeds = {"kind": "dirichlet", "count": 3, "alpha": 0.5}, {}
    results = Study(CONFIG, scale, tmp_path, show_progress=False).run(command="fedvla study --scale smoke")
    (result,) = results["fedvla"]
    assert sorted(result["clients"]) == ["client_00", "client_01", "client_02"]
    assert sum(n for tasks in result["clients"].values() for n in tasks.values()) == 4
    assert all(r["clients"] == ["client_00", "client_01", "client_02"] for r in result["rounds"])
    for task, client in result["evaluated_by"].items():
        assert result["clients"][client].get(task, 0) == max(c.get(task, 0) for c in result["clients"].values())
    report = (tmp_path / "results.md").read_text()
    assert "clients: 3, each task's episodes shared out by Dirichlet(0.5)" in report
    weights = report.split("## EDA weights per round")[1].split("##")[0]
    assert "| 0 | 3 | 0.333 |" in weights


def test_the_client_settings_and_the_trained_detector_run_beside_the_papers_methods(smoke) -> None:
    """Issue 23's settings in one study: Dirichlet and size-skewed clients (each with EDA and with
    FedAvg aggregation of the same model) and IOSP on the study's trained detector, on the same
    demonstrations and trials as the paper's one client per task."""
    from safetensors.numpy import load_file

    scale, output, results = smoke
    assert sorted(results["fedvla"][0]["clients"]) == ["drawer-close-v3", "sweep-into-v3"]
    for name in ("fedvla_dirichlet", "wo_eda_dirichlet", "fedvla_sizes", "wo_eda_sizes"):
        (result,) = results[name]
        assert sorted(result["clients"]) == ["client_00", "client_01", "client_02"], name
        assert sum(n for tasks in result["clients"].values() for n in tasks.values()) == 4
    # the same split for EDA and FedAvg aggregation: only the aggregation differs
    assert results["fedvla_dirichlet"][0]["clients"] == results["wo_eda_dirichlet"][0]["clients"]
    assert results["fedvla_sizes"][0]["clients"] == results["wo_eda_sizes"][0]["clients"]
    assert results["fedvla_dirichlet"][0]["clients"] != results["fedvla_sizes"][0]["clients"]
    assert {r["aggregation"] for r in results["wo_eda_sizes"][0]["rounds"]} == {"fedavg"}

    # the detector's demonstrations: the same episodes (actions), parsed by the trained YOLOv8
    detector = json.loads((output / "detector" / "detector.json").read_text())
    assert 0.0 <= detector["map50"] <= 1.0
    task = "drawer-close-v3"
    oracle = load_file(str(sorted((output / "data" / task).glob("episode_*.safetensors"))[0]))
    parsed = load_file(str(sorted((output / "data_detector" / task).glob("episode_*.safetensors"))[0]))
    assert np.array_equal(oracle["actions"], parsed["actions"])
    assert not (np.array_equal(oracle["iosp_indices"], parsed["iosp_indices"])
                and np.array_equal(oracle["iosp_valid"], parsed["iosp_valid"]))
    trained = results["fedvla_detector"][0]["evaluation"][task]
    assert np.asarray(trained["successes"]).shape == np.asarray(results["fedvla"][0]["evaluation"][task]["successes"]).shape

    report = (output / "results.md").read_text()
    section = report.split("## EDA where clients differ")[1].split("\n## ")[0]
    settings, per_task = section.split("### Success (%) per task where the clients are not one per task")
    rows = [line for line in settings.splitlines() if line.startswith("| ") and not line.startswith("| clients")]
    assert [row.split(" | ")[0] for row in rows] == ["| one per task (the paper's)",
                                                     "| 3, each task's episodes shared out by Dirichlet(0.5)",
                                                     "| 3, data sizes growing geometrically to 10x the smallest, "
                                                     "random task mixes"]
    for setting in ("one per task", "Dirichlet(0.5)", "10x the smallest"):
        assert re.search(rf"\* EDA above FedAvg aggregation with [^\n]*{re.escape(setting)}.*\*\*(holds|does not "
                         r"hold) at this scale\*\*", section), setting
    assert (output / "eda_weights.png").stat().st_size > 1000
    assert [line.split(" | ")[0] for line in per_task.splitlines() if line.startswith("| ") and "|---" not in line] == [
        "| Method", "| FedVLA, Dirichlet clients", "| w/o EDA, Dirichlet clients", "| FedVLA, 10x data sizes",
        "| w/o EDA, 10x data sizes"]
    parsers = report.split("## IOSP: a trained detector against the simulator's perfect masks")[1].split("\n## ")[0]
    assert f"mAP50 {detector['map50']:.3f}" in parsers
    assert "| FedVLA (Ours) | 2 | " in parsers and "| FedVLA, trained detector | 1 | " in parsers
    assert "* Perfect masks over the trained detector: " in parsers


def test_a_detector_method_needs_iosp(smoke) -> None:
    from fedvla.sim.study import MethodConfig

    scale, output, _ = smoke
    study = Study(CONFIG, scale, output, show_progress=False)
    with pytest.raises(ConfigError, match="odd.detector: a detector only parses scenes for IOSP"):
        study.model_config(MethodConfig(name="odd", model={"iosp": False}, detector=True))


def test_the_report_is_rewritten_from_the_results_on_disk_alone(smoke, tmp_path) -> None:
    """fedvla study --report-only: the tables from the recorded result.json files (as for results/
    of earlier runs), nothing run; a method without its result is named."""
    import shutil

    scale, output, _ = smoke
    for finished in ("fedvla", "fedvla_seed1", "fedavg"):
        shutil.copytree(output / "methods" / finished, tmp_path / "methods" / finished)
    scale = load_scale(CONFIG, "smoke", methods=("fedavg", "fedvla"))
    report = Study(CONFIG, scale, tmp_path, show_progress=False).report(command="fedvla study --report-only")
    text = report.read_text()
    assert "| FedVLA (Ours) | 2 | " in text and "| FedAvg | 1 | " in text
    assert "| Scripted expert (ceiling) | - | " in text and (tmp_path / "expert.json").is_file()
    assert not (tmp_path / "data").exists()  # nothing was collected
    # with no run.json of its own it names the commits its runs trained at, not an empty start
    commit = json.loads((output / "methods" / "fedvla" / "result.json").read_text())["commit"][:7]
    (header,) = [line for line in text.splitlines() if line.startswith("Config hash:")]
    assert "written 20" in header and f"from the runs' records (trained at `{commit}`)" in header
    assert "started" not in header
    assert json.loads((tmp_path / "report.json").read_text())["command"] == "fedvla study --report-only"
    compute = text.split("## Compute")[1].split("\n## ")[0]
    assert re.search(r"\| FedVLA \(Ours\) \| 2 \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", compute)
    assert "| every run | 3 | " in compute
    first_pass = Study(CONFIG, scale, tmp_path, show_progress=False).report(command="x", first_seeds=1).read_text()
    assert "| FedVLA (Ours) | 1 | " in first_pass  # a long study's report after its first pass
    with pytest.raises(ConfigError, match=r"methods: wo_eda \(training seed 0\) has no .*result.json"):
        Study(CONFIG, load_scale(CONFIG, "smoke", methods=("wo_eda",)), tmp_path, show_progress=False).report("x")


def test_compute_hours_count_the_rounds_of_earlier_sittings_and_the_detectors_resumed_training(tmp_path) -> None:
    """The report's compute table: a resumed run's training is its rounds' own durations (the
    sitting that finished it trained only the last round); evaluation is what that sitting spent
    after training; the detector's ultralytics log restarts its clock when training resumes."""
    from fedvla.sim.report import compute_table, run_hours

    one_sitting = {"rounds": [{"duration_s": 1800.0}, {"duration_s": 1800.0}], "train_seconds": 3610.0,
                   "seconds": 5410.0}
    resumed = {"rounds": [{"duration_s": 3600.0}, {"duration_s": 1800.0}], "train_seconds": 1800.0,
               "seconds": 9000.0}
    centralized = {"rounds": [], "train_seconds": 1800.0, "seconds": 3600.0}
    assert run_hours(one_sitting) == pytest.approx((1.0, 0.5))
    assert run_hours(resumed) == pytest.approx((1.5, 2.0))
    assert run_hours(centralized) == pytest.approx((0.5, 0.5))
    detector = tmp_path / "detector"
    (detector / "train").mkdir(parents=True)
    (detector / "detector.json").write_text(json.dumps({"train_s": 60.0, "render_s": 360.0, "train": {"epochs": 3}}))
    (detector / "train" / "results.csv").write_text("epoch,   time,metrics/mAP50(B)\n1,1800,0.1\n2,3600,0.2\n"
                                                    "3,1800,0.3\n")  # resumed after epoch 2
    lines = compute_table({"fedvla": [one_sitting, resumed], "fedavg": [centralized]},
                          {"fedvla": "FedVLA (Ours)", "fedavg": "FedAvg"}, detector)
    assert "| FedVLA (Ours) | 2 | 2.50 | 2.50 | 5.00 |" in lines
    assert "| every run | 3 | 3.00 | 3.00 | 6.00 |" in lines
    assert lines[-1].startswith("The detector: 1.50 h of training (3 epochs), 0.10 h rendering")


def test_an_interrupted_study_stops_with_one_line_that_says_how_to_go_on(tmp_path) -> None:
    """SIGTERM (a timeout, systemd, a closed session) or Ctrl-C during a study: exit status 130 and
    the resume hint, not a traceback from wherever the study happened to be."""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([str(Path(sys.prefix) / "bin" / "fedvla"), "study", "--scale", "smoke", "--methods",
                                "fedavg", "--output", str(tmp_path / "study")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while not any("simulation study, scale smoke" in line for line in lines):
        line = process.stdout.readline()
        assert line, "".join(lines)  # (it ended before starting the study)
        lines.append(line)
    process.send_signal(signal.SIGTERM)
    out = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 130, out
    assert "Traceback" not in out
    assert "fedvla: interrupted; run the same command again to go on where it stopped" in out
