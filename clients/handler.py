"""The client-side handler: what a node does with a train or evaluate task for one client.

The ClientApp (:mod:`fedsim.clients.app`) goes through :func:`handle_train` and
:func:`handle_evaluate`: they look up the run's per-process resources (the process owner's open
run, :meth:`fedsim.clients.process.WorkerProcess.run`), build the :class:`LocalClient` for the
client id and reply in the protocol's format (:mod:`fedsim.core.protocol`). A worker running many
clients calls :func:`train_update` directly for the training tasks no mod acts on
(:func:`trains_direct`) and keeps their weights stacked (:class:`fedsim.clients.runner.ClientRunner`).
A client the vectorized engine already trained (or sent back to the sequential engine), or
already evaluated with the others that received its weights, comes with its
:class:`~fedsim.clients.lockstep.planner.LockstepOutcome`, passed in by the runner: the handler
replies from it instead of training or evaluating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord, Message, MessageType
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsim.core.arrays import nonfinite_keys, nonfinite_update
from fedsim.core.protocol import (
    ARRAYS,
    CLIENT_TIMEOUT,
    CLIENT_SECONDS,
    COMPILE_SECONDS,
    CONTROL_DELTA,
    DISTILL,
    ENGINE,
    EVAL_ACCURACY,
    EVAL_LOSS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    RUN_DIR,
    SEND_OUTPUTS,
    SERVER_ROUND,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TRAIN_STEPS,
    TrainingEngine,
    message_config,
    read_peers,
    reply,
)

from .client import LocalClient
from .clipping import ClientClipping
from .distill import distill_round, evaluate_views
from .feddyn import ClientDynamics
from .limits import time_limit
from .moon import contrastive_objective, keep_local_model
from .process import worker_process
from .scaffold import ClientControl

if TYPE_CHECKING:
    from .lockstep.planner import LockstepOutcome
    from .worker import WorkerRun


def _client(msg: Message, client_id: int, phase: str) -> LocalClient:
    """The client a task is for, after the behaviour configured for it (e.g. failing on purpose)."""
    run = worker_process().run(str(message_config(msg)[RUN_DIR]))
    run.behaviours.before_task(client_id, phase)
    return LocalClient(client_id, run)


def global_model(run: WorkerRun, msg: Message):  # noqa: ANN201 - a FedsimNet
    """The run's model (the worker's cached instance) holding the weights the task received.

    What a client trains from and what federated evaluation scores, one client at a time here or
    a group at once (:mod:`fedsim.clients.lockstep.evaluation`).
    """
    model = run.model()
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict(), strict=True)
    return model


class DivergedUpdate(ValueError):
    """The client's update has NaN or infinite values: it must not be aggregated."""


def _checked(arrays: ArrayRecord) -> ArrayRecord:
    bad = nonfinite_keys(arrays)
    if bad:
        raise DivergedUpdate(nonfinite_update(bad))
    return arrays


def _limit(msg: Message) -> float:
    """Seconds this client may take (the server sends ``executor.client_timeout``)."""
    return float(message_config(msg).get(CLIENT_TIMEOUT, 0.0)) if msg.has_content() else 0.0


@dataclass
class TrainUpdate:
    """What training one client produced, before it is put in any message.

    ``state``: the trained weights (weight-averaging methods; the client's own tensors, safe to
    keep); ``outputs``: what a distillation client sends instead; ``metrics``: its MetricRecord;
    ``extras``: other arrays it sends beside its weights, by record name (SCAFFOLD's
    :data:`~fedsim.core.protocol.CONTROL_DELTA`), stacked by a worker like the weights.
    """

    metrics: dict[str, float | int]
    state: dict[str, torch.Tensor] | None = None
    outputs: ArrayRecord | None = None
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def trains_direct(msg: Message) -> bool:
    """Whether a task can skip fedsim's ClientApp: a training task whose reply is weights.

    Distillation rounds reply with outputs, not weights. The ClientApp's one mod, client-side DP
    clipping, acts only on a train config with a clipping norm, and the worker applies it itself
    (:class:`fedsim.clients.clipping.ClientClipping`) when the mod's preconditions hold. Every
    such task gives the same reply as through the ClientApp, so a worker may call
    :func:`train_update` directly and keep the weights stacked (:mod:`fedsim.core.stack`).
    """
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return False
    config = message_config(msg)
    if config.get(DISTILL, False):
        return False
    return KEY_CLIPPING_NORM not in config or ClientClipping.fits_fast_path(msg)


def train_update(msg: Message, client_id: int, lockstep: LockstepOutcome | None = None) -> TrainUpdate:
    """Train client ``client_id`` on the task ``msg``, stopped after ``executor.client_timeout`` seconds.

    ``lockstep``: the vectorized engine's outcome for this task, if it had one
    (:func:`fedsim.clients.lockstep.planner.train_in_lockstep`): the client's result, or why it
    trains here after all.
    """
    with time_limit(_limit(msg), client_id):
        return _train(msg, client_id, lockstep)


def handle_train(msg: Message, client_id: int, lockstep: LockstepOutcome | None = None) -> Message:
    """Train client ``client_id`` on the task ``msg`` (or reply from ``lockstep``); reply with its arrays and metrics.

    The client is stopped after ``executor.client_timeout`` seconds (:func:`time_limit`), and
    an update with NaN or infinite values is refused here, before any worker could sum it.
    """
    update = train_update(msg, client_id, lockstep)
    arrays = ArrayRecord(update.state) if update.state is not None else update.outputs
    answer = reply(msg, client_id, update.metrics, _checked(arrays) if arrays is not None else None)
    for name, extra in update.extras.items():
        answer.content[name] = _checked(ArrayRecord(extra))
    return answer


def _engine(lockstep: LockstepOutcome | None) -> dict[str, float | int]:
    """The ``fedsim.engine`` metric of a client: sequential, or what the vectorized engine said."""
    return {ENGINE: int(TrainingEngine.SEQUENTIAL if lockstep is None else lockstep.engine)}


def _train(msg: Message, client_id: int, lockstep: LockstepOutcome | None) -> TrainUpdate:
    started = time.perf_counter()
    client = _client(msg, client_id, "train")
    config = message_config(msg)
    server_round = int(config[SERVER_ROUND])
    if config.get(DISTILL, False):
        values, outputs = distill_round(client, msg.content[ARRAYS], server_round, bool(config.get(SEND_OUTPUTS, True)))
        engine = _engine(lockstep)
        return TrainUpdate({**values, CLIENT_SECONDS: time.perf_counter() - started, **engine}, outputs=outputs)
    if lockstep is not None and lockstep.error is not None:
        raise lockstep.error
    control = ClientControl.of_task(client.run, msg, client_id)  # SCAFFOLD's c and c_i (None: not SCAFFOLD)
    dynamics = ClientDynamics.of_task(client.run, msg, client_id)  # FedDyn's alpha_k and H_k (None: not FedDyn)
    recipe = client.run.spec.recipe.with_proximal_mu(float(config.get(PROXIMAL_MU, 0.0)))
    if dynamics is not None:
        recipe = dynamics.recipe(recipe)
    if lockstep is not None and lockstep.state is not None:  # trained in lockstep (fedsim.clients.lockstep)
        stats, state, engine = lockstep.stats, lockstep.state, _engine(lockstep)
        seconds = lockstep.seconds + time.perf_counter() - started
        if lockstep.compile_seconds:
            engine[COMPILE_SECONDS] = lockstep.compile_seconds
    else:
        model = global_model(client.run, msg)
        peers = [(cid, arrays.to_torch_state_dict()) for cid, arrays in read_peers(msg)]
        contrastive = contrastive_objective(client.run, client_id, model, config)  # MOON's tasks only
        stats = client.fit(model, server_round, recipe, peers=peers, offset=control.offset if control else None,
                           contrastive=contrastive,
                           gradient_offset=dynamics.gradient_offset if dynamics else None)
        # the worker's model is trained again for its next client: this client's weights are copied out
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        if contrastive is not None:
            keep_local_model(client.run, client_id, state)
        engine = _engine(lockstep)
        seconds = time.perf_counter() - started
    extras = {}
    if control is not None:  # option II: c_i+ stored, delta c_i sent
        extras[CONTROL_DELTA] = control.finish(client.run, msg, state, stats.steps, recipe.lr)
    if dynamics is not None:  # H_k <- H_k + (w_k - w_cloud), stored
        dynamics.finish(client.run, state)
    metrics = {NUM_EXAMPLES: stats.num_examples, TRAIN_LOSS: stats.loss, TRAIN_ACCURACY: stats.accuracy,
               TRAIN_STEPS: stats.steps, CLIENT_SECONDS: seconds, **engine, **stats.hook_metrics}
    return TrainUpdate(metrics, state=state, extras=extras)


def handle_evaluate(msg: Message, client_id: int, lockstep: LockstepOutcome | None = None) -> Message:
    """Evaluate the task's weights (or, for distillation, the client's own model) on its held-out data.

    ``lockstep``: the vectorized engine's outcome for this task, if it had one
    (:func:`fedsim.clients.lockstep.evaluation.evaluate_in_lockstep`): the client's scores from
    its group's batched evaluation, replied in the same form.
    """
    with time_limit(_limit(msg), client_id):
        return _evaluate(msg, client_id, lockstep)


def _evaluate(msg: Message, client_id: int, lockstep: LockstepOutcome | None) -> Message:
    client = _client(msg, client_id, "evaluate")  # its configured behaviour acts here, whichever engine scored it
    if message_config(msg).get(DISTILL, False):
        return reply(msg, client_id, evaluate_views(client))
    if lockstep is not None and lockstep.evaluation is not None:
        stats = lockstep.evaluation
    else:
        stats = client.evaluate(global_model(client.run, msg))
    return reply(msg, client_id, {NUM_EXAMPLES: stats.num_examples, EVAL_LOSS: stats.loss,
                                  EVAL_ACCURACY: stats.accuracy})
