"""The target's 3-D position from a scene parse and the aligned depth image, checked against a
scene rendered from known geometry (a pinhole camera looking at a box in front of a wall)."""
import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.iosp.localize import TargetLocatorConfig, locate_target, primary_target, target_region
from fedvla.iosp.runtime import SceneParserRuntime, SceneParserRuntimeConfig
from fedvla.iosp.types import Detection, ObjectLabel

SIZE = 96
K = np.array([[110.0, 0.0, 47.5], [0.0, 110.0, 47.5], [0.0, 0.0, 1.0]])
WALL_M = 1.2
OBJECTS = (ObjectLabel("wall", False), ObjectLabel("drawer", True), ObjectLabel("puck", True))


def render(drawer_center=(0.08, -0.05, 0.6), drawer_half=0.06, puck_center=(-0.15, 0.1, 0.9), puck_half=0.02):
    """Depth (uint16 mm) and labels of two fronto-parallel squares in front of a wall, by ray casting
    through each pixel centre: the nearest surface a pixel's ray meets."""
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    ray_x, ray_y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    depth = np.full((SIZE, SIZE), WALL_M)
    labels = np.zeros((SIZE, SIZE), np.int32)
    for index, (center, half) in ((2, (puck_center, puck_half)), (1, (drawer_center, drawer_half))):
        cx, cy, z = center
        hit = (np.abs(ray_x * z - cx) <= half) & (np.abs(ray_y * z - cy) <= half) & (z < depth)
        depth[hit] = z
        labels[hit] = index
    return np.round(depth * 1000).astype(np.uint16), labels


def parse_of(labels, instruction="close the drawer"):
    runtime = SceneParserRuntime(SceneParserRuntimeConfig(cameras=("top",), tokens_per_group=4))
    runtime.set_objects("top", OBJECTS)
    return runtime.parse("top", np.zeros((SIZE, SIZE, 3), np.uint8), instruction, labels)


def visible_centroid(labels, depth_mm, index):
    """Independent expectation: mean of the object's back-projected pixels."""
    v, u = np.nonzero(labels == index)
    z = depth_mm[v, u] / 1000.0
    return np.array([np.mean((u - K[0, 2]) / K[0, 0] * z), np.mean((v - K[1, 2]) / K[1, 1] * z), np.mean(z)])


def test_a_masked_target_is_located_at_its_visible_surface() -> None:
    depth, labels = render()
    location = locate_target(parse_of(labels), depth, K, TargetLocatorConfig())
    assert location.name == "drawer" and location.pixels == np.count_nonzero(labels == 1)
    np.testing.assert_allclose(location.position, visible_centroid(labels, depth, 1), atol=1e-9)
    # ... which is where the drawer's face is (pixel quantisation: well under a centimetre).
    np.testing.assert_allclose(location.position, [0.08, -0.05, 0.6], atol=0.004)


def test_mask_edges_on_the_wall_behind_do_not_drag_the_position() -> None:
    depth, labels = render()
    parse = parse_of(labels)
    drawer = primary_target(parse)
    grown = drawer.mask.copy()
    for axis in (0, 1):  # a detector's mask 2 pixels too large on every side
        grown |= np.roll(drawer.mask, 2, axis) | np.roll(drawer.mask, -2, axis)
    drawer.mask = grown
    location = locate_target(parse, depth, K, TargetLocatorConfig())
    np.testing.assert_allclose(location.position, [0.08, -0.05, 0.6], atol=0.004)
    naive_z = np.mean(depth[grown] / 1000.0)
    assert naive_z - 0.6 > 0.05  # what a plain mean over the mask would have said


def test_a_box_without_mask_uses_its_core_and_ignores_background_in_its_corners() -> None:
    depth, labels = render(drawer_half=0.05)
    parse = parse_of(labels)
    drawer = primary_target(parse)
    x0, y0, x1, y1 = drawer.box
    drawer.box, drawer.mask = (x0 - 3, y0 - 3, x1 + 3, y1 + 3), None  # a loose detector box
    region = target_region(drawer, depth.shape, 0.5)
    assert region.sum() < (x1 - x0 + 6) * (y1 - y0 + 6) / 3
    location = locate_target(parse, depth, K, TargetLocatorConfig())
    np.testing.assert_allclose(location.position, [0.08, -0.05, 0.6], atol=0.01)


def test_the_instructions_first_detected_target_is_the_one_located() -> None:
    depth, labels = render()
    parse = parse_of(labels, "put the puck in the drawer")
    assert [t.name for t in parse.targets] == ["puck", "drawer"]
    location = locate_target(parse, depth, K, TargetLocatorConfig())
    assert location.name == "puck"
    np.testing.assert_allclose(location.position, [-0.15, 0.1, 0.9], atol=0.004)
    # Hidden puck: the drawer is the first target that is detected.
    depth, labels = render(puck_center=(0.08, -0.05, 0.9))  # behind the drawer
    assert locate_target(parse_of(labels, "put the puck in the drawer"), depth, K, TargetLocatorConfig()).name == "drawer"


def test_no_position_without_target_or_valid_depth() -> None:
    depth, labels = render()
    config = TargetLocatorConfig()
    assert locate_target(parse_of(labels, "wave hello"), depth, K, config) is None  # no target
    assert locate_target(parse_of(labels), np.zeros_like(depth), K, config) is None  # 0: no depth
    assert locate_target(parse_of(labels), depth, K, TargetLocatorConfig(max_depth_m=0.5)) is None  # out of range
    few = np.count_nonzero(labels == 1) + 1
    assert locate_target(parse_of(labels), depth, K, TargetLocatorConfig(min_depth_pixels=few)) is None
    with pytest.raises(ValueError, match="depth image must be"):
        locate_target(parse_of(labels), depth[None], K, config)
    with pytest.raises(ValueError, match="camera matrix"):
        locate_target(parse_of(labels), depth, np.zeros((3, 3)), config)


def test_metres_per_depth_unit_is_a_parameter() -> None:
    depth, labels = render()
    location = locate_target(parse_of(labels), depth // 2, K, TargetLocatorConfig(depth_scale_m=0.002))
    np.testing.assert_allclose(location.position, [0.08, -0.05, 0.6], atol=0.004)


@pytest.mark.parametrize(("values", "message"), [
    ({"depth_scale_m": 0.0}, "depth_scale_m: must be positive"),
    ({"min_depth_m": 1.0, "max_depth_m": 0.5}, "max_depth_m: 0.5 is not above min_depth_m 1.0"),
    ({"min_depth_pixels": 0}, "min_depth_pixels: must be at least 1"),
    ({"box_core_fraction": 1.5}, "box_core_fraction: 1.5 is outside"),
])
def test_bad_locator_parameters_are_named(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TargetLocatorConfig(**values)


def test_a_detection_without_mask_gets_its_box_core() -> None:
    detection = Detection(name="cup", box=(10.0, 20.0, 30.0, 60.0), mask=None)
    region = target_region(detection, (96, 96), 0.5)
    rows, cols = np.nonzero(region)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (30, 50, 15, 25)
