"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The CIFAR adaptation keeps the inverted-residual configuration but uses stride 1 in the
stem and in the second stage, so a 32x32 image ends as a 4x4 map instead of 1x1.
"""

from __future__ import annotations

from torch import nn

from .base import FedsimNet

# (expansion t, output channels c, repeats n, first stride s)
CIFAR_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.block = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


def mobilenet_v2(num_classes: int = 10, representation_dim: int = 0, in_channels: int = 3) -> FedsimNet:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                               nn.ReLU6(inplace=True)]
    in_planes = 32
    for expansion, out_planes, repeats, stride in CIFAR_CONFIG:
        for i in range(repeats):
            layers.append(InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1))
            in_planes = out_planes
    layers += [nn.Conv2d(in_planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return FedsimNet(nn.Sequential(*layers), 1280, num_classes, representation_dim)
