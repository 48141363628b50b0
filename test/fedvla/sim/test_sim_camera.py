"""The simulated camera renders a real Meta-World scene through MuJoCo."""
import numpy as np
import pytest

from fedvla.camera import CameraBackend, CameraConfig, CameraError, make_camera

pytest.importorskip("metaworld")


def sim_config(**kw) -> CameraConfig:
    values = dict(backend=CameraBackend.SIM, width=96, height=64, fps=50.0, sim_task="drawer-close-v3",
                  sim_camera="topview", sim_seed=3)
    values.update(kw)
    return CameraConfig(**values)


@pytest.fixture(scope="module")
def topview_frames():
    with make_camera(sim_config()) as camera:
        return [camera.read() for _ in range(3)], camera.intrinsics


def test_frames_have_the_configured_shape_and_depth_in_range(topview_frames) -> None:
    frames, intrinsics = topview_frames
    frame = frames[0]
    assert frame.rgb.shape == (64, 96, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (64, 96) and frame.depth.dtype == np.uint16
    assert frame.rgb.std() > 10, "the image is blank"
    depth_m = frame.depth[frame.depth > 0] * frame.depth_scale_m
    # The top-view camera looks down on the table from about a metre away.
    assert 0.3 < np.median(depth_m) < 3.0
    assert [f.frame_number for f in frames] == [0, 1, 2]
    # Pinhole model from MuJoCo's vertical field of view (square pixels).
    assert intrinsics.fx == pytest.approx(intrinsics.fy)
    assert intrinsics.cx == pytest.approx(47.5) and intrinsics.cy == pytest.approx(31.5)


def test_same_seed_same_image_other_seed_other_layout() -> None:
    def first(seed: int) -> np.ndarray:
        with make_camera(sim_config(sim_seed=seed)) as camera:
            return camera.read().rgb

    a, b, c = first(3), first(3), first(4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).sum() > 0


def test_corner_cameras_are_turned_upright() -> None:
    from fedvla.sim.metaworld_scene import SceneRenderer, make_metaworld_env

    env = make_metaworld_env("door-lock-v3", seed=0)
    renderer = SceneRenderer(env.unwrapped.model, env.unwrapped.data, 32, 32)
    try:
        assert renderer.camera("corner").upside_down
        assert not renderer.camera("topview").upside_down
        corner = renderer.camera("corner")
        raw = renderer.render(type(corner)(corner.name, corner.fovy_deg, upside_down=False))
        np.testing.assert_array_equal(renderer.render(corner), raw[::-1, ::-1])
    finally:
        renderer.close()
        env.close()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("sim_task", "fly-to-moon-v3", "unknown Meta-World task 'fly-to-moon-v3'"),
    ("sim_camera", "nosuchcam", "the scene has no camera 'nosuchcam' (cameras: topview, corner"),
])
def test_unknown_task_or_camera_is_a_clear_error(field, value, message) -> None:
    camera = make_camera(sim_config(**{field: value}))
    with pytest.raises(CameraError) as err:
        camera.connect()
    assert message in str(err.value)


@pytest.mark.timeout(400)  # its subprocess may take 300 s; pytest.ini's 300 s would cut it short
def test_a_process_can_render_then_train() -> None:
    """Rendering loads Mesa's LLVM; building an optimizer afterwards imports triton's (torch's
    CUDA build): the scene renderer orders them so that the process survives."""
    from support.rendering import assert_trains_after_rendering

    assert_trains_after_rendering(
        "from fedvla.camera import CameraConfig, make_camera",
        "with make_camera(CameraConfig(backend='sim', width=32, height=32, fps=50, sim_camera='topview')) as c:\n"
        "    c.read()")


def test_segmentation_labels_every_pixel_like_the_oracle_detector() -> None:
    from fedvla.sim.detector import SimSegmentationDetector
    from fedvla.iosp.types import detections_from_labels
    from fedvla.sim.metaworld_scene import make_metaworld_env

    config = sim_config(sim_task="door-lock-v3", sim_camera="corner", width=128, height=128, sim_seed=4,
                        enable_segmentation=True)
    with make_camera(config) as camera:
        frame = camera.read()
        objects = camera.objects
    assert frame.labels.shape == (128, 128) and frame.labels.dtype == np.int32
    assert {"door lock", "door", "table"} <= {o.name for o in objects}
    # The same scene (task and seed) seen by the oracle detector gives the same objects and masks.
    env = make_metaworld_env("door-lock-v3", 4)
    with SimSegmentationDetector.for_env(env, 128, 128) as oracle:
        expected = oracle.detect(oracle.camera("corner"))
    env.close()
    found = detections_from_labels(frame.labels, objects)
    assert [(d.name, d.box) for d in found] == [(d.name, d.box) for d in expected]
    for mine, theirs in zip(found, expected):
        np.testing.assert_array_equal(mine.mask, theirs.mask)
    with make_camera(sim_config()) as plain:
        assert plain.read().labels is None and plain.objects == ()
