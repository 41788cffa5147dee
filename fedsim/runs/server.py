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

from fedsim.clients.hooks import HookStatistics, build_hooks, round_extensions
from fedsim.clients.lockstep.columns import EngineColumns
from fedsim.clients.node import run_files
from fedsim.clients.training import to_tensor
from fedsim.core.checkpoint import Checkpoint
from fedsim.core.extension import ExtensionChain, RoundExtension
from fedsim.core.schedule import EvaluationSchedule
from fedsim.core.loop import RoundLoop
from fedsim.core.protocol import CLIENT_TIMEOUT, RUN_DIR
from fedsim.datasets import dataset_digest
from fedsim.methods.evaluation import CentralEvaluation, CentralEvaluator
from fedsim.methods.privacy.accounting import privacy_extensions
from fedsim.ops.interrupt import stop_requested
from fedsim.outputs.recorder import RunRecorder
from fedsim.outputs.rounds_without_clients import RoundsWithoutClients
from fedsim.outputs.tensorboard import tensorboard_log
from fedsim.timing.setup import build_scheduler

from .centralized import run_centralized
from .executors import CohortExecutor, Executor, GridExecutor, NodePool
from .plan import RunPlan


@dataclass
class RunOutcome:
    """What executing a run produced: the final arrays and the recorder, or the error that stopped it."""

    recorder: RunRecorder
    final_arrays: ArrayRecord | None = None
    error: BaseException | None = None


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


def execute(plan: RunPlan, executor: Executor, extensions: list[RoundExtension] | None = None,
            resume: Checkpoint | None = None, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> RunOutcome:
    """The server's work for one prepared federated run; never raises for the run's own failure.

    ``extensions`` are the caller's round extensions (after the run's own); with ``resume``
    the run continues after that checkpoint. An exception that stops the run is the outcome's
    ``error``, for the caller to publish the run directory as failed or interrupted.
    """
    config = plan.config
    outcome = RunOutcome(RunRecorder(plan.staging, resume=resume is not None))
    bar, report = _progress(config.train.rounds, progress, on_round, resume.server_round if resume else 0)
    board = tensorboard_log(config.output.tensorboard, plan.counts, plan.dataset.class_names)
    try:
        strategy = plan.strategy.build()
        initial, method_extensions = plan.method.start(strategy, plan, outcome.recorder)
        own = [EngineColumns(), *method_extensions]  # first: it reads the replies before any other extension
        own += privacy_extensions(plan, strategy)  # DP strategies: (epsilon, delta) per round
        own += round_extensions(build_hooks(list(config.hooks))) + executor.round_extensions()
        if getattr(strategy, "clients_report_hook_metrics", False) and not config.hooks:
            own.append(HookStatistics())  # e.g. MOON's contrastive loss per client -> hooks.csv
        own.append(RoundsWithoutClients.of(plan))  # says so when a round aggregates no client
        own += list(extensions or []) + ([board] if board else [])  # last: it logs the rows the others filled
        loop = round_loop(plan, strategy, executor, own, outcome.recorder, report)
        outcome.final_arrays = loop.run(initial, resume=resume)
    except BaseException as error:  # surfaced by the caller with the run directory marked failed
        outcome.error = error
    finally:
        bar.close()
        if board:  # every exit path: the event files are complete before the run directory is renamed
            board.close()
    return outcome


def execute_centralized(plan: RunPlan, resume: Checkpoint | None = None, progress: bool = True,
                        on_round: Callable[[dict], None] | None = None) -> RunOutcome:
    """The centralized baseline in this process: the union of the clients' training splits."""
    config = plan.config
    outcome = RunOutcome(RunRecorder(plan.staging, resume=resume is not None))
    bar, report = _progress(config.train.rounds, progress, on_round, resume.server_round if resume else 0)
    board = tensorboard_log(config.output.tensorboard, plan.counts, plan.dataset.class_names)
    try:
        device = plan.server_device
        union = np.sort(plan.partition.train_indices)
        train_set = plan.dataset.load()
        x = to_tensor(np.asarray(train_set["x_train"][union]), plan.dataset.mean, plan.dataset.std, device)
        y = torch.from_numpy(np.asarray(train_set["y_train"][union], dtype=np.int64)).to(device)
        evaluation = CentralEvaluation(CentralEvaluator.of(plan), config.evaluation.centralized_every)
        outcome.final_arrays = run_centralized(
            plan.initial_model().to(device), x, y, plan.recipe, config.seed, config.train.rounds,
            plan.num_clients, ExtensionChain([evaluation, board]) if board else evaluation,
            outcome.recorder, report, checkpoint_every=config.output.checkpoint_every, resume=resume)
    except BaseException as error:
        outcome.error = error
    finally:
        bar.close()
        if board:
            board.close()
    return outcome


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
    jobs: list[Job],
    outcomes: dict[int, RunOutcome],
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ServerApp:
    """A ``ServerApp`` that executes each job in turn through Flower's runtime, into ``outcomes``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        for job in jobs:
            if stop_requested():  # Ctrl-C: the runs not started yet do not start
                continue
            if on_start:
                on_start(job.index)
            outcomes[job.index] = execute(job.plan, flower_executor(grid, job.plan), job.extensions, job.resume,
                                          progress, on_round)

    return app


@dataclass
class Job:
    """A prepared run waiting to execute: its position among the caller's runs, its plan, the
    caller's round extensions and, for a resumed run, the checkpoint it continues from."""

    index: int
    plan: RunPlan
    extensions: list[RoundExtension] = field(default_factory=list)
    resume: Checkpoint | None = None
