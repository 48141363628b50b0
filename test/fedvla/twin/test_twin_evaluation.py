"""fedvla.twin.evaluation: the graph's and the in-process result side by side, the report, and an
in-process trial of a checkpoint (the statistics themselves: test_statistics.py)."""
from __future__ import annotations

import json
import shutil

import pytest

from fedvla.config import ConfigError
from fedvla.statistics import wilson_interval
from fedvla.twin.evaluation import TwinTrial, agreement_lines, report_table, summarize, write_report


def _trial(task, seed, success, **changes):
    values = dict(task=task, seed=seed, success=success, time_to_success_s=4.0 + seed if success else None, steps=40,
                  latencies_ms=[10.0, 20.0, 30.0])
    return TwinTrial(**{**values, **changes})


def test_summary_report_and_files(tmp_path):
    graph = [_trial("open_drawer", s, s % 2 == 0, refused_chunks=1, refused_reasons={"workspace": 1})
             for s in range(4)]
    graph.append(_trial("clean_up", 0, False, protective_stops=1, fault="fault: robot reports protective_stop"))
    in_process = [_trial("open_drawer", s, s < 3) for s in range(4)]
    results = {"graph": summarize(graph), "in-process": summarize(in_process)}
    drawer = results["graph"]["open_drawer"]
    assert (drawer["successes"], drawer["trials"], drawer["refused_chunks"]) == (2, 4, 4)
    assert drawer["refused_reasons"] == {"workspace": 4} and drawer["time_to_success_s"] == pytest.approx(5.0)
    assert drawer["latency_ms_p50"] == pytest.approx(20.0) and drawer["wilson95"] == list(wilson_interval(2, 4))
    assert results["graph"]["clean_up"]["protective_stops"] == 1
    table = report_table(results)
    assert len(table) == 2 + 3 and "| graph | open_drawer | 2/4 (50 %) |" in table[2]
    lines = agreement_lines(results["graph"], results["in-process"])
    assert lines == ["open_drawer: graph 2/4, in-process 3/4: agree within binomial noise (two-proportion test, 5 %)"]
    write_report(tmp_path, results, {"graph": graph, "in-process": in_process}, {"checkpoint": "c", "command": "x"})
    document = json.loads((tmp_path / "evaluation.json").read_text())
    assert len(document["trials"]["graph"]) == 5 and document["summary"]["graph"]["open_drawer"]["successes"] == 2
    assert TwinTrial.from_dict(document["trials"]["graph"][0]) == graph[0]
    assert (tmp_path / "success.png").stat().st_size > 1000 and "agree" in (tmp_path / "evaluation.md").read_text()


def test_twin_results_pair_by_seed_in_the_papers_tables() -> None:
    """A twin study's graph trials as the simulation report's records: Tables 2 and 3 beside the
    paper's numbers, and FedVLA against each method trial by trial (paired by seed)."""
    from fedvla.sim.report import PAPER_TABLE2, paper_sections
    from fedvla.sim.study import MethodConfig
    from fedvla.twin.evaluation import trial_outcomes

    tasks = ["clean_up", "trash_collection", "open_drawer", "sorting_pills"]

    def run(wins: set[int], seeds=range(6)) -> dict:
        trials = [_trial(task, s, s in wins) for task in tasks for s in reversed(seeds)]  # (any order)
        return {"seed": 0, "evaluation": summarize(trials), "validation_loss": {}, "rounds": []}

    runs = {"fedvla": [run({0, 1, 2, 3})], "fedavg": [run({0})], "wo_eda": [run({4})]}
    records = trial_outcomes(runs, tasks)
    assert records["fedvla"][0]["evaluation"]["clean_up"]["successes"] == [[True] * 4 + [False] * 2]
    assert records["wo_eda"][0]["evaluation"]["open_drawer"]["successes"] == [[False] * 4 + [True, False]]
    methods = [MethodConfig(name="fedavg", label="FedAvg", mode="fedavg"),
               MethodConfig(name="fedvla", label="FedVLA (Ours)"), MethodConfig(name="wo_eda", label="w/o EDA", mode="fedavg")]
    text = "\n".join(paper_sections(records, methods, tasks, PAPER_TABLE2, trials="same seed"))
    assert "## Table 2: success (%) per task" in text and "| FedVLA (Ours) | 63.3 | 53.3 | 46.7 | 80.0 | 73.3 |" in text
    assert "| w/o EDA | 26.7 | 26.7 | 20.0 | 33.3 | 26.7 |" in text  # the paper's full Table 3: the same tasks
    assert "| FedAvg | 1 | +3/-0, p=0.25 | " in text  # per task: 3 trials only FedVLA won, none only FedAvg
    assert "| w/o EDA | 1 | +4/-1, p=0.38 | " in text
    # a method with fewer training seeds pairs on the seeds both have, and its claim says so
    from fedvla.sim.report import claim_lines

    uneven = trial_outcomes({"fedvla": [run({0, 1, 2, 3}), run({0, 1})], "fedavg": [run({0})]}, tasks)
    claim = claim_lines(uneven, {"fedvla": "FedVLA (Ours)", "fedavg": "FedAvg"}, tasks)[0]
    assert claim.startswith("FedVLA > FedAvg: ") and "(50.0 % against 16.7 %; CMH odds ratio" in claim
    assert claim.endswith(", paired on the 1 training seed both have).")
    assert "both have" not in "\n".join(claim_lines(records, {"fedvla": "F", "fedavg": "A", "wo_eda": "E"}, tasks))
    with pytest.raises(ConfigError, match="trials: wo_eda ran clean_up on seeds .* the trials do not pair"):
        trial_outcomes({"fedvla": [run({0})], "wo_eda": [run({0}, seeds=range(5))]}, tasks)


@pytest.fixture(scope="module")
def twin_checkpoint(tmp_path_factory):
    """An untrained tiny policy for the twin's camera, proprio and action space."""
    pytest.importorskip("mujoco")
    from pathlib import Path

    import torch

    from fedvla import topics
    from fedvla.model.checkpoint import save_checkpoint, seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.twin.expert import EXPERT_ACTION_SPACE, PROPRIO_JOINTS

    config = PolicyConfig.from_yaml(Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml",
                                    camera_names=[topics.TWIN_CAMERA], image_size=32, proprio_dim=len(PROPRIO_JOINTS),
                                    action_dim=EXPERT_ACTION_SPACE.action_dim)
    policy = seeded_policy(config, 3)
    generator = torch.Generator().manual_seed(0)
    policy.normalizer.fit(0.3 * torch.randn(64, 4, generator=generator), torch.randn(64, 7, generator=generator))
    directory = tmp_path_factory.mktemp("twin_policy")
    with_space = save_checkpoint(policy, directory / "with_space", metadata={"action_space": EXPERT_ACTION_SPACE.to_dict()})
    without = save_checkpoint(policy, directory / "without_space")
    return with_space, without


@pytest.mark.timeout(300)
def test_a_checkpoint_runs_in_process_on_the_twin_camera(twin_checkpoint):
    import torch

    from fedvla.twin.evaluation import evaluate_in_process

    threads = torch.get_num_threads()
    trials = evaluate_in_process(twin_checkpoint[0], "open_drawer", [1000], max_steps=6, show_progress=False)
    (trial,) = trials
    assert (trial.task, trial.seed, trial.steps) == ("open_drawer", 1000, 6)
    assert len(trial.latencies_ms) == 6 and all(ms > 0 for ms in trial.latencies_ms)
    assert not trial.success and trial.time_to_success_s is None and "drawer out" in trial.detail
    assert torch.get_num_threads() == threads  # the evaluation gives the process its threads back


def test_a_checkpoint_without_an_action_space_is_refused_before_anything_runs(twin_checkpoint):
    from fedvla.twin.evaluation import evaluate_in_process

    with pytest.raises(ConfigError, match="records no action space"):
        evaluate_in_process(twin_checkpoint[1], "open_drawer", [0], max_steps=1, show_progress=False)


def test_an_iosp_policy_needs_the_detector_its_demonstrations_were_parsed_with(tmp_path, twin_checkpoint):
    import json

    from fedvla.model.checkpoint_meta import CONFIG_FILE
    from fedvla.twin.evaluation import checkpoint_detector

    assert checkpoint_detector(twin_checkpoint[0], "") is None  # no IOSP: the graph runs no scene parser
    iosp = tmp_path / "iosp_policy"
    iosp.mkdir()
    (iosp / CONFIG_FILE).write_text(json.dumps({"policy": {"iosp": True}}))
    with pytest.raises(ConfigError, match="uses IOSP and no detector"):
        checkpoint_detector(iosp, "")
    with pytest.raises(ConfigError, match="neither a trained detector"):
        checkpoint_detector(iosp, tmp_path)
    (tmp_path / "detector.json").write_text(json.dumps({"weights": str(tmp_path / "best.pt")}))
    (tmp_path / "best.pt").write_bytes(b"weights")
    assert checkpoint_detector(iosp, tmp_path) == tmp_path / "best.pt"  # a fedvla twin detector output


def test_twin_results_are_generated_from_the_runs_records(tmp_path):
    from fedvla.twin.results import write_twin_results

    demos = tmp_path / "demos"
    demos.mkdir()
    episodes = [{"task": "open_drawer", "seed": s, "success": s != 3, "steps": 40 + s, "attempts": 1 + (s == 2),
                 **({"imported_steps": 40 + s - (s == 0)} if s != 3 else {})} for s in range(5)]
    (demos / "demos.json").write_text(json.dumps({
        "episodes": episodes, "demonstrations_per_minute": 4.25,
        "summary": {"open_drawer": {"episodes": 5, "successes": 4, "success_rate": 0.8,
                                    "repeated_after_driver_stop": 1}}}))
    (demos / "run.json").write_text(json.dumps({"commit": "abc"}))
    detector = tmp_path / "detector"
    detector.mkdir()
    (detector / "detector.json").write_text(json.dumps({
        "map50": 0.71, "map50_95": 0.52, "data": {"val_images_per_task": 30}, "train": {"epochs": 30, "image_size": 320},
        "train_s": 5400.0}))
    readme = write_twin_results(tmp_path / "results", demos, detector)
    assert "90 min of training" in readme.read_text()  # (detector.json's own figure, without ultralytics' table)
    # ultralytics' time column restarts when an interrupted training resumes: the segments add up.
    (detector / "train").mkdir()
    (detector / "train" / "results.csv").write_text("epoch, time,train/box_loss\n1,600.0,1.0\n2,1200.0,0.9\n"
                                                    "3,700.0,0.8\n4,1800.0,0.7\n")
    readme = write_twin_results(tmp_path / "results", demos, detector)
    text = readme.read_text()
    assert "50 min of training" in text
    low, high = wilson_interval(4, 5)
    assert f"| open_drawer | 4/5 (80 %) | {100 * low:.0f}-{100 * high:.0f} % | 1 | 42 | 99 % |" in text
    assert "5 demonstrations, 4.25 per minute" in text and "mAP50 0.710, mAP50-95 0.520" in text
    assert json.loads((tmp_path / "results" / "demos" / "run.json").read_text()) == {"commit": "abc"}
    # a study: its report, provenance and every task's trial records are copied beside the summary
    study = tmp_path / "study"
    (study / "methods" / "fedvla" / "evaluation" / "open_drawer").mkdir(parents=True)
    (study / "study.md").write_text("# The workcell twin study\n")
    (study / "study.md").write_text("# The workcell twin study\n![success per task](success.png)\n")
    (study / "run.json").write_text(json.dumps({"commit": "def", "scale": {"name": "evidence"}}))
    record = {"seed": 0, "method": {"label": "FedVLA (Ours)"}, "rounds": [{"duration_s": 900.0}],
              "train_seconds": 900.0, "seconds": 2700.0}
    (study / "methods" / "fedvla" / "result.json").write_text(json.dumps(record))
    (study / "methods" / "fedvla" / "run.json").write_text(json.dumps({"commit": "def", "seconds": 2700.0}))
    (study / "methods" / "fedvla" / "evaluation" / "open_drawer" / "evaluation.json").write_text('{"trials": []}')
    text = write_twin_results(tmp_path / "results", demos, detector, [study]).read_text()
    assert "## Twin study, scale `evidence` (graph-evaluated)" in text and "# The workcell twin study" in text
    assert "](study_evidence/success.png)" in text  # the README's links reach the copied pictures
    copied = tmp_path / "results" / "study_evidence"
    assert json.loads((copied / "run.json").read_text())["commit"] == "def"
    assert (copied / "methods" / "fedvla" / "evaluation" / "open_drawer" / "evaluation.json").is_file()
    assert json.loads((copied / "methods" / "fedvla" / "result.json").read_text()) == record
    assert json.loads((copied / "methods" / "fedvla" / "run.json").read_text())["commit"] == "def"
    assert "| FedVLA (Ours) | 1 | 0.25 | 0.50 | 0.75 |" in text.split("### Compute, scale `evidence`")[1]
    # rewritten with a new study beside the one already copied (its records are read where they are)
    new_study = tmp_path / "new_study"
    (new_study / "methods").mkdir(parents=True)
    (new_study / "study.md").write_text("# The workcell twin study, again\n")
    (new_study / "run.json").write_text(json.dumps({"commit": "0ff", "scale": {"name": "cpu"}}))
    shutil.copytree(detector, new_study / "detector")  # the detector a study trained for its scene parser
    text = write_twin_results(tmp_path / "results", demos, detector, [copied, new_study]).read_text()
    assert "## Twin study, scale `evidence`" in text and "## Twin study, scale `cpu`" in text
    assert "Its scene parser's detector: mAP50 0.710" in text.split("scale `cpu`")[1]
    assert (tmp_path / "results" / "study_cpu" / "detector" / "detector.json").is_file()
    assert (copied / "methods" / "fedvla" / "evaluation" / "open_drawer" / "evaluation.json").is_file()
