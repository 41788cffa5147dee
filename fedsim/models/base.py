"""The shape every fedsim model shares: a feature body, an optional representation layer, a head.

``body(x)`` returns flat features of width ``feature_dim``. Without a representation layer
the head is ``Linear(feature_dim, C)``. With ``representation_dim = r > 0`` (``docs/methods.md``)
the model becomes ``body -> Linear(feature_dim, r)`` (no activation) ``-> Linear(r, C,
bias=False)``; ``forward(x, return_representation=True)`` then returns ``(logits, rep)``.
Models of different architectures with the same ``r`` can therefore be compared or distilled
in the same latent space.
"""

from __future__ import annotations

import torch
from torch import nn


class FedsimNet(nn.Module):
    """A body producing flat features plus a classification head."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, representation_dim: int = 0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes = {num_classes}: need at least 2 classes")
        if representation_dim < 0:
            raise ValueError(f"representation_dim = {representation_dim}: must be >= 0")
        self.body = body
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.representation_dim = representation_dim
        if representation_dim:
            self.representation: nn.Module = nn.Linear(feature_dim, representation_dim)
            self.head = nn.Linear(representation_dim, num_classes, bias=False)
        else:
            self.representation = nn.Identity()
            self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, return_representation: bool = False):
        rep = self.representation(self.body(x))
        logits = self.head(rep)
        return (logits, rep) if return_representation else logits
