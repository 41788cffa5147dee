"""The fedsim ``ServerApp``: builds strategy, initial model and evaluator, then runs the round loop.

``build_server_app`` closes over a prepared run (``fedsim.experiment.prepare``) so that the
``fedsim`` CLI and the Python API can start Flower's simulation runtime with it;
``fedsim.flower_app`` wraps the same pieces for ``flwr run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedsim.experiment import PreparedRun, initial_model
from fedsim.recorder import RunRecorder
from fedsim.server import CentralEvaluator, run_rounds
from fedsim.spec import resolve_device
from fedsim.strategies import build_strategy


@dataclass
class RunState:
    """What the server thread hands back to the caller of the simulation."""

    recorder: RunRecorder
    final_arrays: ArrayRecord | None = None
    error: BaseException | None = None


def run_state(prepared: PreparedRun) -> RunState:
    return RunState(recorder=RunRecorder(prepared.staging))


def execute(grid: Grid, prepared: PreparedRun, state: RunState, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> None:
    """The server's work for one run: strategy + initial weights + evaluator -> round loop."""
    config = prepared.config
    strategy = build_strategy(config.strategy.name, config.strategy.kwargs)
    model = initial_model(config, prepared.dataset)
    initial = ArrayRecord(model.state_dict())
    test = prepared.dataset.load()
    evaluator = CentralEvaluator.build(
        model, np.asarray(test["x_test"]), np.asarray(test["y_test"]), prepared.dataset.mean,
        prepared.dataset.std, resolve_device(config.simulation.device), config.evaluation.batch_size,
    )
    bar = tqdm(total=config.train.rounds, desc="rounds", unit="round", disable=not progress, leave=True)

    def report(row: dict) -> None:
        if row["round"] > 0:
            bar.update(1)
        shown = {k: f"{row[k]:.3f}" for k in ("test_accuracy", "fed_eval_accuracy", "train_loss")
                 if isinstance(row.get(k), float) and np.isfinite(row[k])}
        bar.set_postfix(shown, refresh=True)
        if on_round:
            on_round(row)

    try:
        state.final_arrays = run_rounds(grid, config, strategy, initial, evaluator, state.recorder, report)
    except BaseException as error:  # surfaced by the caller with the run directory marked failed
        state.error = error
    finally:
        bar.close()


def build_server_app(prepared: PreparedRun, state: RunState, progress: bool = True,
                     on_round: Callable[[dict], None] | None = None) -> ServerApp:
    """A ``ServerApp`` whose main runs :func:`execute` for ``prepared``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        execute(grid, prepared, state, progress, on_round)

    return app
