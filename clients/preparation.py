"""How a client with hooks turns its uint8 training batches into model inputs.

A client with hooks keeps its local data as uint8 images and prepares every mini-batch: its hooks'
``transform_batch`` stages (online augmentation), then normalisation to float
(:func:`fedsim.clients.training.normalize`). When every ``transform_batch`` stage of its hooks is
a seeded transform (the built-in ``augment`` hook's online mode;
:meth:`fedsim.clients.hooks.base.Hook.seeded_transform`), the preparation is a
:class:`BatchPreparation` with two parts:

* :meth:`BatchPreparation.draw`: the random parameters of a batch's samples, from the client's own
  generators, in the order and amounts the client's own call draws them;
* :meth:`BatchPreparation.apply`: the transforms with those parameters, then normalisation; sample
  by sample, so it can take several clients' batches at once.

The sequential engine calls it per batch (draw, then apply); the vectorized engine draws every
member's parameters and applies them once to a step's batches of all members
(:mod:`fedsim.clients.lockstep.batches`), which gives every sample the same bits. A user hook with
its own ``transform_batch`` makes the preparation a plain per-client function, called per client
and step by both engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hooks import Hook, HookContext
from .hooks.transforms import Params, SeededTransform, concat_params
from .training import normalize

PrepareBatch = Callable[[torch.Tensor], torch.Tensor]
"""uint8 (N, C, H, W) batch -> the model's float inputs."""

Draw = list[Params]
"""A batch's parameters for each transform of a :class:`BatchPreparation`, in its order."""


@dataclass(frozen=True, eq=False)
class BatchPreparation:
    """A client's batch preparation split into random draws and their per-sample application.

    ``transforms``: the hooks' seeded transforms, in hook order (each with the client's
    generator); ``mean``/``std``: the normalisation applied after them.
    """

    transforms: tuple[SeededTransform, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def draw(self, n: int, height: int, width: int) -> Draw:
        """The parameters of the client's next batch of ``n`` samples (advances its generators)."""
        if n == 0:  # BatchTransform.__call__ draws nothing for an empty batch
            return []
        return [seeded.draw(n, height, width) for seeded in self.transforms]

    def apply(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``images`` transformed with ``draw`` and normalised; sample ``i`` depends only on row ``i``."""
        for seeded, params in zip(self.transforms, draw):
            images = seeded.transform.apply(images, params)
        return normalize(images, self.mean, self.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One client's batch prepared on its own (what the sequential engine calls)."""
        return self.apply(images, self.draw(len(images), images.shape[-2], images.shape[-1]))

    def applies_like(self, other: BatchPreparation) -> bool:
        """Whether ``other`` applies any parameters exactly as this one does (generators aside)."""
        return (self.mean, self.std) == (other.mean, other.std) and \
            [s.transform for s in self.transforms] == [s.transform for s in other.transforms]


def merge_draws(draws: list[Draw]) -> Draw:
    """Several clients' draws (of preparations that apply alike) as one, for their concatenated batches."""
    drawn = [draw for draw in draws if draw]  # an empty batch draws nothing and adds no rows
    return [concat_params(list(per_transform)) for per_transform in zip(*drawn)]


def batch_preparation(hooks: list[Hook], ctx: HookContext, mean: tuple[float, ...],
                      std: tuple[float, ...]) -> PrepareBatch:
    """A client's batch preparation: a :class:`BatchPreparation` when its hooks allow one.

    Otherwise (a hook's ``transform_batch`` is not a seeded transform) the hooks' stages in order,
    then ``ctx.normalize``, per call.
    """
    stages = [hook.seeded_transform(ctx) for hook in hooks if hook.has_stage("transform_batch")]
    if all(stage is not None for stage in stages):
        return BatchPreparation(tuple(stages), tuple(mean), tuple(std))

    def hook_chain(xb: torch.Tensor) -> torch.Tensor:
        for hook in hooks:
            xb = hook.transform_batch(xb, ctx)
        return ctx.normalize(xb)

    return hook_chain
