"""The centralized baseline: the same model and recipe on the union of the clients' data.

Each "round" is ``local_epochs`` epochs over the union, so ``rounds`` rounds spend the same
number of epochs as a federated run in which every client trains every round. It runs in this
process (no clients, no runtime) and writes the same tables, with the same central evaluation
(:class:`fedsim.methods.evaluation.CentralEvaluation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord

from fedsim.core.checkpoint import Checkpoint
from fedsim.clients.training import seeded_generator, train
from fedsim.methods.evaluation import CentralEvaluation
from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.ops.interrupt import check_stop
from fedsim.core.screening import check_finite
from fedsim.models import FedsimNet
from fedsim.core.recipe import SGDRecipe
from fedsim.outputs.recorder import RunRecorder


def run_centralized(model: FedsimNet, x: torch.Tensor, y: torch.Tensor, recipe: SGDRecipe, seed: int,
                    rounds: int, stream: int, evaluation: CentralEvaluation | RoundExtension, recorder: RunRecorder,
                    on_round: Callable[[dict], None] | None = None, checkpoint_every: int = 0,
                    resume: Checkpoint | None = None) -> ArrayRecord:
    """Train ``model`` on ``(x, y)`` for ``rounds`` x ``recipe.epochs`` epochs; one row per round.

    ``stream`` is the generator's client-id slot (one no client uses), so the shuffling is
    determined by (seed, round, stream). Checkpoints and ``resume`` work as in
    :class:`fedsim.core.loop.RoundLoop` (each round starts a fresh optimizer, so the weights are
    the whole training state).
    """
    def finish(row: dict) -> None:
        recorder.add_round(row)
        if on_round:
            on_round(row)

    def checkpoint(server_round: int) -> None:
        Checkpoint.capture(server_round, arrays, None, evaluation, recorder).write(recorder.folder)

    arrays = ArrayRecord(model.state_dict())
    first = 1
    if resume is not None:
        first = resume.server_round + 1
        evaluation.on_run_start(RunContext(rounds, 0, recorder, resume.server_round), arrays)
        arrays = resume.restore(None, evaluation, recorder)
        model.load_state_dict(arrays.to_torch_state_dict())
    else:
        initial = evaluation.on_run_start(RunContext(rounds, 0, recorder), arrays)
        if initial:
            finish({"round": 0, "bytes_down": 0, "bytes_up": 0, "wall_seconds": 0.0, **initial})
        if checkpoint_every:
            checkpoint(0)
    for server_round in range(first, rounds + 1):
        check_stop()
        started = time.perf_counter()
        generator = seeded_generator(seed, server_round, stream)
        stats = train(model, x, y, recipe, generator)
        arrays = ArrayRecord(model.state_dict())
        check_finite(server_round, arrays, recipe.lr)
        record = RoundRecord(server_round, {"round": server_round, "train_loss": stats.loss,
                                            "train_accuracy": stats.accuracy, "bytes_down": 0, "bytes_up": 0})
        evaluation.on_round_end(record, arrays)
        record.row["wall_seconds"] = time.perf_counter() - started
        finish(record.row)
        if checkpoint_every and (server_round % checkpoint_every == 0 or server_round == rounds):
            checkpoint(server_round)
    return arrays
