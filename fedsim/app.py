"""The fedsim ``ServerApp``: builds strategy, initial model and evaluator, then runs the round loop.

``build_server_app`` closes over a prepared run (``fedsim.experiment.prepare``) so that the
``fedsim`` CLI and the Python API can start Flower's simulation runtime with it;
``fedsim.flower_app`` wraps the same pieces for ``flwr run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedsim.experiment import PreparedRun, initial_model
from fedsim.recorder import RunRecorder
from fedsim.clients.distill import transfer_outputs
from fedsim.clients.training import SGDRecipe, seeded_generator, to_tensor, train
from fedsim.sampling import sample_size
from fedsim.server import CentralEvaluator, run_centralized, run_rounds
from fedsim.spec import PartitionIndex, TransferIndex, resolve_device
from fedsim.strategies import LatentDistillation, StrategyContext, build_strategy


@dataclass
class RunState:
    """What the server thread hands back to the caller of the simulation."""

    recorder: RunRecorder
    final_arrays: ArrayRecord | None = None
    error: BaseException | None = None


def run_state(prepared: PreparedRun) -> RunState:
    return RunState(recorder=RunRecorder(prepared.staging))


def _evaluator(prepared: PreparedRun) -> CentralEvaluator:
    """The server-side test-set evaluator (its own model instance)."""
    config = prepared.config
    test = prepared.dataset.load()
    return CentralEvaluator.build(
        initial_model(config, prepared.dataset), np.asarray(test["x_test"]), np.asarray(test["y_test"]),
        prepared.dataset.mean, prepared.dataset.std, resolve_device(config.simulation.device),
        config.evaluation.batch_size,
    )


def _progress(config_rounds: int, progress: bool, on_round: Callable[[dict], None] | None):
    """A tqdm bar over rounds showing the latest accuracy, plus the caller's callback."""
    bar = tqdm(total=config_rounds, desc="rounds", unit="round", disable=not progress, leave=True)

    def report(row: dict) -> None:
        if row["round"] > 0:
            bar.update(1)
        shown = {k: f"{row[k]:.3f}" for k in ("test_accuracy", "fed_eval_accuracy", "train_loss")
                 if isinstance(row.get(k), float) and np.isfinite(row[k])}
        bar.set_postfix(shown, refresh=True)
        if on_round:
            on_round(row)

    return bar, report


def execute(grid: Grid, prepared: PreparedRun, state: RunState, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> None:
    """The server's work for one run: strategy + initial weights + evaluator -> round loop."""
    config = prepared.config
    context = StrategyContext(config.train.lr, sample_size(
        config.partition.num_clients, config.train.fraction_train, config.train.clients_per_round))
    strategy = build_strategy(config.strategy.name, config.strategy.kwargs, context)
    evaluator = _evaluator(prepared)
    transfer_labels = None
    if isinstance(strategy, LatentDistillation):
        transfer_labels, initial = _distillation_start(prepared, strategy, evaluator, state)
    else:
        initial = ArrayRecord(initial_model(config, prepared.dataset).state_dict())
    bar, report = _progress(config.train.rounds, progress, on_round)
    try:
        state.final_arrays = run_rounds(grid, config, strategy, initial, evaluator, state.recorder, report,
                                        transfer_labels=transfer_labels)
    except BaseException as error:  # surfaced by the caller with the run directory marked failed
        state.error = error
    finally:
        bar.close()


def _distillation_start(prepared: PreparedRun, strategy: LatentDistillation, evaluator: CentralEvaluator,
                        state: RunState) -> tuple[np.ndarray | None, ArrayRecord]:
    """Transfer-set labels, and with ``distill.teacher = "server"`` the trained teacher's targets.

    The teacher has the run's ``model.name`` architecture and representation width; it trains
    with cross-entropy on the labelled transfer set for ``distill.teacher_epochs`` epochs (the
    one training loop), is evaluated on the test set (``summary.json``: teacher_test_accuracy),
    and its logits and representations on the transfer set become every round's targets.
    """
    config = prepared.config
    index = TransferIndex.load(prepared.staging)
    transfer = index.transfer
    if index.source:  # another dataset: its labels are not the clients' classes
        return None, strategy.initial_arrays()
    train_set = prepared.dataset.load()
    labels = np.asarray(train_set["y_train"][transfer], dtype=np.int64)
    if config.distill.teacher != "server":
        return labels, strategy.initial_arrays()
    device = resolve_device(config.simulation.device)
    x = to_tensor(np.asarray(train_set["x_train"][transfer]), prepared.dataset.mean, prepared.dataset.std, device)
    y = torch.from_numpy(labels.copy()).to(device)
    teacher = initial_model(config, prepared.dataset).to(device)
    t = config.train
    recipe = SGDRecipe(config.distill.teacher_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay)
    generator = seeded_generator(config.seed, 0, config.partition.num_clients, 0x7EAC)
    torch.manual_seed(generator.initial_seed())
    train(teacher, x, y, recipe, generator)
    metrics, _ = evaluator(ArrayRecord(teacher.state_dict()))
    state.recorder.extras["teacher_test_accuracy"] = metrics["test_accuracy"]
    logits, reps = transfer_outputs(teacher, x)
    strategy.set_teacher(ArrayRecord({"logits": Array(logits.astype(np.float32)), "reps": Array(reps.astype(np.float32))}))
    return labels, strategy.initial_arrays()


def execute_centralized(prepared: PreparedRun, state: RunState, progress: bool = True,
                        on_round: Callable[[dict], None] | None = None) -> None:
    """The centralized baseline in this process: union of the clients' training splits."""
    config = prepared.config
    device = resolve_device(config.simulation.device)
    split = PartitionIndex.load(prepared.staging)
    union = np.sort(split.train_indices)
    train_set = prepared.dataset.load()
    x = to_tensor(np.asarray(train_set["x_train"][union]), prepared.dataset.mean, prepared.dataset.std, device)
    y = torch.from_numpy(np.asarray(train_set["y_train"][union], dtype=np.int64)).to(device)
    model = initial_model(config, prepared.dataset).to(device)
    evaluator = _evaluator(prepared)
    bar, report = _progress(config.train.rounds, progress, on_round)
    try:
        state.final_arrays = run_centralized(config, model, x, y, evaluator, state.recorder, report)
    except BaseException as error:
        state.error = error
    finally:
        bar.close()


def build_server_app(
    jobs: list[tuple[PreparedRun, RunState]],
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ServerApp:
    """A ``ServerApp`` whose main runs :func:`execute` for each prepared run in turn."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        for index, (prepared, state) in enumerate(jobs):
            if on_start:
                on_start(index)
            execute(grid, prepared, state, progress, on_round)

    return app
