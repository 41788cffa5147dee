"""``augment``: one new copy per target sample (Singh and Toshniwal) or online batch augmentation
(Jun and Shin); see ``docs/methods.md``.

Transforms (torchvision ``transforms.v2`` on uint8 image tensors):

* ``affine`` -- ``RandomAffine(degrees=45, translate=(0.2, 0.2))``: rotation U(-45, 45) degrees,
  shift U(-0.2, 0.2) x width/height (Singh and Toshniwal's Keras ``rotation_range=45``,
  ``*_shift_range=0.2``; torch fills the border with 0 rather than Keras' ``nearest``);
* ``flip_crop`` -- ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` (Jun and Shin);
* ``randaugment`` -- ``RandAugment(num_ops=N, magnitude=M)`` (Jun and Shin; N = 2, M = 14 for
  WRN-style CIFAR settings, fedsim's reading of "the best values for WideResNet"), optionally after flip + crop.

``mode = "copies"`` appends one augmented copy of every target sample to the local data before
training; targets: ``all``, ``crucial`` / ``selected`` (the masks of earlier hooks), or
``random`` (uniformly drawn samples, as many as ``random_like`` = ``crucial`` or ``selected``
marks, Singh and Toshniwal's baseline). ``mode = "online"`` transforms every training mini-batch instead.
Each sample gets its own random parameters; all randomness comes from (seed, round, client).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from .base import Hook, HookContext, LocalData, require
from ..training import seed_torch

TRANSFORMS = ("affine", "flip_crop", "randaugment", "flip_crop_randaugment")
TARGETS = ("all", "crucial", "selected", "random")


def build_transform(name: str, num_ops: int = 2, magnitude: int = 14, size: int = 32) -> v2.Transform:
    if name == "affine":
        return v2.RandomAffine(degrees=45, translate=(0.2, 0.2))
    if name == "flip_crop":
        return v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])
    if name == "randaugment":
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if name == "flip_crop_randaugment":
        return v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip(),
                           v2.RandAugment(num_ops=num_ops, magnitude=magnitude)])
    raise ValueError(f"unknown transform {name!r}; allowed: {', '.join(TRANSFORMS)}")


def augment_each(images: torch.Tensor, transform: v2.Transform, generator: torch.Generator) -> torch.Tensor:
    """Apply ``transform`` to every image separately (own random parameters), deterministically."""
    if not len(images):
        return images
    state = torch.random.get_rng_state()
    seed_torch(int(torch.randint(0, 2**62, (1,), generator=generator)), images.device)
    try:
        return torch.stack([transform(img) for img in images])
    finally:
        torch.random.set_rng_state(state)


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
        self._batches = 0

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
        copies = augment_each(data.images[idx], self.transform, ctx.generator(0xA2))
        ctx.stats[self.name] = {"copies": float(len(targets)), "fraction_augmented": float(len(targets) / max(len(data), 1))}
        return data.append(copies, data.labels[idx], source="augmented")

    def transform_batch(self, xb: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        if self.mode != "online":
            return xb
        return augment_each(xb, self.transform, self._generator)
