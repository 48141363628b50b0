"""The twin's D435i sees the workcell: every object an instruction may name is in view at a
plausible size, depth is metric, and the detector's training data is labelled from what is drawn
(boxes on the objects, train and validation on different layouts)."""
import numpy as np
import pytest

pytest.importorskip("mujoco")

from fedvla.twin.camera import TwinCamera  # noqa: E402
from fedvla.twin.detector import CLASS_NAMES, DetectorDataConfig, write_detector_dataset  # noqa: E402
from fedvla.twin.scene import SceneConfig  # noqa: E402
from fedvla.twin.tasks import TASKS  # noqa: E402
from fedvla.twin.workcell import Workcell, WorkcellConfig  # noqa: E402


@pytest.fixture(scope="module")
def camera():
    made = TwinCamera(SceneConfig())
    yield made
    made.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_every_named_object_is_in_view(camera, task) -> None:
    workcell = Workcell(WorkcellConfig(task=task, seed=0))
    frame = camera.render(workcell.scene_state(), depth=True, segmentation=True)
    pixels = frame.labels.size
    model = workcell.plant.model
    for body in workcell.task.labels:  # (with the bodies it carries: a drawer's handle)
        ids = [model.body(body).id] + [c for c in range(model.nbody) if model.body_parentid[c] == model.body(body).id
                                        and model.body(c).name not in workcell.task.labels]
        seen = int(np.count_nonzero(np.isin(frame.labels, ids)))
        assert 50 <= seen <= 0.25 * pixels, (body, seen)  # (the cabinet is the largest, about 16 %)
    table = model.geom("table").bodyid[0]  # the world body: table and floor
    assert np.count_nonzero(frame.labels == table) > 0.2 * pixels
    depth_m = frame.depth[frame.depth > 0] * frame.depth_scale_m
    assert 0.3 < np.median(depth_m) < 1.5  # the table top, seen from 0.7 m above its edge


def test_detector_data_is_labelled_from_the_render(tmp_path) -> None:
    data = write_detector_dataset(tmp_path, DetectorDataConfig(train_images_per_task=1, val_images_per_task=1))
    text = data.read_text()
    assert "train: images/train" in text and f"{len(CLASS_NAMES) - 1}: {CLASS_NAMES[-1]}" in text
    train = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    val = sorted((tmp_path / "labels" / "val").glob("*.txt"))
    assert len(train) == len(val) == len(TASKS)
    assert {p.stem.rsplit("_", 1)[1] for p in train}.isdisjoint({p.stem.rsplit("_", 1)[1] for p in val})
    for path in train + val:
        task = path.stem.rsplit("_", 1)[0]
        rows = [line.split() for line in path.read_text().splitlines()]
        classes = {CLASS_NAMES[int(row[0])] for row in rows}
        assert classes <= set(TASKS[task].labels.values())
        assert len(classes) >= len(TASKS[task].labels) - 1, (path, classes)  # the arm may hide one
        for row in rows:
            w, h = float(row[3]), float(row[4])
            assert 0 < w < 0.6 and 0 < h < 0.6, (path, row)  # boxes on objects, not across the image
        assert (tmp_path / "images" / path.parent.name / f"{path.stem}.jpg").is_file()


@pytest.mark.timeout(400)  # its subprocess may take 300 s; pytest.ini's 300 s would cut it short
def test_a_process_can_render_the_twin_then_train() -> None:
    """The twin's camera orders the two LLVMs (Mesa's, triton's) as the scene renderer does: a
    process that renders the workcell and then trains a policy survives."""
    from support.rendering import assert_trains_after_rendering

    assert_trains_after_rendering("from fedvla.twin.workcell import Workcell, WorkcellConfig",
                                  "Workcell(WorkcellConfig(task='open_drawer')).render(depth=False)")


@pytest.mark.timeout(600)  # ultralytics on CPU: the global 300 s must not cut it short
def test_fedvla_twin_detector_trains_a_tiny_yolo_and_reports_map(tmp_path, capsys) -> None:
    pytest.importorskip("ultralytics")
    import json
    from pathlib import Path

    from fedvla.cli import main

    status = main(["twin", "detector", "--train-images", "2", "--val-images", "1", "--epochs", "1",
                   "--image-size", "96", "--batch", "4", "--output", str(tmp_path)])
    assert status in (0, None)
    printed = capsys.readouterr().out
    assert "mAP50 " in printed and "mAP50-95" in printed
    report = json.loads((tmp_path / "detector.json").read_text())
    assert 0.0 <= report["map50_95"] <= report["map50"] <= 1.0
    assert Path(report["weights"]).is_file() and report["train"]["epochs"] == 1
    from fedvla.iosp.models import YoloDetector

    # The scene parser infers at the size the weights were trained at unless told otherwise.
    assert YoloDetector(report["weights"]).image_size == 96
    assert YoloDetector(report["weights"], image_size=160).image_size == 160
    assert len(list((tmp_path / "data" / "images" / "val").glob("*.jpg"))) == len(TASKS)


@pytest.mark.timeout(120)
def test_bench_twin_measures_simulated_against_wall_time() -> None:
    from fedvla.bench.twin import bench_real_time

    figures = bench_real_time(seconds=1.0, fps=5.0, task="open_drawer")
    assert figures.frames >= 1 and figures.wall_s >= 1.0 and figures.sim_s > 0  # figures, not a speed goal
    assert figures.real_time_factor == figures.sim_s / figures.wall_s
