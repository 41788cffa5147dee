"""Model zoo: build a :class:`FedsimNet` by name (``fedsim.models.build_model``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .base import FedsimNet
from .cnn import lenet5, niid_cnn, pfl_cnn
from .mobilenet import mobilenet_v2
from .resnet import cifar_resnet

MODEL_BUILDERS: dict[str, Callable[..., FedsimNet]] = {
    "niid_cnn": niid_cnn,
    "pfl_cnn": pfl_cnn,
    "lenet5": lenet5,
    "resnet8": partial(cifar_resnet, 8, False),
    "resnet20": partial(cifar_resnet, 20, False),
    "resnet32": partial(cifar_resnet, 32, False),
    "resnet8x4": partial(cifar_resnet, 8, True),
    "resnet20x4": partial(cifar_resnet, 20, True),
    "resnet32x4": partial(cifar_resnet, 32, True),
    "mobilenet_v2": mobilenet_v2,
}
MODEL_NAMES = tuple(MODEL_BUILDERS)


def build_model(name: str, num_classes: int, representation_dim: int = 0, in_channels: int = 3) -> FedsimNet:
    """Construct model ``name`` for ``num_classes`` classes (32x32 inputs)."""
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    return MODEL_BUILDERS[name](num_classes=num_classes, representation_dim=representation_dim,
                                in_channels=in_channels)


def parse_architecture(entry: str) -> tuple[str, int | None]:
    """``"name"`` or ``"name@r"`` (an architecture with representation width r) -> (name, r or None)."""
    name, _, width = entry.partition("@")
    if width and not width.isdigit():
        raise ValueError(f"architecture {entry!r}: write name or name@r with an integer r")
    return name, int(width) if width else None


__all__ = ["FedsimNet", "MODEL_BUILDERS", "MODEL_NAMES", "build_model", "parse_architecture"]
