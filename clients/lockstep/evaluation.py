"""Federated evaluation of a worker's clients in batched forward passes (the vectorized engine).

Under ``engine.kind = "vectorized"``, :func:`evaluate_in_lockstep` looks at a worker's tasks
before the client runner calls the ClientApp on them, as
:func:`~fedsim.clients.lockstep.planner.train_in_lockstep` does for training. Plain evaluate tasks
of one run that received the very same ``ArrayRecord`` (a strategy sends one content to every
client it samples) ask for one model with one set of weights to be scored on several clients'
held-out splits. So the weights are loaded once, and the clients' held-out samples, concatenated,
go through the model in forward passes of ``evaluation.batch_size`` samples that cut across
client boundaries; the per-sample losses and hits are then summed per client. A hundred clients
of 50 samples are ten forwards of 512 where they were a hundred of 50 (one forward with
``evaluation.batch_size >= 5000``).

Why ``evaluation.batch_size`` and not as many samples as memory holds: it is what the sequential
engine forwards at once, so memory per forward is what it was (less, in fact: one-by-one
evaluation holds a client's whole split on the device); and on a CPU, forwards larger than a few
hundred samples are slower per sample (LeNet-5, one thread: 5000 samples in one forward took 1.5x
the time of ten forwards of 512), while a GPU gains from larger ones -- raise the setting there.

One weight set needs no :class:`~.functional.FunctionalModel`: that stacks K clients' *different*
weights for ``vmap``; with shared weights the ordinary module in eval mode computes what
one-by-one evaluation computes, on a larger batch. Clients with weights of their own (latent-
distill's ``DISTILL`` evaluations of each client's own model, personalised models) are not
grouped; they are evaluated one by one.

Each client's :class:`~fedsim.clients.training.EvalStats` is what :meth:`LocalClient.evaluate`
gives: the same samples in the same order (:meth:`LocalClient.held_out`), the same preprocessing
(:func:`~fedsim.clients.client.read_samples`: normalisation, float32, the run's device; no hook
acts on evaluation), the same model in eval mode without gradients, the same loss (the sum of
per-sample cross-entropies over the number of examples) and accuracy. Results equal one-by-one
evaluation up to float rounding -- the batch composition changes kernels' reduction order, and
the per-client loss is summed in another order (in float64) -- the tolerance the vectorized
engine already has; an accuracy differs only where that rounding flips the argmax of near-tied
logits. The replies are the sequential engine's, field for field, so ``clients.csv`` is unchanged.

Failures stay per client, on the per-client path (outcome None, the handler evaluates the
client as usual): a client whose configured behaviour keeps it out of lockstep (one failing on
purpose fails alone in the handler, with the same error as ever), a client whose held-out split
cannot be looked up (it raises again in its own handler call), a client alone in its group. A
group is one unit of work limited to ``executor.client_timeout`` times its number of clients; a
group that exceeds it, or raises, is not a failure of its clients: they are evaluated again one by
one, each under its own limit.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import MessageType

from fedsim.core.protocol import ARRAYS, CLIENT_TIMEOUT, DISTILL, RUN_DIR, ClientTask, TrainingEngine, message_config
from fedsim.ops.interrupt import check_stop

from ..client import LocalClient, read_samples
from ..handler import global_model
from ..limits import ClientTimeout, time_limit
from ..process import worker_process
from ..training import EvalStats
from ..worker import WorkerRun
from .planner import LockstepOutcome

log = logging.getLogger(__name__)


def _vectorized_evaluation(task: ClientTask) -> WorkerRun | None:
    """The run of a vectorized run's plain evaluate task (one of the global weights), else None."""
    msg = task.message
    if msg.metadata.message_type != MessageType.EVALUATE or not msg.has_content():
        return None
    config = message_config(msg)
    if config.get(RUN_DIR) is None or config.get(DISTILL, False) or ARRAYS not in msg.content.array_records:
        return None
    try:
        run = worker_process().run(str(config[RUN_DIR]))
    except Exception:  # noqa: BLE001 - e.g. a run this node cannot read: each client's handler call fails with it
        return None
    return run if run.spec.engine == "vectorized" else None


def evaluate_in_lockstep(tasks: list[ClientTask]) -> list[LockstepOutcome | None]:
    """Score the evaluate tasks that share their weights together; one outcome per task, in task order.

    None: not a vectorized run's plain evaluate task, or one left to the per-client path (see the
    module's docstring); the handler evaluates it as usual.
    """
    outcomes: list[LockstepOutcome | None] = [None] * len(tasks)
    groups: dict[tuple[str, int], list[int]] = {}  # (run, received weights) -> positions of its tasks
    for position, task in enumerate(tasks):
        run = _vectorized_evaluation(task)
        if run is None or not run.behaviours.trains_in_lockstep(task.client_id):
            continue  # e.g. a client failing on purpose: the handler fails it alone
        key = (str(message_config(task.message)[RUN_DIR]), id(task.message.content[ARRAYS]))
        groups.setdefault(key, []).append(position)
    for (run_dir, _), positions in groups.items():
        if len(positions) < 2:
            continue  # nothing to batch
        scored = _evaluate_group(worker_process().run(run_dir), [tasks[p] for p in positions])
        for position, stats in zip(positions, scored):
            if stats is not None:
                outcomes[position] = LockstepOutcome(TrainingEngine.VECTORIZED, evaluation=stats)
    return outcomes


def _evaluate_group(run: WorkerRun, tasks: list[ClientTask]) -> list[EvalStats | None]:
    """The scores of one group's clients, in task order (None: that client is evaluated on its own)."""
    held_out: list[np.ndarray | None] = []
    for task in tasks:
        try:
            held_out.append(LocalClient(task.client_id, run).held_out())
        except Exception:  # noqa: BLE001 - its own handler call raises it again, for it alone
            held_out.append(None)
    members = [k for k, indices in enumerate(held_out) if indices is not None]
    scores: list[EvalStats | None] = [None] * len(tasks)
    if not members:
        return scores
    limit = float(message_config(tasks[0].message).get(CLIENT_TIMEOUT, 0.0))
    try:
        with time_limit(limit * len(members), tasks[members[0]].client_id):
            model = global_model(run, tasks[0].message)
            together = evaluate_together(model, run, [held_out[k] for k in members], run.spec.eval_batch_size)
    except ClientTimeout:  # one slow group must not fail its clients: one by one, each limited
        log.warning("batched evaluation of %d clients exceeded %g s; they are evaluated one by one",
                    len(members), limit * len(members))
        return scores
    except Exception as error:  # noqa: BLE001 - the group's clients are evaluated one by one
        log.warning("batched evaluation of %d clients raised %s: %s; they are evaluated one by one",
                    len(members), type(error).__name__, error)
        return scores
    for k, stats in zip(members, together):
        scores[k] = stats
    return scores


@torch.no_grad()
def evaluate_together(model: torch.nn.Module, run: WorkerRun, held_out: list[np.ndarray],
                      per_forward: int) -> list[EvalStats]:
    """Each client's :func:`~fedsim.clients.training.evaluate` of ``model``, from forwards of ``per_forward`` samples.

    ``held_out``: every client's sample indices, in the order it reads them. The clients'
    samples are concatenated and cut into forwards regardless of client boundaries; per-sample
    losses, predictions and hits are split back per client afterwards.
    """
    model.eval()
    order = np.concatenate(held_out) if held_out else np.zeros(0, dtype=np.int64)
    losses, predictions, hits = [], [], []
    for start in range(0, len(order), per_forward):
        check_stop()  # Ctrl-C in this process: stop between forwards
        x, y = read_samples(run, order[start : start + per_forward])
        logits = model(x)
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        predictions.append(logits.argmax(1))
        hits.append(predictions[-1] == y)
    sizes = [len(indices) for indices in held_out]
    if not losses:
        return [_scores(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
                for _ in sizes]
    per_client = zip(*(torch.cat(values).cpu().split(sizes) for values in (losses, predictions, hits)))
    return [_scores(loss, prediction, hit) for loss, prediction, hit in per_client]


def _scores(loss: torch.Tensor, prediction: torch.Tensor, hit: torch.Tensor) -> EvalStats:
    """One client's statistics from its per-sample losses, predictions and hits, as ``training.evaluate`` reports them."""
    n = len(loss)
    if n == 0:
        return EvalStats(0, float("nan"), float("nan"), np.zeros(0, dtype=np.int64))
    return EvalStats(num_examples=n, loss=float(loss.double().sum()) / n, accuracy=float(hit.float().mean()),
                     predictions=prediction.numpy())
