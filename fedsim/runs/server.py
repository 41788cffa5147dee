"""The server side of one run: strategy, method, extensions and executor, handed to the round loop.

:func:`execute` assembles a prepared run (:mod:`fedsim.runs.prepare`) -- the strategy by name, the
method's start (initial arrays and its round extensions), the hooks' extensions, the loop
settings -- and drives :func:`fedsim.core.loop.run_rounds` through the executor it is given.
:func:`build_server_app` wraps it in a Flower ``ServerApp`` whose executor talks to Flower's
runtime; the in-process executor calls it directly (:func:`fedsim.runs.experiment.run_many`).
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

from fedsim.runs.centralized import run_centralized
from fedsim.core.checkpoint import Checkpoint
from fedsim.clients.hooks import build_hooks, round_extensions
from fedsim.clients.training import to_tensor
from fedsim.config import ExperimentConfig
from fedsim.methods.evaluation import CentralEvaluation, CentralEvaluator
from fedsim.datasets import dataset_digest
from fedsim.clients.node import run_files
from fedsim.runs.executors import CohortExecutor, Executor, GridExecutor, NodePool
from fedsim.core.extension import ExtensionChain, RoundExtension
from fedsim.ops.interrupt import RunInterrupted, stop_requested
from fedsim.core.loop import LoopSettings, run_rounds
from fedsim.methods import ServerSetup, method_for
from fedsim.runs.prepare import PreparedRun, initial_model
from fedsim.methods.privacy import privacy_extensions
from fedsim.core.protocol import CLIENT_TIMEOUT, FAIL_CLIENTS, RUN_DIR
from fedsim.outputs.recorder import RunRecorder
from fedsim.core.sampling import sample_size
from fedsim.runs.simulate import worker_count
from fedsim.core.spec import PartitionIndex, RunSpec, resolve_device
from fedsim.timing.setup import build_scheduler
from fedsim.strategies import StrategyContext, build_strategy, stream_weight_key
from fedsim.outputs.tensorboard import tensorboard_log


@dataclass
class RunState:
    """What the server side hands back to the caller of the simulation."""

    recorder: RunRecorder
    extensions: list[RoundExtension] = field(default_factory=list)  # the user's, after the run's own
    resume: Checkpoint | None = None  # continue after this checkpoint's round
    final_arrays: ArrayRecord | None = None
    error: BaseException | None = None


def run_state(prepared: PreparedRun, extensions: list[RoundExtension] | None = None,
              resume: Checkpoint | None = None) -> RunState:
    return RunState(recorder=RunRecorder(prepared.staging, resume=resume is not None),
                    extensions=list(extensions or []), resume=resume)


def loop_settings(config: ExperimentConfig, run_dir: str) -> LoopSettings:
    """The round loop's parameters for ``config`` (clients find the run's files in ``run_dir``)."""
    n, t, e, sim = config.partition.num_clients, config.train, config.evaluation, config.simulation
    base_config: dict = {RUN_DIR: run_dir}
    if sim.fail_clients:
        base_config[FAIL_CLIENTS] = list(sim.fail_clients)
    base_config[CLIENT_TIMEOUT] = float(sim.client_timeout or sim.round_timeout)
    return LoopSettings(
        seed=config.seed, rounds=t.rounds, num_clients=n,
        clients_per_round=sample_size(n, t.fraction_train, t.clients_per_round),
        clients_per_eval=sample_size(n, e.fraction_evaluate, e.clients_per_eval),
        federated_every=e.federated_every, min_success_fraction=sim.min_success_fraction,
        base_config=base_config, checkpoint_every=config.output.checkpoint_every, lr=t.lr,
    )


def strategy_for(config: ExperimentConfig) -> Strategy:
    """The run's strategy, built by name with the defaults it derives from the experiment."""
    context = StrategyContext(config.train.lr, sample_size(
        config.partition.num_clients, config.train.fraction_train, config.train.clients_per_round))
    return build_strategy(config.strategy.name, config.strategy.kwargs, context)


def server_setup(prepared: PreparedRun, recorder: RunRecorder) -> ServerSetup:
    """What a method's server side may use: data, evaluator (its own model), recorder, recipe."""
    config, dataset = prepared.config, prepared.dataset
    device = resolve_device(config.simulation.device)
    test = dataset.load()
    evaluator = CentralEvaluator.build(
        initial_model(config, dataset), np.asarray(test["x_test"]), np.asarray(test["y_test"]),
        dataset.mean, dataset.std, device, config.evaluation.batch_size,
    )
    return ServerSetup(config, dataset, prepared.staging, evaluator, recorder, device,
                       RunSpec.load(prepared.staging).recipe, lambda: initial_model(config, dataset))


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


def execute(prepared: PreparedRun, state: RunState, executor: Executor, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> None:
    """The server's work for one federated run; an exception is kept in ``state.error``."""
    config = prepared.config
    bar, report = _progress(config.train.rounds, progress, on_round, state.resume.server_round if state.resume else 0)
    board = tensorboard_log(config.output.tensorboard, prepared.counts, prepared.dataset.class_names)
    try:
        strategy = strategy_for(config)
        setup = server_setup(prepared, state.recorder)
        initial, extensions = method_for(config.strategy.name).start(strategy, setup)
        extensions += privacy_extensions(config, strategy)  # DP strategies: (epsilon, delta) per round
        extensions += round_extensions(build_hooks(list(config.hooks))) + executor.round_extensions()
        extensions += state.extensions + ([board] if board else [])  # last: it logs the rows the others filled
        sizes = np.diff(PartitionIndex.load(prepared.staging).train_offsets)
        scheduler = build_scheduler(config, prepared.staging, strategy, method_for(config.strategy.name), sizes,
                                    prepared.dataset.num_classes)
        state.final_arrays = run_rounds(strategy, executor, initial,
                                        loop_settings(config, str(prepared.staging.resolve())),
                                        state.recorder, extensions, report, resume=state.resume, scheduler=scheduler)
    except BaseException as error:  # surfaced by the caller with the run directory marked failed
        state.error = error
    finally:
        bar.close()
        if board:  # every exit path: the event files are complete before the run directory is renamed
            board.close()


def execute_centralized(prepared: PreparedRun, state: RunState, progress: bool = True,
                        on_round: Callable[[dict], None] | None = None) -> None:
    """The centralized baseline in this process: the union of the clients' training splits."""
    config = prepared.config
    bar, report = _progress(config.train.rounds, progress, on_round, state.resume.server_round if state.resume else 0)
    board = tensorboard_log(config.output.tensorboard, prepared.counts, prepared.dataset.class_names)
    try:
        setup = server_setup(prepared, state.recorder)
        union = np.sort(PartitionIndex.load(prepared.staging).train_indices)
        train_set = prepared.dataset.load()
        x = to_tensor(np.asarray(train_set["x_train"][union]), prepared.dataset.mean, prepared.dataset.std,
                      setup.device)
        y = torch.from_numpy(np.asarray(train_set["y_train"][union], dtype=np.int64)).to(setup.device)
        evaluation = CentralEvaluation(setup.evaluator, config.evaluation.centralized_every)
        state.final_arrays = run_centralized(
            setup.build_model().to(setup.device), x, y, setup.recipe, config.seed, config.train.rounds,
            config.partition.num_clients, ExtensionChain([evaluation, board]) if board else evaluation,
            state.recorder, report, checkpoint_every=config.output.checkpoint_every, resume=state.resume)
    except BaseException as error:
        state.error = error
    finally:
        bar.close()
        if board:
            board.close()


def flower_executor(grid: Grid, prepared: PreparedRun, workers: int | None = None) -> Executor:
    """The executor on Flower's runtime that ``simulation.executor`` names.

    ``cohort``: ``workers`` worker nodes (default :func:`fedsim.runs.simulate.worker_count`; 0: every
    node of the federation, as many as join), tasks balanced by each client's training samples
    or, on nodes with their own data, by shard; partial means with ``simulation.streaming``;
    ``flower``: one node per client.
    """
    config = prepared.config
    sim = config.simulation
    if sim.executor == "cohort":
        sizes = np.diff(PartitionIndex.load(prepared.staging).train_offsets)
        stream_key = (stream_weight_key(strategy_for(config)) or "") if sim.streaming else ""
        pool = NodePool(grid, str(prepared.staging.resolve()), lambda: run_files(prepared.staging),
                        lambda: dataset_digest(prepared.dataset), sim.node_wait, config.partition.num_clients,
                        expected=worker_count(config) if workers is None else workers)
        return CohortExecutor(pool, sizes, sim.round_timeout, stream_key, max(1, int(sim.num_cpus_per_client)))
    return GridExecutor(grid, config.partition.num_clients, sim.round_timeout, sim.node_wait)


def build_server_app(
    jobs: list[tuple[PreparedRun, RunState]],
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ServerApp:
    """A ``ServerApp`` that executes each prepared run in turn through Flower's runtime."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        for index, (prepared, state) in enumerate(jobs):
            if stop_requested():  # Ctrl-C: the runs not started yet do not start
                state.error = RunInterrupted("interrupted by the user (Ctrl-C) before it started")
                continue
            if on_start:
                on_start(index)
            execute(prepared, state, flower_executor(grid, prepared), progress, on_round)

    return app
