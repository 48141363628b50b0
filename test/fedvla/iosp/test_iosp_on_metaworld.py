"""IOSP on real rendered Meta-World frames: for each paper task, the instruction's object is in
the Target group, and the target tokens selected by the box/mask rule lie on its pixels."""
import numpy as np
import pytest

# Before anything imports mujoco: this module picks the headless GL backend (MUJOCO_GL).
from fedvla.sim.detector import SimSegmentationDetector
from fedvla.sim.metaworld_scene import make_metaworld_env
from fedvla.sim.collect import TASK_INSTRUCTIONS

from fedvla.iosp.parser import SceneParser, SceneParserConfig
from fedvla.iosp.tokens import patch_coverage
from fedvla.iosp.types import ObjectGroup

pytest.importorskip("metaworld")

SEED = 4  # every task's object is visible from both cameras in this layout (test_sim_detector)
# The study's instruction per task, and the object it names.
TASKS = {task: (TASK_INSTRUCTIONS[task], name) for task, name in (
    ("door-lock-v3", "door lock"), ("drawer-close-v3", "drawer"), ("sweep-into-v3", "puck"), ("window-open-v3", "window"))}


@pytest.fixture(scope="module", params=sorted(TASKS))
def scene(request):
    env = make_metaworld_env(request.param, SEED)
    detector = SimSegmentationDetector.for_env(env, 128, 128)
    yield request.param, detector
    detector.close()
    env.close()


@pytest.mark.parametrize("camera_name", ["corner", "topview"])
def test_target_group_holds_the_instructions_object_and_its_tokens_lie_on_it(scene, camera_name) -> None:
    task, detector = scene
    instruction, object_name = TASKS[task]
    camera = detector.camera(camera_name)
    image = detector.renderer.render(camera)
    parser = SceneParser(SceneParserConfig(patch_rows=16, patch_cols=16), {camera_name: lambda _: detector.detect(camera)})
    parse = parser.parse(camera_name, image, instruction)
    targets = [d for d, g in zip(parse.detections, parse.groups) if g is ObjectGroup.TARGET]
    assert object_name in {d.name for d in targets}, (parse.targets, [d.name for d in parse.detections])
    # Every static element is Background, every other object Surrounding.
    for d, g in zip(parse.detections, parse.groups):
        assert g is ObjectGroup.TARGET or g is (ObjectGroup.SURROUNDING if d.foreground else ObjectGroup.BACKGROUND)
    selected = parse.selection.indices[0][parse.selection.valid[0]]
    assert len(selected) >= 1
    # Overlap: the share of selected target patches that contain pixels of the target objects.
    union = np.zeros(image.shape[:2], dtype=bool)
    for d in targets:
        union |= d.mask
    on_object = patch_coverage(union, (16, 16))[selected] > 0
    assert on_object.mean() >= 0.8


@pytest.mark.parametrize("camera_name", ["corner", "topview"])
def test_the_located_target_lies_on_the_instructions_object_in_the_world(scene, camera_name) -> None:
    """Depth + mask + intrinsics, as the scene parser node uses them, put the target on the
    object's own geometry: the located point, taken back to the world with the MuJoCo camera's
    pose, is within the object's geoms (and projects back onto the located pixel)."""
    from fedvla.iosp.localize import TargetLocatorConfig, locate_target

    task, detector = scene
    instruction, object_name = TASKS[task]
    camera = detector.camera(camera_name)
    renderer = detector.renderer
    depth_mm = np.round(renderer.render(camera, depth=True) * 1000).astype(np.uint16)  # as the sim camera publishes
    parser = SceneParser(SceneParserConfig(), {camera_name: lambda _: detector.detect(camera)})
    parse = parser.parse(camera_name, renderer.render(camera), instruction)
    focal = camera.focal_px(renderer.height)
    k = np.array([[focal, 0, (renderer.width - 1) / 2], [0, focal, (renderer.height - 1) / 2], [0, 0, 1]])
    location = locate_target(parse, depth_mm, k, TargetLocatorConfig())
    assert location is not None and location.name == object_name
    # Optical frame (x right, y down, z ahead) → MuJoCo camera (x right, y up, looks along -z);
    # an upside-down camera's image is turned by 180 degrees about the optical axis.
    model, data = detector.model, renderer.data
    import mujoco

    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera.name)
    flip = np.diag([-1.0, 1.0, -1.0]) if camera.upside_down else np.diag([1.0, -1.0, -1.0])
    world = data.cam_xpos[cam_id] + data.cam_xmat[cam_id].reshape(3, 3) @ flip @ location.position
    pixel, depth = detector.project(world[None], camera)
    np.testing.assert_allclose(pixel[0], (k @ location.position)[:2] / location.position[2], atol=1e-6)
    assert depth[0] == pytest.approx(location.position[2])
    geoms = detector.object_named(object_name).geom_ids
    gaps = np.linalg.norm(data.geom_xpos[list(geoms)] - world, axis=1) - model.geom_rbound[list(geoms)]
    assert gaps.min() <= 0.01, (task, camera_name, world, gaps.min())
