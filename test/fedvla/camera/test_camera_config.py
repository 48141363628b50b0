"""Invalid camera settings fail at construction with one line naming field and allowed values."""
import pytest

from fedvla.camera import CameraBackend, CameraConfig
from fedvla.config import ConfigError, from_mapping


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "kinect"}, "backend: unknown value 'kinect' (allowed: realsense, realsense_bag, sim)"),
        ({"fps": -5.0}, "fps: must be positive, got -5.0 (allowed: a number > 0)"),
        ({"width": 0}, "width: must be a positive integer, got 0 (allowed: an integer > 0)"),
        ({"backend": "realsense_bag", "bag_path": "/no/such/file.bag"},
         "bag_path: file '/no/such/file.bag' does not exist (allowed: path of an existing .bag or .db3 RealSense recording)"),
        ({"backend": "realsense_bag", "bag_path": ""},
         "bag_path: is empty but backend is realsense_bag (allowed: path of an existing .bag or .db3 RealSense recording)"),
        ({"fps_hz": 3}, "fps_hz: unknown setting"),
        ({"backend": "realsense", "enable_segmentation": True},
         "enable_segmentation: the realsense backend cannot label objects (allowed: true only with backend sim)"),
    ],
)
def test_invalid_settings_are_one_clear_line(values, message) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(CameraConfig, values)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bag_path_must_be_a_realsense_recording(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ConfigError, match="bag_path: .* is not a RealSense recording .allowed: a .bag or .db3 file"):
        CameraConfig(backend=CameraBackend.REALSENSE_BAG, bag_path=str(text))


def test_valid_recording_path_is_accepted(tmp_path) -> None:
    bag = tmp_path / "rec.db3"
    bag.write_bytes(b"")
    cfg = from_mapping(CameraConfig, {"backend": "realsense_bag", "bag_path": str(bag), "fps": 15})
    assert cfg.backend is CameraBackend.REALSENSE_BAG and cfg.fps == 15.0
