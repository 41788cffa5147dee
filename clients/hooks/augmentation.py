"""``augment``: one new copy per target sample (Singh and Toshniwal) or online batch augmentation
(Jun and Shin); see ``docs/methods.md``.

Transforms (torchvision ``transforms.v2``'s distributions, applied batched by
:mod:`fedsim.clients.hooks.transforms` on uint8 image tensors):

* ``affine`` -- ``RandomAffine(degrees=45, translate=(0.2, 0.2))``: rotation U(-45, 45) degrees,
  shift U(-0.2, 0.2) x width/height (Singh and Toshniwal's Keras ``rotation_range=45``,
  ``*_shift_range=0.2``; torch fills the border with 0 rather than Keras' ``nearest``);
* ``flip_crop`` -- ``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip`` (Jun and Shin),
  cropped back to the input's size;
* ``randaugment`` -- ``RandAugment(num_ops=N, magnitude=M)`` (Jun and Shin; N = 2, M = 14 for
  WRN-style CIFAR settings, fedsim's reading of "the best values for WideResNet"), optionally after flip + crop.

``mode = "copies"`` appends one augmented copy of every target sample to the local data before
training; targets: ``all``, ``crucial`` / ``selected`` (the masks of earlier hooks), or
``random`` (uniformly drawn samples, as many as ``random_like`` = ``crucial`` or ``selected``
marks, Singh and Toshniwal's baseline). ``mode = "online"`` transforms every training mini-batch instead.
Each sample gets its own random parameters, drawn as tensors from the client's generator (seeded
by (seed, round, client)) and applied to the whole batch at once; torch's global generator is
not touched. Online, the hook describes its stage as a :class:`SeededTransform`, so the
vectorized engine augments a step's batches of all clients in one call.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Hook, HookContext, LocalData, require
from .transforms import Affine, BatchTransform, FlipCrop, RandAugment, SeededTransform, Sequence

TRANSFORMS = ("affine", "flip_crop", "randaugment", "flip_crop_randaugment")
TARGETS = ("all", "crucial", "selected", "random")


def build_transform(name: str, num_ops: int = 2, magnitude: int = 14) -> BatchTransform:
    """The batched transform called ``name`` (one of :data:`TRANSFORMS`)."""
    if name == "affine":
        return Affine(degrees=45, translate=(0.2, 0.2))
    if name == "flip_crop":
        return FlipCrop(padding=4)
    if name == "randaugment":
        return RandAugment(num_ops=num_ops, magnitude=magnitude)
    if name == "flip_crop_randaugment":
        return Sequence(FlipCrop(padding=4), RandAugment(num_ops=num_ops, magnitude=magnitude))
    raise ValueError(f"unknown transform {name!r}; allowed: {', '.join(TRANSFORMS)}")


class AugmentHook(Hook):
    """Augmented copies of target samples, or online augmentation of every batch."""

    name = "augment"

    def __init__(self, transform: str = "affine", target: str = "all", mode: str = "copies",
                 random_like: str = "crucial", num_ops: int = 2, magnitude: int = 14) -> None:
        require(transform in TRANSFORMS, self.name, "transform", transform, f"allowed: {', '.join(TRANSFORMS)}")
        require(target in TARGETS, self.name, "target", target, f"allowed: {', '.join(TARGETS)}")
        require(mode in ("copies", "online"), self.name, "mode", mode, "allowed: copies, online")
        require(random_like in ("crucial", "selected"), self.name, "random_like", random_like,
                "allowed: crucial, selected")
        require(mode == "copies" or target == "all", self.name, "target", target,
                "online augmentation transforms every batch: use target = 'all'")
        require(isinstance(num_ops, int) and num_ops >= 1, self.name, "num_ops", num_ops, "must be >= 1")
        require(isinstance(magnitude, int) and 0 <= magnitude <= 30, self.name, "magnitude", magnitude,
                "must be an integer in 0..30 (torchvision's 31 bins)")
        self.transform_name, self.target, self.mode, self.random_like = transform, target, mode, random_like
        if target in ("crucial", "selected"):  # the hooks whose masks this one reads (checked by build_hooks)
            self.needs = ("crucial" if target == "crucial" else "select",)
        elif target == "random":
            self.needs = ("crucial" if random_like == "crucial" else "select",)
        self.transform = build_transform(transform, num_ops, magnitude)

    def _targets(self, data: LocalData, ctx: HookContext) -> np.ndarray:
        if self.target == "all":
            return np.arange(len(data))
        if self.target in ("crucial", "selected"):
            key = "crucial" if self.target == "crucial" else "select"
            if key not in data.masks:
                raise RuntimeError(f"hook 'augment': target = {self.target!r} needs the {key!r} hook listed before it")
            return np.nonzero(data.masks[key])[0]
        key = "crucial" if self.random_like == "crucial" else "select"
        if key not in data.masks:
            raise RuntimeError(f"hook 'augment': target = 'random' with random_like = {self.random_like!r} "
                               f"needs the {key!r} hook listed before it")
        count = int(data.masks[key].sum())
        return np.sort(ctx.rng(0xA1).choice(len(data), size=count, replace=False))

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        if self.mode == "online":
            ctx.stats[self.name] = {"online": 1.0}
            self._generator = ctx.generator(0xA3)
            return data
        targets = self._targets(data, ctx)
        idx = torch.as_tensor(targets, device=data.images.device, dtype=torch.long)
        copies = self.transform(data.images[idx], ctx.generator(0xA2))
        ctx.stats[self.name] = {"copies": float(len(targets)), "fraction_augmented": float(len(targets) / max(len(data), 1))}
        return data.append(copies, data.labels[idx], source="augmented")

    def has_stage(self, stage: str) -> bool:
        if stage == "transform_batch":  # copies are made in prepare: batches pass unchanged
            return self.mode == "online"
        return super().has_stage(stage)

    def transform_batch(self, xb: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        if self.mode != "online":
            return xb
        return self.transform(xb, self._generator)

    def seeded_transform(self, ctx: HookContext) -> SeededTransform | None:
        if self.mode != "online":
            return None
        return SeededTransform(self.transform, self._generator)
