"""The server side of one run: strategy, method, extensions and executor, handed to the round loop.

:func:`execute` assembles a prepared run's plan (:mod:`fedsim.runs.prepare`) -- the strategy
it builds, the method's start (initial arrays and its round extensions), the privacy
accounting, the hooks' extensions, the scheduler -- into a :class:`fedsim.core.loop.RoundLoop`
and runs it through the executor it is given. :func:`build_server_app` wraps it in a Flower ``ServerApp``
whose executor talks to Flower's runtime; the in-process executor calls it directly
(:func:`fedsim.runs.experiment.run_many`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from tqdm.auto import tqdm

from fedsim.clients.hooks import build_hooks, round_extensions
from fedsim.clients.node import run_files
from fedsim.clients.training import to_tensor
from fedsim.core.checkpoint import Checkpoint
from fedsim.core.extension import ExtensionChain, RoundExtension
from fedsim.core.schedule import EvaluationSchedule
from fedsim.core.loop import RoundLoop
from fedsim.core.protocol import CLIENT_TIMEOUT, RUN_DIR
from fedsim.core.spec import resolve_device
from fedsim.datasets import dataset_digest
from fedsim.methods.base import ServerSetup
from fedsim.methods.evaluation import CentralEvaluation, CentralEvaluator
from fedsim.methods.privacy.accounting import privacy_extensions
from fedsim.ops.interrupt import RunInterrupted, stop_requested
from fedsim.outputs.recorder import RunRecorder
from fedsim.outputs.tensorboard import tensorboard_log
from fedsim.timing.setup import build_scheduler

from .centralized import run_centralized
from .executors import CohortExecutor, Executor, GridExecutor, NodePool
from .plan import RunPlan
from .prepare import initial_model


@dataclass
class RunState:
    """What the server side hands back to the caller of the simulation."""

    recorder: RunRecorder
    extensions: list[RoundExtension] = field(default_factory=list)  # the user's, after the run's own
    resume: Checkpoint | None = None  # continue after this checkpoint's round
    final_arrays: ArrayRecord | None = None
    error: BaseException | None = None


def run_state(plan: RunPlan, extensions: list[RoundExtension] | None = None,
              resume: Checkpoint | None = None) -> RunState:
    return RunState(recorder=RunRecorder(plan.staging, resume=resume is not None),
                    extensions=list(extensions or []), resume=resume)


def round_loop(plan: RunPlan, strategy: Strategy, executor: Executor, extensions: list[RoundExtension],
               recorder: RunRecorder, on_round: Callable[[dict], None] | None = None) -> RoundLoop:
    """The plan's round loop: its scheduler, its evaluation schedule, and what every task carries."""
    config = plan.config
    limit = config.executor.client_timeout or config.executor.round_timeout
    return RoundLoop(
        strategy, executor, build_scheduler(plan),
        EvaluationSchedule(config.seed, plan.num_clients, plan.clients_per_eval, config.evaluation.federated_every,
                           config.train.rounds),
        recorder, rounds=config.train.rounds, seed=config.seed, num_clients=plan.num_clients, extensions=extensions,
        task_config={RUN_DIR: str(plan.staging.resolve()), CLIENT_TIMEOUT: float(limit)},
        min_success_fraction=config.train.min_success_fraction, checkpoint_every=config.output.checkpoint_every,
        lr=config.train.lr, on_round=on_round)


def server_setup(plan: RunPlan, recorder: RunRecorder) -> ServerSetup:
    """What a method's server side may use: the plan, an evaluator (its own model), the recorder."""
    config, dataset = plan.config, plan.dataset
    device = resolve_device(config.runtime.device)
    test = dataset.load()
    evaluator = CentralEvaluator.build(
        initial_model(config, dataset), np.asarray(test["x_test"]), np.asarray(test["y_test"]),
        dataset.mean, dataset.std, device, config.evaluation.batch_size,
    )
    return ServerSetup(plan, evaluator, recorder, device, lambda: initial_model(config, dataset))


def _progress(rounds: int, progress: bool, on_round: Callable[[dict], None] | None, done: int = 0):
    """A tqdm bar over rounds (``done`` of them finished before a resume) showing the latest
    accuracy, plus the caller's callback."""
    bar = tqdm(total=rounds, initial=done, desc="rounds", unit="round", disable=not progress, leave=True)

    def report(row: dict) -> None:
        if row["round"] > 0:
            bar.update(1)
        shown = {k: f"{row[k]:.3f}" for k in ("test_accuracy", "fed_eval_accuracy", "train_loss")
                 if isinstance(row.get(k), float) and np.isfinite(row[k])}
        bar.set_postfix(shown, refresh=True)
        if on_round:
            on_round(row)

    return bar, report


def execute(plan: RunPlan, state: RunState, executor: Executor, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> None:
    """The server's work for one federated run; an exception is kept in ``state.error``."""
    config = plan.config
    bar, report = _progress(config.train.rounds, progress, on_round, state.resume.server_round if state.resume else 0)
    board = tensorboard_log(config.output.tensorboard, plan.counts, plan.dataset.class_names)
    try:
        strategy = plan.strategy.build()
        setup = server_setup(plan, state.recorder)
        initial, extensions = plan.method.start(strategy, setup)
        extensions += privacy_extensions(plan, strategy)  # DP strategies: (epsilon, delta) per round
        extensions += round_extensions(build_hooks(list(config.hooks))) + executor.round_extensions()
        extensions += state.extensions + ([board] if board else [])  # last: it logs the rows the others filled
        loop = round_loop(plan, strategy, executor, extensions, state.recorder, report)
        state.final_arrays = loop.run(initial, resume=state.resume)
    except BaseException as error:  # surfaced by the caller with the run directory marked failed
        state.error = error
    finally:
        bar.close()
        if board:  # every exit path: the event files are complete before the run directory is renamed
            board.close()


def execute_centralized(plan: RunPlan, state: RunState, progress: bool = True,
                        on_round: Callable[[dict], None] | None = None) -> None:
    """The centralized baseline in this process: the union of the clients' training splits."""
    config = plan.config
    bar, report = _progress(config.train.rounds, progress, on_round, state.resume.server_round if state.resume else 0)
    board = tensorboard_log(config.output.tensorboard, plan.counts, plan.dataset.class_names)
    try:
        setup = server_setup(plan, state.recorder)
        union = np.sort(plan.partition.train_indices)
        train_set = plan.dataset.load()
        x = to_tensor(np.asarray(train_set["x_train"][union]), plan.dataset.mean, plan.dataset.std, setup.device)
        y = torch.from_numpy(np.asarray(train_set["y_train"][union], dtype=np.int64)).to(setup.device)
        evaluation = CentralEvaluation(setup.evaluator, config.evaluation.centralized_every)
        state.final_arrays = run_centralized(
            setup.build_model().to(setup.device), x, y, plan.recipe, config.seed, config.train.rounds,
            plan.num_clients, ExtensionChain([evaluation, board]) if board else evaluation,
            state.recorder, report, checkpoint_every=config.output.checkpoint_every, resume=state.resume)
    except BaseException as error:
        state.error = error
    finally:
        bar.close()
        if board:
            board.close()


def flower_executor(grid: Grid, plan: RunPlan, workers: int | None = None) -> Executor:
    """The executor on Flower's runtime that ``executor.kind`` names.

    ``cohort``: ``workers`` worker nodes (default: the plan's; 0: every node of the federation,
    as many as join), tasks balanced by each client's training samples or, on nodes with their
    own data, by shard; partial means with ``executor.streaming``; ``flower``: one node per client.
    """
    config = plan.config
    executor, runtime = config.executor, config.runtime
    if executor.kind == "cohort":
        stream_key = (plan.strategy.stream_key or "") if executor.streaming else ""
        pool = NodePool(grid, str(plan.staging.resolve()), lambda: run_files(plan.staging),
                        lambda: dataset_digest(plan.dataset), runtime.node_wait, plan.num_clients,
                        expected=plan.workers if workers is None else workers)
        return CohortExecutor(pool, plan.train_sizes, executor.round_timeout, stream_key,
                              max(1, int(runtime.num_cpus_per_client)))
    return GridExecutor(grid, plan.num_clients, executor.round_timeout, runtime.node_wait)


def build_server_app(
    jobs: list[tuple[RunPlan, RunState]],
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ServerApp:
    """A ``ServerApp`` that executes each prepared run in turn through Flower's runtime."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        for index, (plan, state) in enumerate(jobs):
            if stop_requested():  # Ctrl-C: the runs not started yet do not start
                state.error = RunInterrupted("interrupted by the user (Ctrl-C) before it started")
                continue
            if on_start:
                on_start(index)
            execute(plan, state, flower_executor(grid, plan), progress, on_round)

    return app
