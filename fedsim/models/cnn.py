"""Small CNNs used across the FL literature, as :class:`FedsimNet` bodies."""

from __future__ import annotations

from torch import nn

from .base import FedsimNet


def niid_cnn(num_classes: int = 10, representation_dim: int = 0, in_channels: int = 3) -> FedsimNet:
    """NIID-Bench's "simple CNN": conv6-conv16-fc120-fc84 (Li et al., ICDE 2022), for 32x32 inputs."""
    body = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
    )
    return FedsimNet(body, 84, num_classes, representation_dim)


def lenet5(num_classes: int = 10, representation_dim: int = 0, in_channels: int = 3) -> FedsimNet:
    """LeNet-5 (LeCun et al. 1998) for 32x32 inputs: tanh-free modern variant with ReLU and max-pool.

    Layer widths follow the original (6, 16 feature maps; 120, 84 units). It differs from
    :func:`niid_cnn` only in that C5 is a 5x5 convolution rather than a linear layer.
    """
    body = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(),
    )
    return FedsimNet(body, 84, num_classes, representation_dim)


def pfl_cnn(num_classes: int = 10, representation_dim: int = 0, in_channels: int = 3) -> FedsimNet:
    """pfl-research's ``simple_cnn``: two 3x3 convs (32, 64), max-pool, dropout, dense 128."""
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 14 * 14, 128), nn.ReLU(), nn.Dropout(0.5),
    )
    return FedsimNet(body, 128, num_classes, representation_dim)
