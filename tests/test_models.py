"""Model zoo: every model builds, maps 32x32 images to logits, and the representation layer works."""

from __future__ import annotations

import pytest
import torch

from fedsim.models import MODEL_NAMES, build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_and_representation(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    plain = build_model(name, num_classes=7)
    assert plain(x).shape == (4, 7)
    with_rep = build_model(name, num_classes=7, representation_dim=16)
    logits, rep = with_rep(x, return_representation=True)
    assert logits.shape == (4, 7) and rep.shape == (4, 16)
    assert with_rep.head.bias is None, "the head after the representation layer is bias-free"
    assert isinstance(with_rep.representation, torch.nn.Linear)
    assert with_rep.representation.out_features == 16
    # the head is a linear map of the representation: logits == rep @ W^T
    torch.testing.assert_close(logits, rep @ with_rep.head.weight.T)


def test_grayscale_input_and_errors() -> None:
    model = build_model("lenet5", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'vgg99'; allowed: niid_cnn"):
        build_model("vgg99", 10)
    with pytest.raises(ValueError, match="num_classes = 1"):
        build_model("lenet5", 1)


def test_resnet_sizes_follow_repdistiller() -> None:
    def params(name: str) -> int:
        return sum(p.numel() for p in build_model(name, 100).parameters())

    assert params("resnet8") < 0.1e6  # "a plain ResNet-8 (~0.08M parameters)"
    assert 1.1e6 < params("resnet8x4") < 1.4e6  # RepDistiller resnet8x4: 1.23M
    assert 7.0e6 < params("resnet32x4") < 7.8e6  # RepDistiller resnet32x4: 7.43M
