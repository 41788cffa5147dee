"""A federated *client*: partition id + its data (+ later its state and hooks).

A client is deliberately not a Flower node (DESIGN.md): the node's message handler looks
up the client(s) it was asked to run and calls :meth:`LocalClient.fit` /
:meth:`LocalClient.evaluate`, so one node can later host many clients without touching
the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import training
from .worker import WorkerRun


@dataclass
class LocalClient:
    """One client's view of the run: its id and its train/validation samples."""

    client_id: int
    run: WorkerRun

    def _tensors(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.sort(indices)  # sorted reads are sequential on the memory map
        x = training.to_tensor(self.run.x_train[order], self.run.spec.mean, self.run.spec.std,
                               self.run.device)
        y = torch.from_numpy(self.run.y_train[order]).to(self.run.device)
        return x, y

    @property
    def num_train(self) -> int:
        return len(self.run.partition.train_of(self.client_id))

    def fit(self, model: torch.nn.Module, server_round: int, proximal_mu: float = 0.0) -> training.TrainStats:
        """Local SGD on the client's training split; randomness from (seed, round, client)."""
        x, y = self._tensors(self.run.partition.train_of(self.client_id))
        generator = training.seeded_generator(self.run.spec.seed, server_round, self.client_id)
        torch.manual_seed(generator.initial_seed())  # dropout etc. draw from the global RNG
        return training.train(model, x, y, self.run.recipe, generator, proximal_mu)

    def evaluate(self, model: torch.nn.Module) -> training.EvalStats:
        """Loss and accuracy on the client's held-out split."""
        x, y = self._tensors(self.run.partition.val_of(self.client_id))
        return training.evaluate(model, x, y, self.run.spec.eval_batch_size)
