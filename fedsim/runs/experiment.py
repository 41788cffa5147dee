"""One experiment end to end: prepare, execute, publish the run directory.

:func:`fedsim.runs.prepare.prepare` does everything that can fail on bad input *before* anything
is written to the final location or a runtime is started; :func:`run` / :func:`run_many` then
execute the runs -- on Flower's simulation runtime, in this process, or (the centralized
baseline) without clients -- and publish each run directory atomically (``fedsim.outputs.rundir``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord

from fedsim.outputs import plots, rundir
from fedsim.runs.server import Job, RunOutcome, build_server_app, execute, execute_centralized
from fedsim.clients.app import client_app
from fedsim.config import ExperimentConfig
from fedsim.datasets import plot_heatmap
from fedsim.datasets import summary as partition_summary
from fedsim.runs.executors import ON_FLOWER, InProcessExecutor
from fedsim.core.extension import RoundExtension
from fedsim.ops.interrupt import RunInterrupted, handling_interrupts, stop_requested
from fedsim.ops.logs import quiet_flower
from fedsim.runs.plan import RunPlan
from fedsim.config.validation import validate
from fedsim.runs.prepare import prepare_resume, stage
from fedsim.outputs.results import RunResult, load_run
from fedsim.runs.simulate import run_simulation
from fedsim.timing import DROPPED


def finalize(plan: RunPlan, final_arrays: ArrayRecord | None, confusion: np.ndarray | None,
             extras: dict | None = None) -> Path:
    """Write tables in the chosen format, summary, confusion matrix and figures; publish."""
    folder, config = plan.staging, plan.config
    rounds = pd.read_csv(folder / "rounds.csv")
    clients = pd.read_csv(folder / "clients.csv")
    if config.output.format == "parquet":
        rounds.to_parquet(folder / "rounds.parquet", index=False)
        clients.to_parquet(folder / "clients.parquet", index=False)
        (folder / "rounds.csv").unlink()
        (folder / "clients.csv").unlink()
    names = list(plan.dataset.class_names)
    if confusion is not None:
        frame = pd.DataFrame(confusion, index=pd.Index(names, name="true"), columns=names)
        frame.to_csv(folder / "confusion_matrix.csv")
    if final_arrays is not None and plan.method.global_model:
        torch.save(final_arrays.to_torch_state_dict(), folder / "final_model.pt")
    (folder / "summary.json").write_text(json.dumps(summarize(rounds, clients, plan, extras), indent=2))
    if config.output.figures:
        figures = folder / "figures"
        figures.mkdir(exist_ok=True)
        title = f"{config.strategy.name} / {config.model.name} / {config.partition.scheme}"
        plots.plot_accuracy(rounds, figures / "accuracy.png", title)
        plots.plot_loss(rounds, figures / "loss.png", title)
        plot_heatmap(plan.counts, names, figures / "label_distribution.png")
        plots.plot_time_figures(rounds, clients, figures, config.time.policy.deadline, title)
        plots.plot_privacy_figure(rounds, figures, title)
    return rundir.publish(folder, plan.final)


def trained_by_engine(clients: pd.DataFrame) -> dict[str, int]:
    """How many client trainings each engine did (``clients.csv``'s ``engine``, fallback reasons apart)."""
    if not len(clients) or "engine" not in clients:
        return {}
    engines = clients["engine"].dropna()
    return {str(k): int(v) for k, v in engines[engines != ""].value_counts().items()}


def summarize(rounds: pd.DataFrame, clients: pd.DataFrame, plan: RunPlan,
              extras: dict | None = None) -> dict:
    """The headline numbers of a run, for ``summary.json``."""
    config = plan.config
    extras = dict(extras or {})
    tested = rounds.dropna(subset=["test_accuracy"]) if "test_accuracy" in rounds else rounds.iloc[:0]
    trained = rounds[rounds["round"] > 0]
    failures = int((clients["status"] == "failed").sum()) if len(clients) else 0
    def last(column: str) -> float | None:
        data = rounds[column].dropna() if column in rounds else []
        return float(data.iloc[-1]) if len(data) else None
    return {
        "rounds": int(config.train.rounds),
        "clients": int(config.partition.num_clients),
        "strategy": rundir.run_label(config),
        "mode": config.train.mode,
        "model": config.model.name,
        "dataset": config.data.dataset,
        "partition": config.partition.scheme,
        "seed": config.seed,
        "final_test_accuracy": last("test_accuracy"),
        "best_test_accuracy": float(tested["test_accuracy"].max()) if len(tested) else None,
        "final_test_loss": last("test_loss"),
        "final_test_f1": last("test_f1"),
        "final_fed_eval_accuracy": last("fed_eval_accuracy"),
        "total_megabytes": float((trained["bytes_down"].sum() + trained["bytes_up"].sum()) / 1e6),
        "client_failures": failures,
        "wall_seconds": float(trained["wall_seconds"].sum()),
        "simulated_hours": (last("sim_time") or 0.0) / 3600.0 if "sim_time" in rounds and rounds["sim_time"].notna().any()
        else None,
        "clients_dropped": ({status: int((clients["status"] == status).sum()) for status in DROPPED}
                            if len(clients) else {}),
        "engine": config.engine.kind,
        "trained_by_engine": trained_by_engine(clients),
        "compile_seconds": float(trained["compile_seconds"].sum()) if "compile_seconds" in trained else 0.0,
        "partition_summary": partition_summary(plan.counts),
        **extras,
    }


def run(
    config: ExperimentConfig,
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
    extensions: list[RoundExtension] | None = None,
) -> RunResult:
    """Run one experiment and return its results.

    Clients run where ``executor.kind`` says (Flower's simulation runtime by default).
    ``extensions`` are round extensions (:mod:`fedsim.core.extension`) that take part in every round
    after the run's own; ``on_round`` is called with every ``rounds.csv`` row as it is written.
    Raises an :class:`~fedsim.errors.InputError` for bad input (nothing written), a
    :class:`~fedsim.errors.RunError` (or the error that stopped the run) when the run failed
    (kept as ``<name>.failed``) and :class:`~fedsim.ops.interrupt.RunInterrupted` after Ctrl-C
    (kept as ``<name>.interrupted``, see :func:`resume`).
    """
    (outcome,) = run_many([config], progress=progress, verbose=verbose, on_round=on_round,
                          extensions=(lambda _: list(extensions)) if extensions else None)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def resume(
    path: str | Path,
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
    extensions: list[RoundExtension] | None = None,
) -> RunResult:
    """Continue an interrupted, failed or killed run from its last checkpoint.

    ``path`` is the ``<name>.interrupted`` / ``<name>.failed`` folder, a staging folder left by a
    killed process, or the run's final path. The run goes on with its own ``config.toml`` and
    ends as the uninterrupted run would have -- bit for bit on CPU -- published under its final
    name. ``extensions`` must be the same kinds as the interrupted run had.
    """
    plan, checkpoint = prepare_resume(path)
    (outcome,) = _run_jobs([Job(0, plan, list(extensions or []), checkpoint)], [None], progress, verbose, on_round,
                           None)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_many(
    configs: list[ExperimentConfig],
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    extensions: Callable[[ExperimentConfig], list[RoundExtension]] | None = None,
) -> list[RunResult | BaseException]:
    """Run several experiments, the federated ones inside **one** Flower simulation runtime.

    Starting Ray and its actors costs seconds per run; runs that share the client count and
    per-client resources (a strategy comparison) therefore share one runtime, executed one
    after another by the same ServerApp. Runs with ``executor.kind = "in-process"`` and
    the centralized baseline run in this process first. ``extensions``, if given, makes the
    user's round extensions for each federated run (a new set per run: extensions keep
    state). Each run keeps its own run directory, and a run that fails is returned as its
    exception (its partial output kept as ``<name>.failed``) while the others go on. Input
    errors of any config are raised before anything is written. After Ctrl-C the run in
    progress and those not started are returned as :class:`~fedsim.ops.interrupt.RunInterrupted`.
    """
    plans = [validate(config) for config in configs]  # every config's input errors before anything is written
    outcomes: list[RunResult | BaseException | None] = [None] * len(configs)
    jobs: list[Job] = []
    try:
        for index, (config, plan) in enumerate(zip(configs, plans)):
            try:
                plans[index] = plan = stage(plan)
            except Exception as error:  # noqa: BLE001 - reported per run
                outcomes[index] = error
                continue
            jobs.append(Job(index, plan, extensions(config) if extensions else []))
    except BaseException:  # e.g. Ctrl-C while preparing: no staging folder and no claim stays behind
        for plan in plans:
            if plan.inputs is not None:
                rundir.discard(plan.staging, plan.final)
        raise
    return _run_jobs(jobs, outcomes, progress, verbose, on_round, on_start)


def _run_jobs(jobs: list[Job], outcomes: list, progress: bool, verbose: bool,
              on_round: Callable[[dict], None] | None, on_start: Callable[[int], None] | None,
              ) -> list[RunResult | BaseException]:
    """Execute prepared jobs, then publish, fail or keep (interrupted) each run directory.

    Every exit path leaves each job's folder under a name: ``<name>``, ``<name>.failed`` or
    ``<name>.interrupted`` -- never a staging folder (short of SIGKILL).
    """
    try:
        with handling_interrupts():
            executed = _execute(jobs, progress, verbose, on_round, on_start)
            for job in jobs:
                outcomes[job.index] = _conclude(job.plan, executed.get(job.index))
    finally:  # an exception of our own, or a second Ctrl-C: keep what is there, resumable
        for job in jobs:
            if job.plan.staging.exists():
                kept = rundir.mark_interrupted(job.plan.staging, job.plan.final)
                if outcomes[job.index] is None:
                    outcomes[job.index] = RunInterrupted(f"stopped; kept in {kept}")
    return [o if o is not None else RuntimeError("run did not execute") for o in outcomes]


def _execute(jobs: list[Job], progress: bool, verbose: bool, on_round: Callable[[dict], None] | None,
             on_start: Callable[[int], None] | None) -> dict[int, RunOutcome | BaseException]:
    """Run every job: centralized and in-process ones here, the others on Flower's runtime.

    Returns each job's outcome by index; a job that did not start (Ctrl-C first) has none, and
    a job whose runtime failed as a whole has that error.
    """
    executed: dict[int, RunOutcome | BaseException] = {}
    on_flower = [job for job in jobs if job.plan.federated and job.plan.config.executor.kind in ON_FLOWER]
    for job in jobs:
        if job in on_flower or stop_requested():  # after Ctrl-C the runs not started yet do not start
            continue
        if on_start:
            on_start(job.index)
        plan = job.plan
        if not plan.federated:
            executed[job.index] = execute_centralized(plan, job.resume, progress=progress, on_round=on_round)
            continue
        executor = InProcessExecutor(client_app, plan.num_clients, int(plan.config.runtime.num_cpus_per_client))
        with quiet_flower(verbose):
            executed[job.index] = execute(plan, executor, job.extensions, job.resume, progress, on_round)
    for group in _simulation_groups(on_flower):
        if stop_requested():
            continue
        outcomes: dict[int, RunOutcome] = {}
        server_app = build_server_app(group, outcomes, progress=progress, on_round=on_round, on_start=on_start)
        try:
            run_simulation(server_app, group[0].plan, verbose=verbose)
        except Exception as error:  # noqa: BLE001 - the runtime itself failed: every run in it
            for job in group:
                if job.index not in outcomes or outcomes[job.index].final_arrays is None and \
                        outcomes[job.index].error is None:
                    outcomes[job.index] = RunOutcome(None, error=error)  # type: ignore[arg-type]
        executed.update(outcomes)
    return executed


def _conclude(plan: RunPlan, outcome: RunOutcome | None) -> RunResult | BaseException:
    """Publish a finished run; keep a failed one as ``.failed``, an interrupted one as ``.interrupted``."""
    if outcome is None or isinstance(outcome.error, (RunInterrupted, KeyboardInterrupt)):
        kept = rundir.mark_interrupted(plan.staging, plan.final)
        started = "" if outcome is not None else " before it started"
        return RunInterrupted(f"interrupted{started}; the run is kept in {kept} (resume with: fedsim run --resume "
                              f"{kept})")
    try:
        if outcome.error is not None:
            raise outcome.error
        if outcome.final_arrays is None:
            raise RuntimeError("the simulation ended before the server finished its rounds")
        recorder = outcome.recorder
        return load_run(finalize(plan, outcome.final_arrays, recorder.confusion, recorder.extras))
    except Exception as error:  # noqa: BLE001 - reported per run
        if plan.staging.exists():
            failed = rundir.mark_failed(plan.staging, plan.final, error)
            error.add_note(f"partial output kept in {failed}")
        return error


def _simulation_groups(jobs: list[Job]) -> list[list[Job]]:
    """Consecutive federated jobs that can share one runtime (same nodes and resources)."""
    groups: list[list] = []
    for job in jobs:
        plan = job.plan
        runtime = plan.config.runtime
        key = (plan.nodes, plan.config.executor.kind, runtime.num_cpus_per_client, runtime.num_gpus_per_client,
               runtime.ray_num_cpus)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(job)
        else:
            groups.append((key, [job]))
    return [g[1] for g in groups]
