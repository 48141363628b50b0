"""fedvla study-detector: Meta-World renders labelled from the simulator's segmentation, on layouts
of their own, and a tiny YOLOv8 trained on them for one epoch with its mAP."""
import json
from pathlib import Path

import pytest

pytest.importorskip("metaworld")

from fedvla.sim.detector_data import ARENA, MetaWorldDetectorData, class_names, write_metaworld_detector_dataset  # noqa: E402


def test_the_renders_are_labelled_with_the_oracles_objects(tmp_path) -> None:
    config = MetaWorldDetectorData(tasks=("drawer-close-v3",), train_layouts_per_task=2, val_layouts_per_task=1)
    data = write_metaworld_detector_dataset(tmp_path, config)
    names = class_names(config.tasks)
    assert "drawer" in names and "gripper" in names and not set(ARENA) & set(names)
    assert f"  {names.index('drawer')}: drawer" in data.read_text()
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    assert len(labels) == 2 * 3 and len(list((tmp_path / "labels" / "val").glob("*.txt"))) == 3  # 3 cameras each
    drawer_seen = 0
    for path in labels:
        for line in path.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            assert 0 <= int(cls) < len(names) and all(0 < float(v) <= 1 for v in (cx, cy, w, h))
            drawer_seen += int(cls) == names.index("drawer")
    assert drawer_seen >= 4  # the task's object is in (nearly) every view


@pytest.mark.timeout(600)  # ultralytics on CPU: the global 300 s must not cut it short
def test_study_detector_trains_a_tiny_yolo_and_reports_map(tmp_path, capsys) -> None:
    pytest.importorskip("ultralytics")
    from fedvla.cli import main

    status = main(["study-detector", "--train-layouts", "1", "--val-layouts", "1", "--epochs", "1",
                   "--image-size", "64", "--batch", "4", "--output", str(tmp_path)])
    assert status in (0, None)
    printed = capsys.readouterr().out
    assert "mAP50 " in printed and "held-out layouts" in printed
    report = json.loads((tmp_path / "detector.json").read_text())
    assert 0.0 <= report["map50_95"] <= report["map50"] <= 1.0 and Path(report["weights"]).is_file()
    assert len(report["commit"]) == 40  # the code it ran (the tests run in the repository)
    # run again on the same output: validated again, the training's recorded time kept
    assert main(["study-detector", "--train-layouts", "1", "--val-layouts", "1", "--epochs", "1", "--image-size", "64",
                 "--batch", "4", "--output", str(tmp_path)]) in (0, None)
    again = json.loads((tmp_path / "detector.json").read_text())
    assert (again["train_s"], again["render_s"], again["commit"]) == (report["train_s"], report["render_s"],
                                                                      report["commit"])
    assert report["data"]["image_size"] == 64 and report["classes"] == list(class_names(MetaWorldDetectorData().tasks))

    # the study's IOSP on it (fedvla study --detector): the parse runs on the rendered images
    from fedvla.sim.collect import CollectConfig, EpisodeRecorder, metaworld_benchmark
    from fedvla.sim.detector_data import background_class_names, trained_detector

    tasks = ("drawer-close-v3",)
    assert "drawer" not in background_class_names(tasks) and set(background_class_names(tasks)) < set(class_names(tasks))
    assert trained_detector(str(tmp_path), tasks).background_classes == set(background_class_names(tasks))
    env, layouts = metaworld_benchmark("drawer-close-v3", 0)
    env.set_task(layouts[0])
    env.reset()
    config = CollectConfig(tasks=tasks, image_size=64, iosp_grid=(4, 4), iosp_tokens_per_group=4, detector=str(tmp_path))
    recorder = EpisodeRecorder(env, "drawer-close-v3", config)
    try:
        views = recorder.images()
        selections = recorder.selections(views, "close the drawer")
    finally:
        recorder.close()
        env.close()
    assert len(selections) == 3 and all(s.indices.shape == (3, 4) for s in selections)
