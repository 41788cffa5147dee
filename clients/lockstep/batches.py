"""A lockstep step group's inputs: its members' batches as one [M, b, ...] tensor, in as few calls as
their preparation allows.

:func:`step_batches` picks the way once per chunk; each gives the tensor that stacking every
member's own batch gives, bit for bit:

* :class:`ReadyBatches` -- no client prepares its batches (no hooks: its data are already the
  model's inputs): one gather from all clients' data;
* :class:`CohortBatches` -- every client's preparation is a
  :class:`~fedsim.clients.preparation.BatchPreparation` and all apply alike (built-in hooks,
  e.g. online ``augment``): one gather of the members' uint8 batches, each member's parameters
  drawn from its own generators in member order (the draws of its own call), then one call of
  the transforms and the normalisation for the whole group. Both work sample by sample, so every
  sample gets the bits the member's own call gives it;
* :class:`ClientBatches` -- otherwise (a user hook's own ``transform_batch``): one preparation
  call per member and step, stacked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from ..preparation import BatchPreparation, merge_draws

if TYPE_CHECKING:
    from .engine import LockstepClient


class StepBatches(ABC):
    """Builds a step group's inputs and labels from its members' index batches."""

    @abstractmethod
    def __call__(self, members: list[int], batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, [M, b, ...] and [M, b], of the clients ``members`` (positions in the chunk)
        whose index batches, all of size b, are ``batches``."""


class _Joined:
    """Every client's samples in one tensor, so that a step group's batches are one gather."""

    def __init__(self, clients: list[LockstepClient], device: torch.device) -> None:
        self.offsets = torch.tensor([0] + [len(c.y) for c in clients]).cumsum(0).tolist()
        self.x = torch.cat([c.x for c in clients])
        self.y = torch.cat([c.y for c in clients])
        self.device = device

    def rows(self, members: list[int], batches: list[torch.Tensor]) -> torch.Tensor:
        """The rows of ``x``/``y`` holding the members' batches, member after member."""
        return torch.cat([batch + self.offsets[j] for batch, j in zip(batches, members)]).to(self.device)

    def labels(self, rows: torch.Tensor, members: list[int]) -> torch.Tensor:
        return self.y[rows].view(len(members), -1)


class ReadyBatches(StepBatches):
    """Clients whose data are the model's inputs: one gather per step group."""

    def __init__(self, clients: list[LockstepClient], device: torch.device) -> None:
        self.joined = _Joined(clients, device)

    def __call__(self, members: list[int], batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.joined.rows(members, batches)
        x = self.joined.x[rows]
        return x.view(len(members), -1, *x.shape[1:]), self.joined.labels(rows, members)


class CohortBatches(StepBatches):
    """Clients whose preparations apply alike: per member a draw, per step group one apply."""

    def __init__(self, clients: list[LockstepClient], preparations: list[BatchPreparation],
                 device: torch.device) -> None:
        self.joined = _Joined(clients, device)
        self.preparations = preparations

    def __call__(self, members: list[int], batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.joined.rows(members, batches)
        images = self.joined.x[rows]
        height, width = images.shape[-2:]
        draw = merge_draws([self.preparations[j].draw(len(batch), height, width)
                            for j, batch in zip(members, batches)])
        x = self.preparations[members[0]].apply(images, draw)
        return x.view(len(members), -1, *x.shape[1:]), self.joined.labels(rows, members)


class ClientBatches(StepBatches):
    """Clients whose preparations cannot be joined: each member's batch prepared by its own call."""

    def __init__(self, clients: list[LockstepClient], device: torch.device) -> None:
        self.clients, self.device = clients, device

    def __call__(self, members: list[int], batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for j, batch in zip(members, batches):
            client, rows = self.clients[j], batch.to(self.device)
            inputs.append(client.x[rows] if client.prepare_batch is None else client.prepare_batch(client.x[rows]))
            labels.append(client.y[rows])
        return torch.stack(inputs), torch.stack(labels)


def step_batches(clients: list[LockstepClient], device: torch.device) -> StepBatches:
    """The way this chunk's step groups get their inputs: the fewest calls its clients allow."""
    preparations = [client.prepare_batch for client in clients]
    if all(preparation is None for preparation in preparations):
        return ReadyBatches(clients, device)
    if all(isinstance(p, BatchPreparation) and p.applies_like(preparations[0]) for p in preparations):
        return CohortBatches(clients, preparations, device)
    return ClientBatches(clients, device)
