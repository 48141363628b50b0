"""Grouping rules and per-group token selection (box/mask overlap and text similarity)."""
import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.iosp.tokens import (SelectionRule, TokenSelectionConfig, group_detections, object_mask, patch_coverage,
                                select_by_overlap, select_by_similarity)
from fedvla.iosp.types import Detection, ObjectGroup


def square(name: str, x0: int, y0: int, size: int, hw=(64, 64), foreground=True, with_mask=True) -> Detection:
    mask = np.zeros(hw, dtype=bool)
    mask[y0:y0 + size, x0:x0 + size] = True
    return Detection(name=name, box=(x0, y0, x0 + size, y0 + size), mask=mask if with_mask else None,
                     foreground=foreground)


def test_groups_follow_the_three_rules() -> None:
    detections = [square("drawer", 0, 0, 8), square("cup", 8, 8, 8), square("table", 0, 32, 32, foreground=False),
                  square("gripper", 40, 0, 8)]
    assert group_detections(detections, {"drawer", "cup"}) == [
        ObjectGroup.TARGET, ObjectGroup.TARGET, ObjectGroup.BACKGROUND, ObjectGroup.SURROUNDING]
    assert group_detections(detections, set()) == [
        ObjectGroup.SURROUNDING, ObjectGroup.SURROUNDING, ObjectGroup.BACKGROUND, ObjectGroup.SURROUNDING]


@pytest.mark.parametrize(("hw", "grid"), [((64, 64), (8, 8)), ((50, 70), (7, 9)), ((480, 640), (6, 8))])
def test_patch_coverage_equals_a_brute_force_count(hw, grid) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(hw) < 0.3
    ys = np.linspace(0, hw[0], grid[0] + 1).round().astype(int)
    xs = np.linspace(0, hw[1], grid[1] + 1).round().astype(int)
    expected = [mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean() for r in range(grid[0]) for c in range(grid[1])]
    np.testing.assert_allclose(patch_coverage(mask, grid), expected, rtol=1e-6)


def test_overlap_rule_selects_the_patches_on_each_group() -> None:
    # 64x64 image, 8x8 grid of 8-pixel patches: the target covers patches (1,1),(1,2),(2,1),(2,2).
    target = square("drawer", 8, 8, 16)
    table = square("table", 0, 48, 64, foreground=False)
    detections = [target, table]
    config = TokenSelectionConfig(tokens_per_group=8)
    selected = select_by_overlap(detections, group_detections(detections, {"drawer"}), (64, 64), (8, 8), config)
    t = ObjectGroup.TARGET
    assert sorted(selected.indices[t][selected.valid[t]].tolist()) == [9, 10, 17, 18]
    assert selected.valid[t].sum() == 4 and np.all(selected.scores[t][selected.valid[t]] == 1.0)
    assert not selected.valid[ObjectGroup.SURROUNDING].any()  # no surrounding object
    assert selected.valid[ObjectGroup.BACKGROUND].all()  # the table covers 16 patches: 8 chosen
    assert set(selected.indices[ObjectGroup.BACKGROUND].tolist()) <= set(range(48, 64))
    groups = selected.group_of_patch(64)
    assert groups[9] == t and groups[0] == -1


def test_fringe_patches_of_a_large_object_are_left_out_but_a_small_object_keeps_its_patches() -> None:
    # A 20-pixel square from (8, 8) on 8-pixel patches: 4 patches full, 4 half, the corner patch
    # 27 a quarter (fringe: below half the best coverage).
    large = square("drawer", 8, 8, 20)
    chosen = select_by_overlap([large], [ObjectGroup.TARGET], (64, 64), (8, 8), TokenSelectionConfig(tokens_per_group=9))
    covered = dict(zip(chosen.indices[0][chosen.valid[0]].tolist(), chosen.scores[0][chosen.valid[0]].tolist()))
    assert covered == {9: 1.0, 10: 1.0, 17: 1.0, 18: 1.0, 11: 0.5, 19: 0.5, 25: 0.5, 26: 0.5}
    small = square("cup", 4, 4, 8, with_mask=False)  # covers 4 patches by a quarter each
    assert object_mask(small, 64, 64).sum() == 64
    chosen = select_by_overlap([small], [ObjectGroup.TARGET], (64, 64), (8, 8), TokenSelectionConfig())
    assert sorted(chosen.indices[0][chosen.valid[0]].tolist()) == [0, 1, 8, 9]


def test_no_detection_gives_no_valid_token() -> None:
    selected = select_by_overlap([], [], (64, 64), (8, 8), TokenSelectionConfig())
    assert selected.indices.shape == (3, 8) and not selected.valid.any()


def test_similarity_rule_takes_the_patches_closest_to_the_group_text() -> None:
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(49, 16)).astype(np.float32)
    text = rng.normal(size=16).astype(np.float32)
    patches[[3, 30]] = text * 2.0 + 0.01 * rng.normal(size=(2, 16))  # nearly the text direction
    config = TokenSelectionConfig(selection_rule=SelectionRule.CLIP, tokens_per_group=2)
    selected = select_by_similarity(patches, [text, None, None], config)
    assert sorted(selected.indices[0].tolist()) == [3, 30] and selected.valid[0].all()
    assert not selected.valid[1:].any()


def test_flat_layout_round_trips_with_empty_slots() -> None:
    from fedvla.iosp.types import SelectedTokens

    detections = [square("drawer", 8, 8, 16)]
    selected = select_by_overlap(detections, [ObjectGroup.TARGET], (64, 64), (8, 8), TokenSelectionConfig(tokens_per_group=6))
    flat = selected.flat_indices()
    assert flat.shape == (18,) and (flat[4:] == -1).all() and sorted(flat[:4].tolist()) == [9, 10, 17, 18]
    back = SelectedTokens.from_flat(flat, 6)
    assert (back.valid == selected.valid).all() and (back.indices[back.valid] == selected.indices[selected.valid]).all()
    with pytest.raises(ValueError, match="expected 3 x 6"):
        SelectedTokens.from_flat(flat[:-1], 6)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="selection_rule"):
        TokenSelectionConfig(selection_rule="magic")
    with pytest.raises(ConfigError, match="min_coverage"):
        TokenSelectionConfig(min_coverage=0.0)
