"""The simulator's oracle detector names, masks and boxes the objects of real Meta-World scenes."""
import numpy as np
import pytest

# Before anything imports mujoco: this module picks the headless GL backend (MUJOCO_GL).
from fedvla.sim.detector import (
    COMMON_RULES, NamingRule, SceneNaming, SimSegmentationDetector, name_element, scene_naming, scene_objects,
)
from fedvla.sim.metaworld_scene import CameraModel, PAPER_TASKS, SceneError, make_metaworld_env

pytest.importorskip("metaworld")

SIZE = 128
SEED = 4  # a layout where every task's object is visible from both cameras (the puck hides under
          # the arm from the top view in some seeds)
CAMERAS = ("corner", "topview")  # corner renders upside down and is turned, topview is not

# The task's main object, and the range of its pixel count at 128×128 from these cameras: a few
# dozen for the 10 cm lock lever and the 4 cm puck, hundreds for the drawer and the window sash.
MAIN_OBJECT = {
    "door-lock-v3": ("lock", "door lock", (8, 200)),
    "drawer-close-v3": ("drawer", "drawer", (150, 1000)),
    "sweep-into-v3": ("puck", "puck", (6, 120)),
    "window-open-v3": ("window", "window", (80, 1000)),
}


@pytest.fixture(scope="module", params=PAPER_TASKS)
def scene(request):
    task = request.param
    env = make_metaworld_env(task, seed=SEED)
    detector = SimSegmentationDetector.for_env(env, SIZE, SIZE)
    yield task, detector
    detector.close()
    env.close()


def detections_by_name(detector: SimSegmentationDetector, camera_name: str) -> dict:
    detections = detector.detect(detector.camera(camera_name))
    by_name = {d.name: d for d in detections}
    assert len(by_name) == len(detections), "one detection per object"
    return by_name


@pytest.mark.parametrize("camera_name", CAMERAS)
def test_the_task_object_is_detected_with_its_mask_inside_its_box(scene, camera_name) -> None:
    task, detector = scene
    word, name, (fewest, most) = MAIN_OBJECT[task]
    found = detections_by_name(detector, camera_name)
    assert name in found and word in name, f"{task}: {sorted(found)}"
    detection = found[name]
    assert detection.mask.shape == (SIZE, SIZE) and detection.mask.dtype == bool
    assert fewest <= detection.mask.sum() <= most
    assert detection.score == 1.0 and detection.foreground

    # The box is the mask's extent: nothing outside, every edge row and column touched.
    x0, y0, x1, y1 = (int(v) for v in detection.box)
    assert (x0, y0, x1, y1) == detection.box
    inside = np.zeros_like(detection.mask)
    inside[y0:y1, x0:x1] = True
    assert not np.any(detection.mask & ~inside)
    assert detection.mask[y0].any() and detection.mask[y1 - 1].any()
    assert detection.mask[:, x0].any() and detection.mask[:, x1 - 1].any()

    # And it is where the object is: its visible geoms' centres project into the box.
    scene_object = detector.object_named(name)
    visible = [g for g in scene_object.geom_ids if detector.model.geom_group[g] < 3]
    pixels, depth = detector.project(detector.renderer.data.geom_xpos[visible], detector.camera(camera_name))
    col, row = pixels.mean(axis=0)
    assert np.all(depth > 0) and x0 - 1 <= col <= x1 + 1 and y0 - 1 <= row <= y1 + 1


@pytest.mark.parametrize("camera_name", CAMERAS)
def test_the_segmentation_is_aligned_with_the_rgb_image(scene, camera_name) -> None:
    """Hiding the object's geoms changes exactly the RGB pixels its mask claims (the corner
    camera's image and segmentation are both turned the right way up)."""
    task, detector = scene
    name = MAIN_OBJECT[task][1]
    camera = detector.camera(camera_name)
    mask = detections_by_name(detector, camera_name)[name].mask
    geoms = list(detector.object_named(name).geom_ids)
    model = detector.model
    before = detector.renderer.render(camera)
    saved = model.geom_group[geoms].copy()
    model.geom_group[geoms] = 5  # the renderer draws groups 0–2 only
    try:
        after = detector.renderer.render(camera)
    finally:
        model.geom_group[geoms] = saved
    changed = np.any(before != after, axis=2)
    assert not np.any(changed & ~mask), "pixels outside the mask changed"
    # Pixels where the object's sites are drawn, or where the revealed surface looks the same,
    # stay unchanged.
    assert changed.sum() >= 0.85 * mask.sum()


def test_the_upside_down_camera_turns_the_segmentation_like_the_rgb_image(scene) -> None:
    _, detector = scene
    corner = detector.camera("corner")
    assert corner.upside_down
    raw_camera = CameraModel(corner.name, corner.fovy_deg, upside_down=False)
    turned = detector.renderer.render(corner, segmentation=True)
    raw = detector.renderer.render(raw_camera, segmentation=True)
    assert turned.shape == (SIZE, SIZE, 2) and turned.dtype == np.int32
    np.testing.assert_array_equal(turned, raw[::-1, ::-1])
    np.testing.assert_array_equal(detector.renderer.render(corner), detector.renderer.render(raw_camera)[::-1, ::-1])


@pytest.mark.parametrize("camera_name", CAMERAS)
def test_static_scene_is_background_and_the_robot_foreground(scene, camera_name) -> None:
    task, detector = scene
    found = detections_by_name(detector, camera_name)
    for static in ("table", "floor", "robot base"):
        assert static in found and not found[static].foreground, static
    assert found["robot arm"].foreground
    assert found["table"].mask.sum() > 0.15 * SIZE * SIZE, "the table fills much of every view"
    if "gripper" in found:
        assert found["gripper"].foreground


@pytest.mark.parametrize("camera_name", CAMERAS)
def test_detections_partition_the_labelled_pixels(scene, camera_name) -> None:
    _, detector = scene
    camera = detector.camera(camera_name)
    labels = detector.label_image(detector.renderer.render(camera, segmentation=True), camera)
    detections = detector.detections_from_labels(labels)
    union = np.zeros((SIZE, SIZE), dtype=int)
    for detection in detections:
        union += detection.mask
        assert detector.objects[detection.track_id].name == detection.name
    assert union.max() == 1, "an object's pixels belong to no other object"
    # Everything drawn is labelled; what is left is sky and specks of objects below min_pixels.
    assert union.sum() >= 0.95 * (labels >= 0).sum()


def test_min_pixels_drops_small_objects(scene) -> None:
    task, detector = scene
    name = MAIN_OBJECT[task][1]
    camera = detector.camera("corner")
    pixels = int(detections_by_name(detector, "corner")[name].mask.sum())
    strict = SimSegmentationDetector(detector.model, detector.renderer, task=task, min_pixels=pixels + 1)
    assert name not in {d.name for d in strict.detect(camera)}
    with pytest.raises(ValueError, match="min_pixels"):
        SimSegmentationDetector(detector.model, detector.renderer, task=task, min_pixels=0)


def test_the_hole_is_what_shows_through_the_tables_opening() -> None:
    import mujoco

    env = make_metaworld_env("sweep-into-v3", seed=SEED)
    with SimSegmentationDetector.for_env(env, SIZE, SIZE) as detector:
        data, model = detector.renderer.data, detector.model
        # The plate under the table top, 1.4 m × 0.8 m × 3 cm (Meta-World's basic_scene_b.xml).
        [plate_geom] = np.flatnonzero(np.all(np.isclose(model.geom_size, [0.7, 0.4, 0.015]), axis=1)
                                      & (model.geom_group < 3))
        goal = data.site_xpos[[model.site("goal").id]]
        for camera_name in ("corner", "topview", "corner2"):
            camera = detector.camera(camera_name)
            found = detections_by_name(detector, camera_name)
            hole = found["hole"]
            assert not hole.foreground and 20 <= hole.mask.sum() <= 600, camera_name
            [(col, row)], _ = detector.project(goal, camera)
            assert hole.mask[int(round(row)), int(round(col))], "Meta-World's goal site sits in the hole"
            assert not np.any(hole.mask & found["puck"].mask)
            # The lower table plate also shows along the table's side from the corner cameras:
            # those pixels stay "table", far from the hole.
            segmentation = detector.renderer.render(camera, segmentation=True)
            plate = (segmentation[..., 1] == mujoco.mjtObj.mjOBJ_GEOM.value) & (segmentation[..., 0] == plate_geom)
            plate_outside = plate & ~hole.mask
            if camera_name != "topview":
                assert plate_outside.any() and found["table"].mask[plate_outside].all()
    env.close()


def test_for_env_reads_the_task_from_the_env(scene) -> None:
    task, detector = scene
    assert detector.task == task
    names = {o.name for o in detector.objects}
    assert {"table", "floor", "robot arm", "gripper", "robot base", MAIN_OBJECT[task][1]} <= names


def test_an_unknown_task_is_a_clear_error(scene) -> None:
    _, detector = scene
    with pytest.raises(SceneError, match="unknown Meta-World task 'door-lock-v9'"):
        SimSegmentationDetector(detector.model, detector.renderer, task="door-lock-v9")


# ---- naming rules, without rendering ----------------------------------------------------------

def test_the_element_then_the_nearest_named_ancestor_decides() -> None:
    window = scene_naming("window-open-v3").rules
    assert name_element("floor", [], window) == ("floor", False)
    # An unnamed geom of an unnamed body inherits from the first named ancestor.
    assert name_element(None, [None, "window"], window) == ("window frame", True)
    assert name_element(None, ["windowb_a", None, "window"], window) == ("window", True)
    assert name_element("handleOpenStart", ["windowb_a", None, "window"], window) == ("window", True)
    assert name_element("rightpad_geom", ["rightpad", "rightclaw", "hand", "right_hand", "right_l6"],
                        window) == ("gripper", True)
    assert name_element(None, ["head", "right_l0", "right_arm_base_link", "base"], window) == ("robot arm", True)
    assert name_element(None, ["right_arm_base_link", "base"], window) == ("robot base", False)
    assert name_element(None, ["mocap"], window)[0] is None


def test_task_rules_come_before_common_ones() -> None:
    assert name_element("goal", [], scene_naming("sweep-into-v3").rules) == ("hole", False)
    assert name_element("goal", [], scene_naming("drawer-close-v3").rules) == ("goal marker", False)
    # "obj" is the puck only in sweep-into; elsewhere it is whatever Meta-World put there.
    assert name_element("objGeom", ["obj"], scene_naming("sweep-into-v3").rules) == ("puck", True)
    assert name_element("objGeom", ["obj"], scene_naming("pick-place-v3").rules) == ("obj", True)


def test_unnamed_elements_fall_back_to_readable_body_names() -> None:
    assert name_element(None, ["peg_link", "peg_box"], COMMON_RULES) == ("peg", True)
    assert name_element(None, [None, "coffee_machine"], COMMON_RULES) == ("coffee machine", True)
    assert name_element("light_pole", [], COMMON_RULES) == ("light pole", False)  # on the world: static
    assert name_element(None, [], COMMON_RULES) == (None, False)


def test_scene_objects_merge_the_geoms_and_sites_of_one_object() -> None:
    import mujoco

    model = mujoco.MjModel.from_xml_string("""
    <mujoco><worldbody>
      <geom name="floor" type="plane" size="1 1 .1"/>
      <body name="tablelink"><geom type="box" size=".5 .5 .02"/><geom type="box" size=".1 .1 .3"/></body>
      <body name="drawer"><body><body name="drawer_link">
        <geom type="box" size=".1 .1 .1"/><geom name="objGeom" type="box" size=".01 .01 .01"/>
        <site name="handle" size=".01"/></body></body>
        <body name="drawercase_link"><geom type="box" size=".2 .2 .2"/></body></body>
      <site name="goal" size=".02"/>
    </worldbody></mujoco>""")
    objects, element_object = scene_objects(model, scene_naming("drawer-close-v3"))
    by_name = {o.name: o for o in objects}
    assert sorted(by_name) == ["drawer", "drawer case", "floor", "goal marker", "table"]
    # The handle's geom (named) and site join its body's object; unnamed geoms and bodies inherit.
    assert by_name["drawer"].geom_ids == (3, model.geom("objGeom").id) == (3, 4)
    assert by_name["drawer"].site_ids == (model.site("handle").id,)
    assert by_name["table"].geom_ids == (1, 2) and not by_name["table"].foreground
    assert element_object[model.ngeom + model.site("goal").id] == objects.index(by_name["goal marker"])
    assert element_object[-1] == -1  # what is neither a geom nor a site

    conflicting = SceneNaming((NamingRule("floor", "floor", foreground=False), NamingRule("tablelink", "floor")))
    with pytest.raises(SceneError, match="'floor' both foreground and background"):
        scene_objects(model, conflicting)
