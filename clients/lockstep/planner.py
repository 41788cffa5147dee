"""Which of a worker's training tasks go through the vectorized engine, and their outcomes.

:func:`train_in_lockstep` looks at a worker's tasks before the client runner calls the ClientApp on
them. Training tasks of a vectorized run are grouped by (architecture, recipe, received
weights); each group of two or more is trained in lockstep chunks. It returns one
:class:`LockstepOutcome` per task (None: train it as usual), which the runner hands to that
client's handler call; the handler replies from it exactly as after sequential training -- the
ClientApp's mods (DP clipping), the per-client failure handling and the NaN check all still
apply per client. Clients that cannot join a group run the sequential engine, with the reason
recorded as their ``engine`` code (:class:`fedsim.core.protocol.TrainingEngine`). Nothing of
a call is kept: the trainers are the run's, in this process's owner
(:meth:`fedsim.clients.process.WorkerProcess.lockstep_trainer`).

A chunk is one unit of work with a time limit of ``executor.client_timeout`` times its number
of clients. A chunk that exceeds it, or raises, is not a failure of its clients: they train
again one by one under the sequential engine, where a client that hangs or raises fails alone
and the others succeed. Only a chunk that cannot fit in memory at all fails its clients, with
an error that says how much memory one client needs and which setting to change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
from flwr.app import MessageType

from fedsim.core.protocol import (
    ARRAYS,
    CLIENT_TIMEOUT,
    CONTROL,
    DISTILL,
    FEDDYN_ALPHA,
    FEDDYN_MAX_GRAD_NORM,
    MOON_MU,
    PROXIMAL_MU,
    RUN_DIR,
    SERVER_ROUND,
    ClientTask,
    TrainingEngine,
    message_config,
    read_peers,
)

from ..client import LocalClient, TrainingInputs
from ..hooks import build_hooks
from ..limits import ClientTimeout, time_limit
from ..training import EvalStats, TrainStats
from ..process import worker_process
from ..feddyn import ClientDynamics
from ..scaffold import ClientControl
from ..worker import WorkerRun
from .engine import LockstepClient, LockstepTrainer
from .memory import LockstepMemoryError, bytes_per_client, chunk_size, free_bytes

log = logging.getLogger(__name__)


@dataclass
class LockstepOutcome:
    """A client's outcome from the vectorized engine, or the reason it trains sequentially.

    A training task's: its trained ``state`` and ``stats`` (or ``error``). An evaluate task's
    (:func:`~fedsim.clients.lockstep.evaluation.evaluate_in_lockstep`): its held-out ``evaluation``.
    """

    engine: TrainingEngine
    state: dict[str, torch.Tensor] | None = None
    stats: TrainStats | None = None
    seconds: float = 0.0  # its share of the chunk's wall time, compile time excluded
    compile_seconds: float = 0.0
    error: BaseException | None = None
    evaluation: EvalStats | None = None  # evaluate tasks: scored with the others that received its weights


def _vectorized_run(task: ClientTask) -> WorkerRun | None:
    msg = task.message
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return None
    run_dir = message_config(msg).get(RUN_DIR)
    if run_dir is None:
        return None
    run = worker_process().run(str(run_dir))
    return run if run.spec.engine == "vectorized" else None


def train_in_lockstep(tasks: list[ClientTask]) -> list[LockstepOutcome | None]:
    """Train the vectorizable training tasks in lockstep; one outcome per task, in task order.

    None: the task is not a vectorized run's training task (or its client's configured behaviour
    must act in the handler); the handler trains it as usual.
    """
    outcomes: list[LockstepOutcome | None] = [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}  # group -> positions of its tasks
    for position, task in enumerate(tasks):
        run = _vectorized_run(task)
        if run is None:
            continue
        config = message_config(task.message)
        if not run.behaviours.trains_in_lockstep(task.client_id):
            continue  # e.g. a client failing on purpose: the handler fails it alone
        if config.get(DISTILL, False):
            outcomes[position] = LockstepOutcome(TrainingEngine.FALLBACK_DISTILL)
            continue
        if MOON_MU in config:  # the contrastive term runs the global and previous models on every batch
            outcomes[position] = LockstepOutcome(TrainingEngine.FALLBACK_CONTRASTIVE)
            continue
        if any(getattr(hook, "vectorizable", True) is False for hook in run.hooks):
            outcomes[position] = LockstepOutcome(TrainingEngine.FALLBACK_HOOK)
            continue
        group = (str(config[RUN_DIR]), int(config[SERVER_ROUND]), run.spec.architecture_of(task.client_id),
                 float(config.get(PROXIMAL_MU, 0.0)), float(config.get(FEDDYN_MAX_GRAD_NORM, 0.0)),
                 id(task.message.content[ARRAYS]))
        groups.setdefault(group, []).append(position)
    for (run_dir, server_round, architecture, mu, max_grad_norm, _), positions in groups.items():
        if len(positions) < 2:
            outcomes[positions[0]] = LockstepOutcome(TrainingEngine.FALLBACK_ALONE)
            continue
        trained = _train_group(worker_process().run(run_dir), server_round, architecture, mu, max_grad_norm,
                               [tasks[p] for p in positions])
        for position, outcome in zip(positions, trained):
            outcomes[position] = outcome
    return outcomes


def _train_group(run: WorkerRun, server_round: int, architecture: str, mu: float, max_grad_norm: float,
                 tasks: list[ClientTask]) -> list[LockstepOutcome]:
    """The outcomes of one group's tasks, in their order, trained chunk by chunk.

    The group shares one recipe; a FedDyn client brings its own weight decay (``alpha_k +
    train.weight_decay``) and gradient offset (:class:`~fedsim.clients.feddyn.ClientDynamics`).
    """
    recipe = replace(run.spec.recipe.with_proximal_mu(mu), max_grad_norm=max_grad_norm)
    model = run.model(architecture)
    model.load_state_dict(tasks[0].message.content[ARRAYS].to_torch_state_dict(), strict=True)
    start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    input_shape = (int(run.x_train.shape[-1]), *run.x_train.shape[1:3])
    trainer = _trainer(run, architecture, model, input_shape)
    try:
        # each client holds a step offset (SCAFFOLD) or a gradient offset (FedDyn)
        offset = (CONTROL in tasks[0].message.content.array_records
                  or FEDDYN_ALPHA in message_config(tasks[0].message))
        size = chunk_size(bytes_per_client(model, input_shape, recipe, offset), free_bytes(run.device),
                          run.spec.lockstep_memory, run.spec.lockstep_clients, architecture)
    except LockstepMemoryError as error:
        return [LockstepOutcome(TrainingEngine.VECTORIZED, error=error) for _ in tasks]
    limit = float(message_config(tasks[0].message).get(CLIENT_TIMEOUT, 0.0))
    outcomes: list[LockstepOutcome] = []
    for first in range(0, len(tasks), size):
        chunk = tasks[first : first + size]
        started = time.perf_counter()
        try:
            with time_limit(limit * len(chunk), chunk[0].client_id):
                inputs = [_inputs(run, model, start, server_round, task) for task in chunk]
                offsets = [_offset(run, task) for task in chunk]
                dynamics = [ClientDynamics.of_task(run, task.message, task.client_id) for task in chunk]
                clients = [LockstepClient(i.x, i.y, start, i.generator, i.prepare_batch, i.batch_loss, offset,
                                          d.gradient_offset if d else None,
                                          d.recipe(recipe).weight_decay if d else None)
                           for i, offset, d in zip(inputs, offsets, dynamics)]
                result = trainer.train(clients, recipe)
        except ClientTimeout:  # one slow client must not fail its chunk-mates: one by one, each limited
            log.warning("lockstep training of %d %s clients exceeded %g s; they train sequentially",
                        len(chunk), architecture, limit * len(chunk))
            outcomes += [LockstepOutcome(TrainingEngine.FALLBACK_SLOW) for _ in chunk]
            continue
        except Exception as error:  # noqa: BLE001 - the chunk's clients retry one by one
            log.warning("lockstep training of %d %s clients raised %s: %s; they train sequentially",
                        len(chunk), architecture, type(error).__name__, error)
            outcomes += [LockstepOutcome(TrainingEngine.FALLBACK_RAISED) for _ in chunk]
            continue
        seconds = (time.perf_counter() - started - result.compile_seconds) / len(chunk)
        for state, stats, client_inputs in zip(result.states, result.stats, inputs):
            stats.hook_metrics = client_inputs.report()
            outcomes.append(LockstepOutcome(TrainingEngine.VECTORIZED, state, stats, seconds,
                                            result.compile_seconds / len(chunk)))
    return outcomes


def _inputs(run: WorkerRun, model: torch.nn.Module, start: dict[str, torch.Tensor], server_round: int,
            task: ClientTask) -> TrainingInputs:
    """A client's training inputs, its hooks fresh (hooks keep per-client state until ``report``)."""
    peers = [(cid, arrays.to_torch_state_dict()) for cid, arrays in read_peers(task.message)]
    hooks = build_hooks(list(run.spec.hooks)) if run.spec.hooks else []
    if hooks:
        model.load_state_dict(start)  # the hooks' global_model: the received weights
    return LocalClient(task.client_id, run).training_inputs(model, server_round, peers, hooks)


def _offset(run: WorkerRun, task: ClientTask) -> dict[str, torch.Tensor] | None:
    """The client's step offset (SCAFFOLD's ``c - c_i``), None when its task has none."""
    control = ClientControl.of_task(run, task.message, task.client_id)
    return control.offset if control is not None else None


def _trainer(run: WorkerRun, architecture: str, model: torch.nn.Module, input_shape: tuple[int, ...]) -> LockstepTrainer:
    """The run's trainer for this architecture and dtype, kept by the process owner while the run is open."""
    return worker_process().lockstep_trainer(
        run, architecture, next(model.parameters()).dtype,
        lambda: LockstepTrainer(model, input_shape, compile=run.spec.compile))
