"""The run plan: a validated config resolved once into everything a run derives from it.

Everything downstream of validation -- preparation, the server side, the executors, the
scheduler, the outputs -- reads a :class:`RunPlan` instead of deriving values from the config
again: the run mode and the method, the strategy (how to build it and what the run must know of
it), how many clients each round samples, the local recipe, the clients' device, how many
workers and nodes Flower's runtime starts, the behaviours configured per client. A prepared run
adds its inputs on disk (:class:`RunInputs`: dataset, partition index, counts, the staging and
final folders; :func:`fedsim.runs.prepare.prepare`).

:func:`plan_for` only derives; it never raises for a bad value (a strategy that cannot be
built is recorded in ``plan.strategy.error``), because validation
(:func:`fedsim.config.validation.validate`) asks its rules with the plan at hand and reports
every problem at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedsim.clients.behaviours import BehaviourSpec
from fedsim.clients.hooks import HookError, build_hooks
from fedsim.config import ExperimentConfig
from fedsim.core.recipe import DistillRecipe, SGDRecipe
from fedsim.core.sampling import sample_size
from fedsim.core.spec import PartitionIndex, resolve_device
from fedsim.datasets import CachedDataset
from fedsim.methods.base import Method
from fedsim.methods.modes import MODES, RunMode
from fedsim.methods.registry import method_for
from fedsim.models import FedsimNet, build_model
from fedsim.strategies import STRATEGIES, AsynchronousStrategy, StrategyError, build_strategy, stream_weight_key


@dataclass(frozen=True)
class StrategyPlan:
    """The run's strategy: how to build it, and what the rest of the run needs to know of it.

    The strategy is built once while planning (that is how its keyword arguments are checked);
    :meth:`build` makes the run's own, fresh instance (strategies keep state across rounds).
    """

    name: str
    kwargs: dict
    lr: float  # defaults some strategies derive (q-FedAvg's client learning rate)
    clients_per_round: int  # ... and the DP wrappers' num_sampled_clients
    momentum: float = 0.9  # the clients' SGD momentum (FedNova's a_i)
    error: str = ""  # why the strategy cannot be built ("" when it can)
    asynchronous: bool = False  # aggregates buffered updates on the simulated clock (FedBuff, FedAsync)
    buffer_size: int = 1  # asynchronous: updates per server round
    stream_key: str | None = None  # the metric a streaming worker weights by (None: not a weighted mean)

    @property
    def known(self) -> bool:
        return self.name in STRATEGIES

    def build(self) -> Strategy:
        """A fresh instance of the run's strategy."""
        return build_strategy(self.name, self.kwargs, lr=self.lr, clients_per_round=self.clients_per_round,
                              momentum=self.momentum)

    @classmethod
    def resolve(cls, name: str, kwargs: dict, lr: float, clients_per_round: int,
                momentum: float = 0.9) -> StrategyPlan:
        plan = cls(name, dict(kwargs), lr, clients_per_round, momentum)
        if not plan.known:
            return plan
        try:
            strategy = plan.build()
        except StrategyError as err:
            return replace(plan, error=str(err))
        asynchronous = isinstance(strategy, AsynchronousStrategy)
        return replace(plan, asynchronous=asynchronous,
                       buffer_size=int(strategy.buffer_size) if asynchronous else 1,  # type: ignore[attr-defined]
                       stream_key=stream_weight_key(strategy))


@dataclass(frozen=True)
class RunInputs:
    """What :func:`fedsim.runs.prepare.prepare` put in place for a run: its data and folders."""

    dataset: CachedDataset
    partition: PartitionIndex  # every client's training and validation indices
    counts: np.ndarray  # client x class counts of the training partition
    staging: Path  # the run directory while the run is in progress
    final: Path  # where it is published


@dataclass(frozen=True)
class RunPlan:
    """A validated config and everything the run derives from it, resolved once (see the module)."""

    config: ExperimentConfig
    mode: RunMode
    method: Method
    strategy: StrategyPlan
    clients_per_round: int  # K: clients sampled per training round
    clients_per_eval: int  # clients sampled per federated evaluation
    concurrency: int  # asynchronous strategies: clients training at once
    recipe: SGDRecipe  # the one local-training recipe
    distill_recipe: DistillRecipe | None  # the clients' distillation step (latent-distill), else None
    client_device: str  # the clients' device setting ("cpu" for Ray workers without a GPU share)
    workers: int  # cohort executor: worker nodes Flower's runtime starts
    nodes: int  # simulated SuperNodes: the workers, or one per client
    behaviours: tuple[BehaviourSpec, ...]  # configured per-client behaviour, carried by the run spec
    hooks_needing_client_arrays: tuple[str, ...] = ()  # hooks that read other clients' uploaded models
    hooks_error: str = ""  # why the configured hooks cannot be built ("" when they can)
    inputs: RunInputs | None = field(default=None, repr=False)

    @property
    def num_clients(self) -> int:
        return self.config.partition.num_clients

    @property
    def federated(self) -> bool:
        """Whether clients train in rounds (False: the centralized baseline)."""
        return self.mode.federated

    @property
    def evaluates_client_models(self) -> bool:
        """Whether every client's uploaded model is evaluated on the test set (mode or setting)."""
        return self.config.evaluation.client_models or self.mode.evaluates_client_models

    # a prepared plan's inputs, by name
    def _inputs(self) -> RunInputs:
        if self.inputs is None:
            raise RuntimeError("this run plan is not prepared yet (fedsim.runs.prepare.prepare)")
        return self.inputs

    @property
    def dataset(self) -> CachedDataset:
        return self._inputs().dataset

    @property
    def partition(self) -> PartitionIndex:
        return self._inputs().partition

    @property
    def counts(self) -> np.ndarray:
        return self._inputs().counts

    @property
    def staging(self) -> Path:
        return self._inputs().staging

    @property
    def final(self) -> Path:
        return self._inputs().final

    @property
    def train_sizes(self) -> np.ndarray:
        """Every client's number of training samples."""
        return np.diff(self.partition.train_offsets)

    @property
    def server_device(self) -> torch.device:
        """Where the server evaluates (``runtime.device``; ``auto``: a GPU when this process sees one)."""
        return resolve_device(self.config.runtime.device)

    def initial_model(self) -> FedsimNet:
        """The global model's initial weights, determined by the seed alone."""
        return initial_model(self.config, self.dataset)


def initial_model(config: ExperimentConfig, dataset: CachedDataset) -> FedsimNet:
    """The global model of ``config`` for ``dataset``, its weights determined by the seed alone."""
    torch.manual_seed(config.seed)
    return build_model(config.model.name, dataset.num_classes, config.model.representation_dim,
                       dataset.image_shape[-1])


def client_device(config: ExperimentConfig) -> str:
    """The clients' device: ``runtime.device``, except that ``auto`` means the CPU for Ray workers
    given no GPU share (``num_gpus_per_client = 0``): Ray does not account for a CUDA context
    such a worker would open. In process, ``auto`` uses a visible GPU."""
    runtime = config.runtime
    if runtime.device == "auto" and config.executor.kind != "in-process" and runtime.num_gpus_per_client == 0:
        return "cpu"
    return runtime.device


def worker_count(config: ExperimentConfig) -> int:
    """Cohort executor: ``executor.workers``, or as many as the per-client resources allow.

    The automatic count is the CPUs Ray may use divided by ``num_cpus_per_client`` (and, with
    ``num_gpus_per_client > 0``, the visible GPUs divided by it), at least 1 and at most the
    number of clients.
    """
    runtime, n = config.runtime, config.partition.num_clients
    if config.executor.workers > 0:
        return min(config.executor.workers, n)
    cpus = runtime.ray_num_cpus or os.cpu_count() or 1
    count = int(cpus // runtime.num_cpus_per_client) if runtime.num_cpus_per_client > 0 else 1
    if runtime.num_gpus_per_client > 0:
        import torch

        count = min(count, int(torch.cuda.device_count() // runtime.num_gpus_per_client))
    return max(1, min(count, n))


def _hooks(config: ExperimentConfig) -> tuple[tuple[str, ...], str]:
    """The configured hooks, built once to check them: those that read other clients' models, and the error."""
    try:
        hooks = build_hooks(list(config.hooks))
    except HookError as err:
        return (), str(err)
    return tuple(h.name for h in hooks if getattr(h.round_extension(), "needs_client_arrays", False)), ""


def plan_for(config: ExperimentConfig) -> RunPlan:
    """Derive the run plan of ``config`` (see the module: this never raises for a bad value)."""
    n, train, evaluation = config.partition.num_clients, config.train, config.evaluation
    per_round = sample_size(n, train.fraction_train, train.clients_per_round) if n >= 1 else 0
    method = method_for(config.strategy.name)
    workers = worker_count(config) if n >= 1 else 1
    needing_client_arrays, hooks_error = _hooks(config)
    return RunPlan(
        config=config,
        mode=MODES.get(train.mode, MODES["federated"]),
        method=method,
        strategy=StrategyPlan.resolve(config.strategy.name, config.strategy.kwargs, train.lr, per_round,
                                      train.momentum),
        clients_per_round=per_round,
        clients_per_eval=sample_size(n, evaluation.fraction_evaluate, evaluation.clients_per_eval) if n >= 1 else 0,
        concurrency=config.time.policy.concurrency or per_round,
        recipe=SGDRecipe(train.local_epochs, train.batch_size, train.lr, train.momentum, train.weight_decay),
        distill_recipe=method.client_distill_recipe(config),
        client_device=client_device(config),
        workers=workers,
        nodes=workers if config.executor.kind == "cohort" else n,
        behaviours=tuple(config.faults.behaviours()),
        hooks_needing_client_arrays=needing_client_arrays,
        hooks_error=hooks_error,
    )
