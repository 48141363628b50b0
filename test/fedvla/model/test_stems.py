"""The ResNet-18 image encoder loads only a ResNet-18 state dict: a wrong file is refused with
the keys that do not fit, a right one (with or without the ImageNet classifier) is loaded."""
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from safetensors.torch import save_file  # noqa: E402

from fedvla.config import ConfigError  # noqa: E402
from fedvla.model.stems import ResNet18Encoder  # noqa: E402


def test_a_resnet18_state_dict_is_loaded_without_its_classifier(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None).state_dict()
    backbone = {k: v for k, v in source.items() if not k.startswith("fc.")}
    save_file(backbone, tmp_path / "r18.safetensors")
    torch.save(source, tmp_path / "r18.pth")
    for path in (tmp_path / "r18.safetensors", tmp_path / "r18.pth"):
        encoder = ResNet18Encoder(16, str(path))
        torch.testing.assert_close(encoder.features[0].weight, source["conv1.weight"])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda sd: {k: v for k, v in sd.items() if k != "layer1.0.conv1.weight"}, "missing: layer1.0.conv1.weight (1)"),
    (lambda sd: {**sd, "head.weight": torch.zeros(2)}, "unexpected: head.weight (1)"),
    (lambda sd: {**sd, "conv1.weight": torch.zeros(8, 3, 7, 7)}, "wrong shape: conv1.weight (1)"),
    (lambda sd: {f"model.{k}": v for k, v in sd.items()}, "unexpected: model."),
])
def test_a_wrong_weights_file_is_refused_naming_the_keys(tmp_path, edit, message):
    weights = edit(torchvision.models.resnet18(weights=None).state_dict())
    torch.save(weights, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="image_encoder_weights") as err:
        ResNet18Encoder(16, str(tmp_path / "wrong.pth"))
    assert message in str(err.value) and "is not a ResNet-18 state dict" in str(err.value)


def test_an_unreadable_weights_file_is_a_config_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        ResNet18Encoder(16, str(tmp_path / "junk.pth"))
