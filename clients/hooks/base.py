"""The client-hook API: named stages of the one local training loop.

A hook is a small class with any of these optional stages, called in the order the hooks are
listed in the config:

* ``prepare(data, ctx) -> data`` -- before training: score, select, augment the client's
  local data (:class:`LocalData`: uint8 images, labels, and named per-sample scores/masks
  that later hooks can use, e.g. ``augment`` with ``target = "crucial"``);
* ``transform_batch(xb, ctx) -> xb`` -- on every mini-batch of uint8 images, before
  normalisation (online augmentation);
* ``loss(xb, yb, logits, base_loss, ctx) -> loss`` -- change the batch loss (e.g. knowledge
  distillation: ``(1 - alpha) * CE + alpha * KD``);
* ``report(ctx) -> dict[str, float]`` -- what the hook did, reported in the client's
  ``MetricRecord`` as ``hook.<name>.<metric>`` and saved to the run's ``hooks.csv``;
* ``round_extension() -> RoundExtension | None`` -- server-side work the hook needs around the
  rounds (see :mod:`fedsim.clients.hooks.extensions`), e.g. the previous round's client models.

Hooks must be deterministic given ``(seed, round, client id)``: draw randomness only from
``ctx.generator`` (or ``ctx.seed_for(...)``).

Under the vectorized engine (``engine.kind = "vectorized"``) every client gets fresh hook
instances; ``prepare`` runs per client before the lockstep training, ``loss`` per client and step
on that client's batch and logits, so results are the sequential engine's. ``transform_batch``
runs per client and step too, unless the hook describes it by ``seeded_transform(ctx)``: a
:class:`~fedsim.clients.hooks.transforms.SeededTransform` (a batch transform and the client's
generator its per-sample parameters come from). When every such stage of a client's hooks is
one, the engine draws each client's parameters from its own generator and transforms the
cohort's batches in one call, with the same result (:mod:`fedsim.clients.preparation`). A hook
that cannot work under the vectorized engine at all (e.g. it reads the model being trained) sets
the class attribute ``vectorizable = False``; its clients then train one by one, recorded in
``clients.csv`` (``engine``).

A user hook is any class with these methods, named by import path in the config::

    [[hooks]]
    name = "mypackage.myhooks:DropHardest"
    fraction = 0.1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsim.errors import InputError
from fedsim.core.extension import RoundExtension

from .transforms import SeededTransform


@dataclass
class LocalData:
    """A client's training data during ``prepare``: uint8 (N, C, H, W) images on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> "LocalData":
        """Rows ``keep`` (indices or boolean mask); scores and masks follow."""
        keep_t = torch.as_tensor(np.asarray(keep), device=self.images.device)
        return LocalData(self.images[keep_t], self.labels[keep_t], self.num_classes,
                         {k: v[keep] for k, v in self.scores.items()},
                         {k: v[keep] for k, v in self.masks.items()})

    def append(self, images: torch.Tensor, labels: torch.Tensor, source: str) -> "LocalData":
        """Add new samples (e.g. augmented copies); masks get False, ``source`` marks the new rows."""
        n_new = len(labels)
        masks = {k: np.concatenate([v, np.zeros(n_new, dtype=bool)]) for k, v in self.masks.items()}
        previous = self.masks.get(source, np.zeros(len(self), dtype=bool))
        masks[source] = np.concatenate([previous, np.ones(n_new, dtype=bool)])
        scores = {k: np.concatenate([v, np.full(n_new, np.nan)]) for k, v in self.scores.items()}
        return LocalData(torch.cat([self.images, images]), torch.cat([self.labels, labels]),
                         self.num_classes, scores, masks)

    def class_counts(self, mask: np.ndarray | None = None) -> np.ndarray:
        labels = self.labels.cpu().numpy()
        return np.bincount(labels if mask is None else labels[mask], minlength=self.num_classes)


@dataclass
class HookContext:
    """What a hook may use: identity, the received global model, the run's recipe and committee."""

    seed: int
    server_round: int
    client_id: int
    device: torch.device
    global_model: nn.Module  # the model as received this round (hooks must not train it)
    normalize: Any  # uint8 batch -> normalised float batch
    build_model: Any  # () -> a fresh model of the client's architecture (for tiny committees)
    recipe: Any  # the client's SGDRecipe
    peers: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)  # (client id, state)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def generator(self, *salt: int) -> torch.Generator:
        """A torch generator determined by (seed, round, client id, *salt)."""
        from fedsim.clients.training import seeded_generator

        return seeded_generator(self.seed, self.server_round, self.client_id, *salt)

    def rng(self, *salt: int) -> np.random.Generator:
        """A numpy generator determined by (seed, round, client id, *salt)."""
        return np.random.default_rng([self.seed, self.server_round, self.client_id, *salt])


class Hook:
    """Base class with no-op stages; subclasses override what they need."""

    name = "hook"
    needs: tuple[str, ...] = ()  # hooks that must be listed before this one (it reads their masks)
    vectorizable = True  # False: clients with this hook train one by one under engine.kind = "vectorized"

    def has_stage(self, stage: str) -> bool:
        """Whether this hook does something in ``stage`` (overrides the base class's no-op)."""
        return getattr(type(self), stage) is not getattr(Hook, stage)

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        return data

    def transform_batch(self, xb: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        return xb

    def seeded_transform(self, ctx: HookContext) -> SeededTransform | None:
        """``transform_batch`` as a batch transform and the generator it draws from, or None.

        Not None promises that ``transform_batch(xb, ctx)`` is ``transform(xb, generator)``
        with the returned pair: the vectorized engine may then draw the parameters and apply
        them to several clients' batches at once. None: ``transform_batch`` is called as it is.
        """
        return None

    def loss(self, xb: torch.Tensor, yb: torch.Tensor, logits: torch.Tensor, base_loss: torch.Tensor,
             ctx: HookContext) -> torch.Tensor:
        return base_loss

    def report(self, ctx: HookContext) -> dict[str, float]:
        return dict(ctx.stats.get(self.name, {}))

    def round_extension(self) -> "RoundExtension | None":
        """A server-side round extension this hook needs (e.g. to receive other clients' models)."""
        return None


class HookError(InputError):
    """A hook name or parameter is invalid; the message says what is allowed."""


def require(condition: bool, hook: str, key: str, value: Any, allowed: str) -> None:
    """Raise a :class:`HookError` naming the hook, the parameter, the value and what is allowed."""
    if not condition:
        raise HookError(f"hook {hook!r}: {key} = {value!r}: {allowed}")
