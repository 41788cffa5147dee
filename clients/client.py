"""A federated *client*: partition id + its data, its hooks and the run's recipe.

A client is deliberately not a Flower node: the client-side handler
(:mod:`fedsim.clients.handler`) looks up the client it was asked to run and calls
:meth:`LocalClient.fit` / :meth:`LocalClient.evaluate`, so one node can host many clients
without touching the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsim.protocol import hook_metric_key
from fedsim.recipe import SGDRecipe

from . import training
from .hooks import HookContext, LocalData
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

    def fit(self, model: torch.nn.Module, server_round: int, recipe: SGDRecipe | None = None,
            peers: list[tuple[int, dict[str, torch.Tensor]]] | None = None) -> training.TrainStats:
        """Local SGD on the client's training split; randomness from (seed, round, client).

        ``recipe`` defaults to the run's (``spec.recipe``); the handler passes it with the
        round's proximal term when the strategy sends one.

        With hooks configured, the data goes through their ``prepare`` stages first, every batch
        through ``transform_batch`` and every loss through ``loss``; what they report is in
        ``TrainStats.hook_metrics``.
        """
        generator = training.seeded_generator(self.run.spec.seed, server_round, self.client_id)
        torch.manual_seed(generator.initial_seed())  # dropout etc. draw from the global RNG
        recipe = recipe or self.run.spec.recipe
        if not self.run.hooks:
            x, y = self._tensors(self.run.partition.train_of(self.client_id))
            return training.train(model, x, y, recipe, generator)
        return self._fit_with_hooks(model, server_round, recipe, peers or [], generator)

    def _fit_with_hooks(self, model: torch.nn.Module, server_round: int, recipe: SGDRecipe,
                        peers: list, generator: torch.Generator) -> training.TrainStats:
        spec, device = self.run.spec, self.run.device
        order = np.sort(self.run.partition.train_of(self.client_id))
        data = LocalData(training.to_uint8_tensor(self.run.x_train[order], device),
                         torch.from_numpy(self.run.y_train[order]).to(device), spec.num_classes)
        ctx = HookContext(
            seed=spec.seed, server_round=server_round, client_id=self.client_id, device=device,
            global_model=model, normalize=lambda xb: training.normalize(xb, spec.mean, spec.std),
            build_model=lambda: self.run.fresh_model(spec.architecture_of(self.client_id)),
            recipe=spec.recipe, peers=peers,
        )
        hooks = self.run.hooks
        for hook in hooks:
            data = hook.prepare(data, ctx)

        def prepare_batch(xb: torch.Tensor) -> torch.Tensor:
            for hook in hooks:
                xb = hook.transform_batch(xb, ctx)
            return ctx.normalize(xb)

        def objective(model, xb, yb, idx):  # noqa: ANN001, ANN202 - training.Objective
            loss, logits = training.cross_entropy_objective(model, xb, yb, idx)
            for hook in hooks:
                loss = hook.loss(xb, yb, logits, loss, ctx)
            return loss, logits

        stats = training.train(model, data.images, data.labels, recipe, generator,
                               objective=objective, prepare_batch=prepare_batch)
        stats.hook_metrics = {hook_metric_key(hook.name, key): float(value)
                              for hook in hooks for key, value in hook.report(ctx).items()}
        return stats

    def evaluate(self, model: torch.nn.Module) -> training.EvalStats:
        """Loss and accuracy on the client's held-out split."""
        x, y = self._tensors(self.run.partition.val_of(self.client_id))
        return training.evaluate(model, x, y, self.run.spec.eval_batch_size)
