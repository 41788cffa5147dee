"""CIFAR ResNets (He et al. 2016, section 4.2) in RepDistiller's naming: resnet8/20/32 and x4 widths.

``resnet{depth}`` has 3 stages of (depth - 2) / 6 basic blocks with widths 16-32-64;
``resnet{depth}x4`` uses widths 64-128-256 after a 32-channel stem, as RepDistiller's
``resnet8x4``/``resnet32x4`` (the models that match Jun and Shin's numbers; ``docs/methods.md``).
"""

from __future__ import annotations

from torch import nn

from .base import FedsimNet


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _resnet_body(depth: int, widths: tuple[int, int, int, int], in_channels: int) -> nn.Sequential:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth {depth}: must be 6n + 2")
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    in_planes = widths[0]
    for stage, planes in enumerate(widths[1:]):
        for b in range(blocks):
            layers.append(BasicBlock(in_planes, planes, stride=2 if (stage > 0 and b == 0) else 1))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def cifar_resnet(depth: int, wide: bool, num_classes: int, representation_dim: int = 0,
                 in_channels: int = 3) -> FedsimNet:
    widths = (32, 64, 128, 256) if wide else (16, 16, 32, 64)
    return FedsimNet(_resnet_body(depth, widths, in_channels), widths[-1], num_classes, representation_dim)
