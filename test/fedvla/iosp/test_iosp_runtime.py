"""The scene parser as its node runs it: configuration, the simulator's label images as detector,
which token lies on which object, and the pictures a person checks a parse with."""
import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.iosp.parser import SceneParser, SceneParserConfig
from fedvla.iosp.runtime import DetectorKind, SceneParserRuntime, SceneParserRuntimeConfig
from fedvla.iosp.tokens import tokens_on_objects
from fedvla.iosp.types import SelectedTokens
from fedvla.iosp.types import Detection, ObjectGroup, ObjectLabel, detections_from_labels
from fedvla.iosp.visualize import GROUP_COLORS, annotate, box_in_camera

OBJECTS = (ObjectLabel("table", False), ObjectLabel("drawer", True), ObjectLabel("puck", True))


def label_scene() -> np.ndarray:
    """64x64: table on the bottom half, a 16-pixel drawer at the top left, a 4-pixel puck."""
    labels = np.full((64, 64), -1, dtype=np.int32)
    labels[32:, :] = 0
    labels[0:16, 0:16] = 1
    labels[40:42, 50:52] = 2
    return labels


def runtime(**kw) -> SceneParserRuntime:
    values = dict(cameras=("top",), tokens_per_group=4, detect_every_n=1)
    values.update(kw)
    return SceneParserRuntime(SceneParserRuntimeConfig(**values))


def test_label_images_become_masked_detections_with_the_objects_index_as_track() -> None:
    detections = detections_from_labels(label_scene(), OBJECTS, min_pixels=4)
    assert [(d.name, d.foreground, d.track_id) for d in detections] == [
        ("table", False, 0), ("drawer", True, 1), ("puck", True, 2)]
    drawer = detections[1]
    assert drawer.box == (0.0, 0.0, 16.0, 16.0) and drawer.mask.sum() == 256
    assert [d.name for d in detections_from_labels(label_scene(), OBJECTS, min_pixels=5)] == ["table", "drawer"]
    with pytest.raises(ValueError, match="label 2 has no entry in a table of 2 objects"):
        detections_from_labels(label_scene(), OBJECTS[:2])


def test_the_sim_detector_parses_the_frames_label_image() -> None:
    scene = runtime(patch_rows=4, patch_cols=4)
    scene.set_objects("top", OBJECTS)
    parse = scene.parse("top", np.zeros((64, 64, 3), np.uint8), "close the drawer", label_scene())
    assert [t.name for t in parse.targets] == ["drawer"]
    assert parse.groups == [ObjectGroup.BACKGROUND, ObjectGroup.TARGET, ObjectGroup.SURROUNDING]
    # 4x4 grid of 16-pixel patches: the drawer is exactly patch 0; the puck lies in patch 2*4+3,
    # which it takes from the table: the table's top 4 of its 8 patches skip that one.
    assert parse.selection.indices[0][parse.selection.valid[0]].tolist() == [0]
    assert parse.selection.indices[1].tolist()[0] == 11
    assert [t.tolist() for t in parse.object_tokens] == [[8, 9, 10, 12], [0], [11]]


def test_missing_or_inconsistent_labels_give_no_detection_and_a_warning(core_warnings) -> None:
    scene = runtime()
    image = np.zeros((64, 64, 3), np.uint8)
    assert scene.parse("top", image, "close the drawer", label_scene()).detections == []  # no label table yet
    scene.set_objects("top", OBJECTS[:2])
    assert scene.parse("top", image, "close the drawer", label_scene()).detections == []  # label 2 unknown
    scene.set_objects("top", OBJECTS)
    assert scene.parse("top", image, "close the drawer", label_scene()[:32]).detections == []  # other size
    assert any("no label image or label table" in m for m in core_warnings)
    assert any("label 2 has no entry" in m for m in core_warnings)
    assert any("does not match the (64, 64) image" in m for m in core_warnings)
    with pytest.raises(ConfigError, match="camera: 'side' is not one of the parsed cameras"):
        scene.parse("side", image, "", label_scene())


@pytest.mark.parametrize(("values", "message"), [
    ({"cameras": ()}, "cameras: is empty"),
    ({"cameras": ("a", "a")}, "cameras: ['a', 'a'] repeats a camera"),
    ({"detector": "yolo"}, "detector_weights: is empty but detector is yolo"),
    ({"detector": "sam"}, "detector: unknown value 'sam' (allowed: sim, yolo)"),
    ({"rate_hz": 0}, "rate_hz: must be positive"),
    ({"detector_confidence": 2.0}, "detector_confidence: 2.0 is outside [0, 1]"),
    ({"tokens_per_group": 0}, "tokens_per_group: must be at least 1"),
])
def test_bad_settings_are_one_line_errors(values, message) -> None:
    settings = {"cameras": ("top",)} | values
    with pytest.raises(ConfigError) as err:
        SceneParserRuntimeConfig(**settings)
    assert str(err.value).startswith(message)


def test_the_yolo_detector_is_shared_by_the_cameras() -> None:
    scene = runtime(cameras=("left", "right"), detector=DetectorKind.YOLO, detector_weights="yolov8n.yaml",
                    detector_image_size=160)
    assert not scene.needs_labels
    parse = scene.parse("left", np.zeros((120, 160, 3), np.uint8), "pick up the cup")
    assert parse.selection.indices.shape == (3, 4)
    detect = {c: d.detect for c, d in scene.parser.detectors.items()}
    assert detect["left"] == detect["right"]


def test_tokens_on_objects_lists_the_selected_tokens_each_object_touches() -> None:
    detections = [Detection("a", (0, 0, 20, 10)), Detection("b", (30, 30, 32, 32))]
    groups = [ObjectGroup.TARGET, ObjectGroup.TARGET]
    selection = SelectedTokens(indices=np.array([[0, 1, 15, 5]] + [[0] * 4] * 2),
                               valid=np.array([[True, True, True, False]] + [[False] * 4] * 2),
                               scores=np.zeros((3, 4), np.float32))
    # 4x4 grid over 32x32: object a spans patches 0, 1, 2; b lies in patch 15. Patch 5 is not valid.
    on = tokens_on_objects(detections, groups, selection, (32, 32), (4, 4))
    assert [t.tolist() for t in on] == [[0, 1], [15]]


def test_annotation_tints_selected_patches_and_outlines_boxes_in_group_colours() -> None:
    parser = SceneParser(SceneParserConfig(tokens_per_group=2, patch_rows=4, patch_cols=4),
                         {"top": lambda image: [Detection("drawer", (0, 0, 16, 16)),
                                                Detection("table", (0, 48, 64, 64), foreground=False)]})
    image = np.zeros((64, 64, 3), np.uint8)
    parse = parser.parse("top", image, "open the drawer")
    out = annotate(image, parse, with_labels=False)
    assert out.shape == image.shape and not out is image and image.max() == 0
    target, background = np.array(GROUP_COLORS[ObjectGroup.TARGET]), np.array(GROUP_COLORS[ObjectGroup.BACKGROUND])
    np.testing.assert_array_equal(out[0, 5], target)  # the drawer's box outline
    np.testing.assert_array_equal(out[63, 30], background)  # the table's
    tinted = out[8, 8].astype(float)  # inside the drawer's selected patch 0: a tint of the target colour
    np.testing.assert_allclose(tinted, 0.35 * target, atol=1.0)
    assert out[24, 40].max() == 0  # nothing selected or outlined there


def test_boxes_placed_in_the_camera_frame_project_back_onto_their_pixels() -> None:
    K = np.array([[100.0, 0, 31.5], [0, 120.0, 23.5], [0, 0, 1]])
    corners = box_in_camera((10, 5, 30, 25), K, 2.0)
    assert corners.shape == (4, 3) and np.all(corners[:, 2] == 2.0)
    pixels = (K @ (corners / corners[:, 2:]).T).T[:, :2]
    np.testing.assert_allclose(pixels, [[9.5, 4.5], [29.5, 4.5], [29.5, 24.5], [9.5, 24.5]])
