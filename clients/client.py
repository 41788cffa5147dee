"""A federated *client*: partition id + its data, its hooks and the run's recipe.

A client is deliberately not a Flower node: the client-side handler
(:mod:`fedsim.clients.handler`) looks up the client it was asked to run and calls
:meth:`LocalClient.fit` / :meth:`LocalClient.evaluate`, so one node can host many clients
without touching the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.core.protocol import hook_metric_key
from fedsim.core.recipe import SGDRecipe

from . import training
from .hooks import HookContext, LocalData
from .moon import ContrastiveObjective
from .preparation import PrepareBatch, batch_preparation
from .worker import WorkerRun


@dataclass
class TrainingInputs:
    """What one client trains on in a round, in the form both training engines take.

    ``x``/``y``: the model's inputs, or uint8 images that ``prepare_batch`` augments and
    normalises per batch (with hooks; a :class:`~fedsim.clients.preparation.BatchPreparation`
    when the vectorized engine may prepare several clients' batches in one call); ``generator``
    shuffles (and seeds the dropout masks' generator,
    :func:`fedsim.clients.training.dropout_generator`); ``batch_loss`` is the hooks' loss stage
    and ``report`` what they did.
    """

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator
    prepare_batch: PrepareBatch | None = None
    batch_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    report: Callable[[], dict[str, float]] = dict


def read_samples(run: WorkerRun, order: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's samples at ``order``, in that order, as a model takes them: normalised float32 images, labels.

    On the run's device. The one place a client's images become model inputs without hooks
    (training without hooks, :meth:`LocalClient.evaluate`, and the vectorized engine's batched
    evaluation, :mod:`fedsim.clients.lockstep.evaluation`), so every path preprocesses alike.
    """
    x = training.to_tensor(run.x_train[order], run.spec.mean, run.spec.std, run.device)
    y = torch.from_numpy(run.y_train[order]).to(run.device)
    return x, y


@dataclass
class LocalClient:
    """One client's view of the run: its id and its train/validation samples."""

    client_id: int
    run: WorkerRun

    def _tensors(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return read_samples(self.run, np.sort(indices))  # sorted reads are sequential on the memory map

    def held_out(self) -> np.ndarray:
        """The indices of the client's held-out split, sorted: the order every evaluation reads them in."""
        return np.sort(self.run.partition.val_of(self.client_id))

    @property
    def num_train(self) -> int:
        return len(self.run.partition.train_of(self.client_id))

    def fit(self, model: torch.nn.Module, server_round: int, recipe: SGDRecipe | None = None,
            peers: list[tuple[int, dict[str, torch.Tensor]]] | None = None,
            offset: training.StepOffset | None = None,
            contrastive: ContrastiveObjective | None = None,
            gradient_offset: training.StepOffset | None = None) -> training.TrainStats:
        """Local SGD on the client's training split; randomness from (seed, round, client).

        ``recipe`` defaults to the run's (``spec.recipe``); the handler passes it with the
        round's proximal term when the strategy sends one, the client's step ``offset``
        (:data:`~fedsim.clients.training.StepOffset`: SCAFFOLD's correction) when it has one, its
        ``gradient_offset`` (FedDyn's linear term, :mod:`fedsim.clients.feddyn`), and
        MOON's objective (``contrastive``, :mod:`fedsim.clients.moon`) when the strategy is
        ``moon``. What the client trains on comes from :meth:`training_inputs`, which the
        vectorized engine uses too.
        """
        inputs = self.training_inputs(model, server_round, peers)
        objective = training.cross_entropy_objective
        if contrastive is not None:  # adds mu * l_con to the hooks' loss
            contrastive.batch_loss = inputs.batch_loss
            objective = contrastive
        elif inputs.batch_loss is not None:
            def objective(model, xb, yb, idx):  # noqa: ANN001, ANN202 - training.Objective
                loss, logits = training.cross_entropy_objective(model, xb, yb, idx)
                return inputs.batch_loss(xb, yb, logits, loss), logits

        stats = training.train(model, inputs.x, inputs.y, recipe or self.run.spec.recipe, inputs.generator,
                               objective=objective, prepare_batch=inputs.prepare_batch, offset=offset,
                               gradient_offset=gradient_offset)
        stats.hook_metrics = {**inputs.report(), **(contrastive.report() if contrastive is not None else {})}
        return stats

    def training_inputs(self, model: torch.nn.Module, server_round: int,
                        peers: list[tuple[int, dict[str, torch.Tensor]]] | None = None,
                        hooks: list | None = None) -> TrainingInputs:
        """The client's data, generator and hook stages for a round, ready for either engine.

        Every random draw comes from generators seeded by (seed, round, client): the shuffles,
        the dropout masks, and the hooks' own (``HookContext.generator``); torch's global
        generator is neither seeded nor read. ``model`` holds the received weights (the hooks'
        ``global_model``). ``hooks`` defaults to the worker's instances;
        the vectorized engine passes fresh ones per client, because a hook keeps per-client
        state between ``prepare`` and ``report``.
        """
        spec, device = self.run.spec, self.run.device
        generator = training.seeded_generator(spec.seed, server_round, self.client_id)
        hooks = self.run.hooks if hooks is None else hooks
        if not hooks:
            x, y = self._tensors(self.run.partition.train_of(self.client_id))
            return TrainingInputs(x, y, generator)
        order = np.sort(self.run.partition.train_of(self.client_id))
        data = LocalData(training.to_uint8_tensor(self.run.x_train[order], device),
                         torch.from_numpy(self.run.y_train[order]).to(device), spec.num_classes)
        ctx = HookContext(
            seed=spec.seed, server_round=server_round, client_id=self.client_id, device=device,
            global_model=model, normalize=lambda xb: training.normalize(xb, spec.mean, spec.std),
            build_model=lambda: self.run.fresh_model(spec.architecture_of(self.client_id)),
            recipe=spec.recipe, peers=peers or [],
        )
        for hook in hooks:
            data = hook.prepare(data, ctx)
        prepare_batch = batch_preparation(hooks, ctx, spec.mean, spec.std)

        def batch_loss(xb: torch.Tensor, yb: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
            for hook in hooks:
                loss = hook.loss(xb, yb, logits, loss, ctx)
            return loss

        def report() -> dict[str, float]:
            return {hook_metric_key(hook.name, key): float(value)
                    for hook in hooks for key, value in hook.report(ctx).items()}

        changes_loss = any(hook.has_stage("loss") for hook in hooks)
        return TrainingInputs(data.images, data.labels, generator, prepare_batch, batch_loss if changes_loss else None, report)

    def evaluate(self, model: torch.nn.Module) -> training.EvalStats:
        """Loss and accuracy on the client's held-out split."""
        x, y = read_samples(self.run, self.held_out())
        return training.evaluate(model, x, y, self.run.spec.eval_batch_size)
