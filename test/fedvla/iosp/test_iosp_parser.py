"""The per-frame IOSP pipeline with stand-in detectors: groups, token selection, caching and the
defined outputs for bad or empty input."""
import numpy as np
import pytest

from fedvla.iosp.parser import SceneParser, SceneParserConfig
from fedvla.iosp.types import Detection, ObjectGroup


def box_detection(name, x0, y0, size, foreground=True):
    return Detection(name=name, box=(x0, y0, x0 + size, y0 + size), foreground=foreground)


SCENE = [box_detection("drawer", 0, 0, 32), box_detection("puck", 96, 96, 16),
         box_detection("table", 0, 64, 128, foreground=False)]


@pytest.fixture
def calls():
    return []


@pytest.fixture
def parser(calls):
    def detect(image):
        calls.append(1)
        return list(SCENE)

    return SceneParser(SceneParserConfig(tokens_per_group=4, detect_every_n=2), {"top": detect})


def image():
    return np.zeros((128, 128, 3), dtype=np.uint8)


def test_instruction_target_gets_the_patches_it_covers(parser) -> None:
    parse = parser.parse("top", image(), "close the drawer")
    assert [t.name for t in parse.targets] == ["drawer"]
    assert parse.groups == [ObjectGroup.TARGET, ObjectGroup.SURROUNDING, ObjectGroup.BACKGROUND]
    target = parse.selection.indices[0][parse.selection.valid[0]]
    # 8x8 grid of 16-pixel patches: the 32-pixel drawer covers patches 0, 1, 8, 9.
    assert sorted(target.tolist()) == [0, 1, 8, 9]
    assert parse.selection.valid[1].sum() == 1 and parse.selection.indices[1][0] == 6 * 8 + 6  # the puck
    assert parse.selection.valid[2].all()  # the table covers plenty
    assert set(parse.timings_ms) == {"detect", "group", "select"}


def test_detector_runs_every_n_frames_and_objects_keep_their_ids(parser, calls) -> None:
    ids = [[d.track_id for d in parser.parse("top", image(), "close the drawer").detections] for _ in range(4)]
    assert len(calls) == 2 and ids[0] == ids[3] == [0, 1, 2]


def test_bad_or_empty_input_gives_defined_output_and_a_warning(calls, core_warnings) -> None:
    parser = SceneParser(SceneParserConfig(), {"top": lambda img: [], "side": lambda img: list(SCENE)})
    malformed = parser.parse("top", np.zeros((5, 5), dtype=np.float32), "close the drawer")
    assert not malformed.detections and not malformed.selection.valid.any()
    empty = parser.parse("top", image(), "close the drawer")
    assert not empty.detections and not empty.selection.valid.any()
    nothing = parser.parse("side", image(), "open the window")
    assert nothing.targets == [] and nothing.groups[0] is ObjectGroup.SURROUNDING
    assert not nothing.selection.valid[0].any()
    text = "\n".join(core_warnings)
    assert "malformed image" in text and "no object detected" in text and "names none of the visible objects" in text


def test_clip_rule_selects_on_the_clip_grid() -> None:
    class FakeClip:
        def encode_patches(self, img):
            patches = np.zeros((49, 4), np.float32)
            patches[:, 3] = 1.0
            patches[10] = [1, 0, 0, 0]  # the "drawer" patch
            return patches, (7, 7)

        def encode_text(self, names):
            table = {"drawer": [1, 0, 0, 0], "puck": [0, 1, 0, 0], "table": [0, 0, 1, 0]}
            return np.array([table[n] for n in names], np.float32)

    parser = SceneParser(SceneParserConfig(selection_rule="clip", tokens_per_group=1), {"top": lambda img: list(SCENE)},
                         clip=FakeClip())
    parse = parser.parse("top", image(), "close the drawer")
    assert parse.grid == (7, 7) and parse.selection.indices[0][0] == 10 and parse.selection.valid.all()
