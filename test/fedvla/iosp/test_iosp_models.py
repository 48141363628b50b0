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
    detections = detector.detect(image)  # random weights: whatever comes out is well formed
    for d in detections:
        assert isinstance(d, Detection) and d.name in detector.names.values()
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= 640 and 0 <= y0 <= y1 <= 480 and 0 <= d.score <= 1
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(image.astype(np.float32))


def _plant(detector, planted: list[tuple[tuple[float, float, float, float], int, float]]) -> None:
    """Replace the detection head's decoded output by ``planted`` (box xywh in input pixels, class,
    probability) and nothing else, so that what ``detect`` returns is known exactly."""
    import torch

    # The predictor runs its own (fused) copy of the model, built on the first detect().
    head = next(m for m in detector.model.predictor.model.model.modules() if type(m).__name__ == "Detect")

    def hook(module, inputs, output):
        decoded, raw = output
        y = torch.zeros_like(decoded)
        for anchor, (box, cls, probability) in enumerate(planted):
            y[:, :4, anchor] = torch.tensor(box)
            y[:, 4 + cls, anchor] = probability
        return y, raw

    head.register_forward_hook(hook)


def test_yolo_detections_map_classes_and_boxes_and_honour_the_confidence(no_network) -> None:
    """Two planted detections (the head's output replaced): the class index maps to its name, the box
    comes back in image pixels, and only the one above ``confidence`` is returned."""
    from fedvla.iosp.models import YoloDetector

    names = [f"object {i}" for i in range(80)]
    image = np.zeros((320, 320, 3), dtype=np.uint8)  # the input size: no letterbox scaling
    strict = YoloDetector("yolov8n.yaml", class_names=names, confidence=0.5, image_size=320,
                          background_classes={"object 7"})
    loose = YoloDetector("yolov8n.yaml", class_names=names, confidence=0.1, image_size=320,
                         background_classes={"object 7"})
    for detector in (strict, loose):
        detector.detect(image)  # builds the predictor
        _plant(detector, [((160.0, 100.0, 64.0, 32.0), 3, 0.9), ((60.0, 250.0, 40.0, 20.0), 7, 0.3)])

    (only,) = strict.detect(image)
    assert only.name == "object 3" and only.foreground and only.mask is None
    np.testing.assert_allclose(only.box, (128.0, 84.0, 192.0, 116.0), atol=0.5)
    assert only.score == pytest.approx(0.9, abs=1e-3)
    both = sorted(loose.detect(image), key=lambda d: -d.score)
    assert [d.name for d in both] == ["object 3", "object 7"]
    assert not both[1].foreground  # a background class by configuration
    np.testing.assert_allclose(both[1].box, (40.0, 240.0, 80.0, 260.0), atol=0.5)
    assert both[1].score == pytest.approx(0.3, abs=1e-3)


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
