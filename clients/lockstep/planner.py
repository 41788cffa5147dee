"""Which of a worker's training tasks go through the vectorized engine, and their results.

:func:`train_in_lockstep` looks at a worker's tasks before the client runner calls the ClientApp on
them. Training tasks of a vectorized run are grouped by (architecture, recipe, received
weights); each group of two or more is trained in lockstep chunks and each client's outcome
is kept in :data:`OUTCOMES` for the client handler (:func:`take_outcome`), which replies
from it exactly as after sequential training -- the ClientApp's mods (DP clipping), the
per-client failure handling and the NaN check all still apply per client. Clients that
cannot join a group run the sequential engine, with the reason recorded as their ``engine``
code (:data:`fedsim.core.protocol.ENGINE_LABELS`).

A chunk is one unit of work with a time limit of ``executor.client_timeout`` times its number
of clients. A chunk that exceeds it, or raises, is not a failure of its clients: they train
again one by one under the sequential engine, where a client that hangs or raises fails alone
and the others succeed. Only a chunk that cannot fit in memory at all fails its clients, with
an error that says how much memory one client needs and which setting to change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from flwr.app import MessageType

from fedsim.core.protocol import (
    ARRAYS,
    CLIENT_TIMEOUT,
    DISTILL,
    PROXIMAL_MU,
    RUN_DIR,
    SERVER_ROUND,
    ClientTask,
    message_config,
    read_peers,
)

from ..client import LocalClient, TrainingInputs
from ..hooks import build_hooks
from ..limits import ClientTimeout, time_limit
from ..training import TrainStats
from ..worker import WorkerRun, worker_run
from .engine import LockstepClient, LockstepTrainer
from .memory import LockstepMemoryError, bytes_per_client, chunk_size, free_bytes

log = logging.getLogger(__name__)

VECTORIZED, FALLBACK_DISTILL, FALLBACK_ALONE, FALLBACK_HOOK, FALLBACK_RAISED, FALLBACK_SLOW = 1, 2, 3, 4, 5, 6


@dataclass
class LockstepOutcome:
    """A client's outcome from the vectorized engine, or the reason it trains sequentially."""

    engine: int  # a code of fedsim.core.protocol.ENGINE_LABELS
    state: dict[str, torch.Tensor] | None = None
    stats: TrainStats | None = None
    seconds: float = 0.0  # its share of the chunk's wall time, compile time excluded
    compile_seconds: float = 0.0
    error: BaseException | None = None


OUTCOMES: dict[tuple[int, int], LockstepOutcome] = {}  # (round, client id) -> outcome, taken by the handler


def take_outcome(server_round: int, client_id: int) -> LockstepOutcome | None:
    """The client's lockstep outcome for this round (removed), or None: train it as usual."""
    return OUTCOMES.pop((server_round, client_id), None)


_TRAINERS: dict[tuple, LockstepTrainer] = {}  # per process: one per (run, architecture, dtype, compile)


def _vectorized_run(task: ClientTask) -> WorkerRun | None:
    msg = task.message
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return None
    run_dir = message_config(msg).get(RUN_DIR)
    if run_dir is None:
        return None
    run = worker_run(str(run_dir))
    return run if run.spec.engine == "vectorized" else None


def train_in_lockstep(tasks: list[ClientTask]) -> None:
    """Train the vectorizable training tasks in lockstep; leave every outcome in :data:`OUTCOMES`."""
    OUTCOMES.clear()
    groups: dict[tuple, list[ClientTask]] = {}
    for task in tasks:
        run = _vectorized_run(task)
        if run is None:
            continue
        config = message_config(task.message)
        server_round = int(config[SERVER_ROUND])
        if not run.behaviours.trains_in_lockstep(task.client_id):
            continue  # e.g. a client failing on purpose: the handler fails it alone
        key = (server_round, task.client_id)
        if config.get(DISTILL, False):
            OUTCOMES[key] = LockstepOutcome(FALLBACK_DISTILL)
            continue
        if any(getattr(hook, "vectorizable", True) is False for hook in run.hooks):
            OUTCOMES[key] = LockstepOutcome(FALLBACK_HOOK)
            continue
        group = (run.spec.run_dir, server_round, run.spec.architecture_of(task.client_id),
                 float(config.get(PROXIMAL_MU, 0.0)), id(task.message.content[ARRAYS]))
        groups.setdefault(group, []).append(task)
    for (run_dir, server_round, architecture, mu, _), members in groups.items():
        if len(members) < 2:
            OUTCOMES[(server_round, members[0].client_id)] = LockstepOutcome(FALLBACK_ALONE)
            continue
        _train_group(worker_run(run_dir), server_round, architecture, mu, members)


def _train_group(run: WorkerRun, server_round: int, architecture: str, mu: float, tasks: list[ClientTask]) -> None:
    recipe = run.spec.recipe.with_proximal_mu(mu)
    model = run.model(architecture)
    model.load_state_dict(tasks[0].message.content[ARRAYS].to_torch_state_dict(), strict=True)
    start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    input_shape = (int(run.x_train.shape[-1]), *run.x_train.shape[1:3])
    trainer = _trainer(run, architecture, model, input_shape)
    try:
        size = chunk_size(bytes_per_client(model, input_shape, recipe), free_bytes(run.device),
                          run.spec.lockstep_memory, run.spec.lockstep_clients, architecture)
    except LockstepMemoryError as error:
        for task in tasks:
            OUTCOMES[(server_round, task.client_id)] = LockstepOutcome(VECTORIZED, error=error)
        return
    limit = float(message_config(tasks[0].message).get(CLIENT_TIMEOUT, 0.0))
    for first in range(0, len(tasks), size):
        chunk = tasks[first : first + size]
        started = time.perf_counter()
        try:
            with time_limit(limit * len(chunk), chunk[0].client_id):
                inputs = [_inputs(run, model, start, server_round, task) for task in chunk]
                clients = [LockstepClient(i.x, i.y, start, i.generator, i.dropout, i.prepare_batch,
                                          i.batch_loss) for i in inputs]
                result = trainer.train(clients, recipe)
        except ClientTimeout:  # one slow client must not fail its chunk-mates: one by one, each limited
            log.warning("lockstep training of %d %s clients exceeded %g s; they train sequentially",
                        len(chunk), architecture, limit * len(chunk))
            for task in chunk:
                OUTCOMES[(server_round, task.client_id)] = LockstepOutcome(FALLBACK_SLOW)
            continue
        except Exception as error:  # noqa: BLE001 - the chunk's clients retry one by one
            log.warning("lockstep training of %d %s clients raised %s: %s; they train sequentially",
                        len(chunk), architecture, type(error).__name__, error)
            for task in chunk:
                OUTCOMES[(server_round, task.client_id)] = LockstepOutcome(FALLBACK_RAISED)
            continue
        seconds = (time.perf_counter() - started - result.compile_seconds) / len(chunk)
        for task, state, stats, client_inputs in zip(chunk, result.states, result.stats, inputs):
            stats.hook_metrics = client_inputs.report()
            OUTCOMES[(server_round, task.client_id)] = LockstepOutcome(
                VECTORIZED, state, stats, seconds, result.compile_seconds / len(chunk))


def _inputs(run: WorkerRun, model: torch.nn.Module, start: dict[str, torch.Tensor], server_round: int,
            task: ClientTask) -> TrainingInputs:
    """A client's training inputs, its hooks fresh (hooks keep per-client state until ``report``)."""
    peers = [(cid, arrays.to_torch_state_dict()) for cid, arrays in read_peers(task.message)]
    hooks = build_hooks(list(run.spec.hooks)) if run.spec.hooks else []
    if hooks:
        model.load_state_dict(start)  # the hooks' global_model: the received weights
    return LocalClient(task.client_id, run).training_inputs(model, server_round, peers, hooks)


def _trainer(run: WorkerRun, architecture: str, model: torch.nn.Module, input_shape: tuple[int, ...]) -> LockstepTrainer:
    dtype = next(model.parameters()).dtype
    key = (run.spec.run_dir, architecture, dtype, run.spec.compile)
    if key not in _TRAINERS:
        if any(k[0] != run.spec.run_dir for k in _TRAINERS):
            _TRAINERS.clear()  # one run at a time per worker: free the previous run's trainers
        _TRAINERS[key] = LockstepTrainer(model, input_shape, compile=run.spec.compile)
    return _TRAINERS[key]
