"""Model cost factors: how much longer than LeNet-5 one training sample takes on the same device.

A device profile's ``seconds_per_sample`` is stated for a LeNet-5-sized model. A client that
trains another architecture takes ``seconds_per_sample * cost`` per sample, where ``cost`` is
the ratio of the model's floating-point operations for one 32x32 image to LeNet-5's (counted
by ``torch.utils.flop_counter`` on one forward pass; a training step costs about three forward
passes for every model alike, so the ratio holds for training). Computed once per architecture.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedsim.models import build_model

REFERENCE = "lenet5"


@lru_cache(maxsize=None)
def forward_flops(name: str, num_classes: int = 10, representation_dim: int = 0, channels: int = 3) -> int:
    """Floating-point operations of one forward pass of model ``name`` on one 32x32 image."""
    model = build_model(name, num_classes, representation_dim, channels).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, channels, 32, 32))
    return int(counter.get_total_flops())


def model_cost(name: str, num_classes: int = 10, representation_dim: int = 0, channels: int = 3) -> float:
    """``forward_flops(name) / forward_flops("lenet5")`` for the same classes and input."""
    return forward_flops(name, num_classes, representation_dim, channels) / forward_flops(
        REFERENCE, num_classes, 0, channels)
