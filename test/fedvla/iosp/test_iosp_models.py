"""The real-model IOSP path offline: YOLOv8 from yolov8n.yaml and open_clip with random weights run
end to end (shapes, dtypes) without any network access."""
import socket

import numpy as np
import pytest

from fedvla.config import ConfigError
from fedvla.iosp.tokens import SelectionRule, TokenSelectionConfig, select_by_similarity
from fedvla.iosp.types import Detection


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_yolov8_from_its_yaml_runs_offline(no_network) -> None:
    from fedvla.iosp.models import YoloDetector

    detector = YoloDetector("yolov8n.yaml", confidence=0.0001, image_size=320)
    assert len(detector.names) == 80  # the yaml's class count; names only come with trained weights
    named = YoloDetector("yolov8n.yaml", class_names=[f"object {i}" for i in range(80)])
    assert named.names[3] == "object 3"
    with pytest.raises(ConfigError, match="2 names for a model with 80 classes"):
        YoloDetector("yolov8n.yaml", class_names=["cup", "drawer"])
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    detections = detector.detect(image)
    assert isinstance(detections, list)
    for d in detections:
        assert isinstance(d, Detection) and d.name in detector.names.values()
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= 640 and 0 <= y0 <= y1 <= 480 and 0 <= d.score <= 1
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(image.astype(np.float32))


def test_yolo_weights_are_checked_before_loading() -> None:
    from fedvla.iosp.models import YoloDetector

    with pytest.raises(ConfigError, match="detector_weights: /nope/best.pt does not exist"):
        YoloDetector("/nope/best.pt")
    with pytest.raises(ConfigError, match="detector_weights: is empty"):
        YoloDetector("")


def test_open_clip_with_random_weights_gives_text_and_patch_embeddings_offline(no_network) -> None:
    from fedvla.iosp.models import ClipEncoder

    clip = ClipEncoder("ViT-B-32")
    text = clip.encode_text(["drawer", "puck", "drawer"])
    assert text.shape == (3, clip.embedding_dim) and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(text[0], text[2])  # cached per string
    patches, grid = clip.encode_patches(np.zeros((128, 128, 3), dtype=np.uint8))
    assert grid == (7, 7) and patches.shape == (49, clip.embedding_dim)
    selected = select_by_similarity(patches, [text[0], text[1], None],
                                    TokenSelectionConfig(selection_rule=SelectionRule.CLIP))
    assert selected.valid[:2].all() and not selected.valid[2].any() and selected.indices.max() < 49
    with pytest.raises(ConfigError, match="clip_checkpoint"):
        ClipEncoder("ViT-B-32", checkpoint="/nope/clip.bin")
