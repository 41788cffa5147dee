"""One experiment end to end: validate, load data, partition, simulate, publish the run directory.

``prepare`` does everything that can fail on bad input *before* anything is written to the
final location or Ray is started; ``run`` then drives Flower's simulation runtime and
publishes the run directory atomically (``fedsim.rundir``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord

from fedsim import plots, rundir
from fedsim.config import ExperimentConfig, validate, validate_against_dataset
from fedsim.datasets import (
    CachedDataset,
    DatasetError,
    Partition,
    build_partition,
    check_disjoint,
    counts_frame,
    holdout_transfer,
    materialize,
    plot_heatmap,
    split_train_val,
    tpriv_indices,
)
from fedsim.datasets import summary as partition_summary
from fedsim.models import FedsimNet, build_model
from fedsim.results import RunResult, load_run
from fedsim.spec import PartitionIndex, RunSpec, TransferIndex


@dataclass
class PreparedRun:
    """A validated experiment whose data, partition and staging folder are ready."""

    config: ExperimentConfig
    dataset: CachedDataset
    partition: Partition
    counts: np.ndarray
    staging: Path
    final: Path


def make_partition(config: ExperimentConfig, dataset: CachedDataset
                   ) -> tuple[Partition, np.ndarray, np.ndarray | None]:
    """Partition the training labels as configured.

    Returns the partition (indices into the training set), its client x class count matrix and,
    for ``latent-distill``, the transfer set held out before partitioning (else None).
    """
    labels = np.asarray(dataset.load()["y_train"])
    p = config.partition
    transfer = None
    pool = np.arange(len(labels))
    if config.strategy.name == "latent-distill" and not config.distill.transfer_dataset:
        transfer = holdout_transfer(labels, config.distill.transfer_size, config.seed,
                                    list(config.distill.transfer_classes))
        pool = np.setdiff1d(pool, transfer)
    partition = build_partition(
        labels[pool], dataset.num_classes, p.scheme, p.num_clients, config.seed, alpha=p.alpha,
        min_partition_size=p.min_partition_size, self_balancing=p.self_balancing,
        samples_per_client=p.samples_per_client, classes_per_client=p.classes_per_client,
    )
    partition.indices = [pool[idx] for idx in partition.indices]
    if transfer is not None:
        check_disjoint(partition.indices, transfer)
    return partition, partition.counts(labels), transfer


def prepare(config: ExperimentConfig) -> PreparedRun:
    """Validate, load and partition; create the staging folder with spec, partition and config."""
    validate(config)
    dataset = materialize(config.data)
    validate_against_dataset(config, dataset.num_train, dataset.num_classes)
    partition, counts, transfer = make_partition(config, dataset)
    source = None
    if config.strategy.name == "latent-distill" and config.distill.transfer_dataset:
        source, transfer = external_transfer(config, dataset)
    final = rundir.final_run_path(config)
    staging = rundir.create_staging(final)
    try:
        _write_inputs(config, dataset, partition, counts, staging)
        if transfer is not None:
            _write_transfer(config, dataset, transfer, staging, source)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedRun(config, dataset, partition, counts, staging, final)


def _write_inputs(config: ExperimentConfig, dataset: CachedDataset, partition: Partition,
                  counts: np.ndarray, folder: Path) -> None:
    rundir.write_config(config, folder)
    splits = [split_train_val(idx, config.partition.val_fraction, config.seed, cid)
              for cid, idx in enumerate(partition.indices)]
    PartitionIndex.from_lists([s[0] for s in splits], [s[1] for s in splits]).save(folder)
    counts_frame(counts, dataset.class_names).to_csv(folder / "partition_counts.csv")
    t, e = config.train, config.evaluation
    RunSpec(
        run_dir=str(folder.resolve()), dataset_folder=str(dataset.folder.resolve()),
        mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes,
        model=config.model.name, representation_dim=config.model.representation_dim,
        seed=config.seed, local_epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
        momentum=t.momentum, weight_decay=t.weight_decay, eval_batch_size=e.batch_size,
        device=config.simulation.device,
        architectures=tuple(config.model.architectures),
        distill=asdict(config.distill) if config.strategy.name == "latent-distill" else None,
        hooks=tuple(config.hooks),
    ).save(folder)


def external_transfer(config: ExperimentConfig, dataset: CachedDataset) -> tuple[CachedDataset, np.ndarray]:
    """latent-distill with ``distill.transfer_dataset``: another dataset's training images.

    The other dataset is cached like the main one; ``transfer_size`` of its training images are
    drawn with a seeded generator. Its images must have the clients' shape; its labels are not
    used (they are not the clients' classes).
    """
    d, data = config.distill, config.data
    other = materialize(replace(data, dataset=d.transfer_dataset, path=d.transfer_path, classes=[]))
    shape = np.load(other.folder / "x_train.npy", mmap_mode="r").shape
    own = np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape
    if shape[1:] != own[1:]:
        raise DatasetError(f"distill.transfer_dataset = {d.transfer_dataset!r} has images of shape {shape[1:]}, "
                           f"the clients' are {own[1:]}")
    if d.transfer_size > shape[0]:
        raise DatasetError(f"distill.transfer_size = {d.transfer_size}: {d.transfer_dataset!r} has only "
                           f"{shape[0]} training images")
    rng = np.random.default_rng([config.seed, 0x7D])
    return other, np.sort(rng.choice(shape[0], size=d.transfer_size, replace=False)).astype(np.int64)


def _write_transfer(config: ExperimentConfig, dataset: CachedDataset, transfer: np.ndarray, folder: Path,
                    source: CachedDataset | None = None) -> None:
    """latent-distill: the transfer set and each client's T_priv (test subset with its class mix)."""
    split = PartitionIndex.load(folder)
    y_train = np.asarray(dataset.load()["y_train"])
    y_test = np.asarray(dataset.load()["y_test"])
    tpriv = [tpriv_indices(y_test, np.bincount(y_train[split.train_of(c)], minlength=dataset.num_classes),
                           config.distill.tpriv_size, config.seed, c)
             for c in range(split.num_clients)]
    TransferIndex.from_lists(transfer, tpriv, str(source.folder.resolve()) if source else "").save(folder)


def initial_model(config: ExperimentConfig, dataset: CachedDataset) -> FedsimNet:
    """The global model's initial weights, determined by the seed alone."""
    torch.manual_seed(config.seed)
    channels = int(np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape[-1])
    return build_model(config.model.name, dataset.num_classes, config.model.representation_dim, channels)


def finalize(prepared: PreparedRun, final_arrays: ArrayRecord | None, confusion: np.ndarray | None,
             extras: dict | None = None) -> Path:
    """Write tables in the chosen format, summary, confusion matrix and figures; publish."""
    folder, config = prepared.staging, prepared.config
    rounds = pd.read_csv(folder / "rounds.csv")
    clients = pd.read_csv(folder / "clients.csv")
    if config.output.format == "parquet":
        rounds.to_parquet(folder / "rounds.parquet", index=False)
        clients.to_parquet(folder / "clients.parquet", index=False)
        (folder / "rounds.csv").unlink()
        (folder / "clients.csv").unlink()
    names = list(prepared.dataset.class_names)
    if confusion is not None:
        frame = pd.DataFrame(confusion, index=pd.Index(names, name="true"), columns=names)
        frame.to_csv(folder / "confusion_matrix.csv")
    if final_arrays is not None and config.strategy.name != "latent-distill":
        torch.save(final_arrays.to_torch_state_dict(), folder / "final_model.pt")
    (folder / "summary.json").write_text(json.dumps(summarize(rounds, clients, prepared, extras), indent=2))
    if config.output.figures:
        figures = folder / "figures"
        figures.mkdir(exist_ok=True)
        title = f"{config.strategy.name} / {config.model.name} / {config.partition.scheme}"
        plots.plot_accuracy(rounds, figures / "accuracy.png", title)
        plots.plot_loss(rounds, figures / "loss.png", title)
        plot_heatmap(prepared.counts, names, figures / "label_distribution.png")
    return rundir.publish(folder, prepared.final)


def summarize(rounds: pd.DataFrame, clients: pd.DataFrame, prepared: PreparedRun,
              extras: dict | None = None) -> dict:
    """The headline numbers of a run, for ``summary.json``."""
    config = prepared.config
    extras = dict(extras or {})
    if "tpriv_accuracy" in rounds and rounds["tpriv_accuracy"].notna().any():
        extras["final_tpriv_accuracy"] = float(rounds["tpriv_accuracy"].dropna().iloc[-1])
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
        "partition_summary": partition_summary(prepared.counts),
        **extras,
    }


def run(
    config: ExperimentConfig,
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run one experiment on Flower's simulation runtime and return its results."""
    (outcome,) = run_many([config], progress=progress, verbose=verbose, on_round=on_round)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_many(
    configs: list[ExperimentConfig],
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[RunResult | BaseException]:
    """Run several experiments, the federated ones inside **one** Flower simulation runtime.

    Starting Ray and its actors costs seconds per run; runs that share the client count and
    per-client resources (a strategy comparison) therefore share one runtime, executed one
    after another by the same ServerApp. Each run keeps its own run directory, and a run that
    fails is returned as its exception (its partial output kept as ``<name>.failed``) while the
    others go on. Input errors of any config are raised before anything is written.
    """
    from fedsim.app import build_server_app, execute_centralized, run_state
    from fedsim.simulate import run_simulation

    for config in configs:
        validate(config)
    outcomes: list[RunResult | BaseException | None] = [None] * len(configs)
    jobs: list[tuple[int, PreparedRun, object]] = []
    for index, config in enumerate(configs):
        try:
            prepared = prepare(config)
        except Exception as error:  # noqa: BLE001 - reported per run
            outcomes[index] = error
            continue
        jobs.append((index, prepared, run_state(prepared)))

    federated = [(i, p, s) for i, p, s in jobs if p.config.train.mode != "centralized"]
    for index, prepared, state in jobs:
        if prepared.config.train.mode == "centralized":
            if on_start:
                on_start(index)
            execute_centralized(prepared, state, progress=progress, on_round=on_round)
    for group in _simulation_groups(federated):
        server_app = build_server_app([(p, s) for _, p, s in group], progress=progress,
                                      on_round=on_round,
                                      on_start=(lambda k, g=group: on_start(g[k][0])) if on_start else None)
        try:
            run_simulation(server_app, group[0][1].config, verbose=verbose)
        except Exception as error:  # noqa: BLE001 - the runtime itself failed: every run in it
            for _, _, state in group:
                if state.error is None and state.final_arrays is None:
                    state.error = error

    for index, prepared, state in jobs:
        try:
            if state.error is not None:
                raise state.error
            if state.final_arrays is None:
                raise RuntimeError("the simulation ended before the server finished its rounds")
            outcomes[index] = load_run(finalize(prepared, state.final_arrays, state.recorder.confusion,
                                                state.recorder.extras))
        except Exception as error:  # noqa: BLE001 - reported per run
            if prepared.staging.exists():
                failed = rundir.mark_failed(prepared.staging, prepared.final, error)
                error.add_note(f"partial output kept in {failed}")
            outcomes[index] = error
    return [o if o is not None else RuntimeError("run did not execute") for o in outcomes]


def _simulation_groups(jobs: list) -> list[list]:
    """Consecutive federated jobs that can share one runtime (same nodes and resources)."""
    groups: list[list] = []
    for job in jobs:
        sim, n = job[1].config.simulation, job[1].config.partition.num_clients
        key = (n, sim.num_cpus_per_client, sim.num_gpus_per_client, sim.ray_num_cpus)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(job)
        else:
            groups.append((key, [job]))
    return [g[1] for g in groups]
