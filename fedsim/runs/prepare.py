"""Prepare an experiment before anything runs: validate, load data, partition, stage the inputs.

:func:`prepare` does everything that can fail on bad input *before* anything is written to
the final location or a runtime is started. It leaves a staging run directory with the
resolved config, the partition (``partition.npz``, ``partition_counts.csv``), the run spec
the workers read (``spec.json``: data, model, the one training recipe) and whatever the
run's method needs (e.g. a transfer set).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsim.outputs import rundir
from fedsim.core.checkpoint import Checkpoint, discard_partial
from fedsim.config import ExperimentConfig
from fedsim.errors import InputError
from fedsim.datasets import (
    CachedDataset,
    Partition,
    build_partition,
    check_disjoint,
    counts_frame,
    materialize,
    split_train_val,
)
from fedsim.methods import method_for
from fedsim.models import FedsimNet, build_model, parse_architecture
from fedsim.core.recipe import SGDRecipe
from fedsim.timing.setup import write_time_inputs
from fedsim.core.spec import PartitionIndex, RunSpec
from fedsim.config.validation import load_config, validate, validate_against_dataset


@dataclass
class PreparedRun:
    """A validated experiment whose data, partition and staging folder are ready."""

    config: ExperimentConfig
    dataset: CachedDataset
    partition: Partition
    counts: np.ndarray
    staging: Path
    final: Path


def training_recipe(config: ExperimentConfig) -> SGDRecipe:
    """The run's local-training recipe: the one place ``[train]`` becomes an :class:`SGDRecipe`."""
    t = config.train
    return SGDRecipe(t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay)


def client_device(config: ExperimentConfig) -> str:
    """The clients' device: ``simulation.device``, except that ``auto`` means the CPU for Ray
    workers given no GPU share (``num_gpus_per_client = 0``): Ray does not account for a CUDA
    context such a worker would open. In process, ``auto`` uses a visible GPU."""
    sim = config.simulation
    if sim.device == "auto" and sim.executor != "in-process" and sim.num_gpus_per_client == 0:
        return "cpu"
    return sim.device


def make_partition(config: ExperimentConfig, dataset: CachedDataset
                   ) -> tuple[Partition, np.ndarray, np.ndarray | None]:
    """Partition the training labels as configured.

    Returns the partition (indices into the training set), its client x class count matrix and
    the samples the run's method holds out before partitioning (else None).
    """
    labels = np.asarray(dataset.load()["y_train"])
    p = config.partition
    holdout = method_for(config.strategy.name).holdout(config, labels)
    pool = np.arange(len(labels)) if holdout is None else np.setdiff1d(np.arange(len(labels)), holdout)
    partition = build_partition(
        labels[pool], dataset.num_classes, p.scheme, p.num_clients, config.seed, alpha=p.alpha,
        min_partition_size=p.min_partition_size, self_balancing=p.self_balancing,
        samples_per_client=p.samples_per_client, classes_per_client=p.classes_per_client,
    )
    partition.indices = [pool[idx] for idx in partition.indices]
    if holdout is not None:
        check_disjoint(partition.indices, holdout)
    return partition, partition.counts(labels), holdout


def check_image_shape(config: ExperimentConfig, dataset: CachedDataset) -> None:
    """Every model of the run must take the dataset's images (one forward pass of a blank image).

    fedsim's models are built for 32x32 images (CIFAR's size); other sizes fail inside the first
    convolution or linear layer, which would otherwise surface as a failure of every client.
    """
    shape = tuple(int(n) for n in np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape[1:])
    names = {config.model.name, *(parse_architecture(entry)[0] for entry in config.model.architectures)}
    for name in sorted(names):
        model = build_model(name, dataset.num_classes, config.model.representation_dim, shape[-1])
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, shape[2], shape[0], shape[1]))
        except RuntimeError as error:
            raise InputError(
                f"model {name!r} cannot take the dataset's {shape[0]}x{shape[1]} images with {shape[2]} "
                f"channel(s) ({str(error).splitlines()[0]}); fedsim's models are built for 32x32 images "
                "(CIFAR's size): resize the images to 32x32") from error


def prepare(config: ExperimentConfig) -> PreparedRun:
    """Validate, load and partition; create the staging folder with spec, partition and config."""
    validate(config)
    dataset = materialize(config.data)
    validate_against_dataset(config, dataset.num_train, dataset.num_classes)
    check_image_shape(config, dataset)
    partition, counts, holdout = make_partition(config, dataset)
    final = rundir.final_run_path(config)
    staging = rundir.create_staging(final)
    try:
        write_inputs(config, dataset, partition, counts, staging)
        method_for(config.strategy.name).write_inputs(config, dataset, staging, holdout)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedRun(config, dataset, partition, counts, staging, final)


def prepare_resume(path: str | Path) -> tuple[PreparedRun, Checkpoint]:
    """An interrupted, failed or killed run, taken over to continue from its checkpoint.

    Everything that can refuse (no such run, no checkpoint, a corrupt one, a changed dataset,
    a run still going) is checked before the folder is touched; then it is renamed to this
    process's staging name. The partition is recomputed from the run's own ``config.toml``
    (it depends on the data and the seed alone) and must match the counts the run recorded.
    """
    folder, final = rundir.find_resumable(Path(path))
    config = load_config(folder / "config.toml")
    checkpoint = Checkpoint.read(folder)
    dataset = materialize(config.data)
    validate_against_dataset(config, dataset.num_train, dataset.num_classes)
    partition, counts, _ = make_partition(config, dataset)
    recorded = pd.read_csv(folder / "partition_counts.csv", index_col=0).to_numpy()
    if recorded.shape != counts.shape or not np.array_equal(recorded, counts):
        raise InputError(f"the dataset {config.data.dataset!r} gives another partition than the one {folder} "
                         "was run on: it changed since; the run cannot be resumed exactly")
    rundir.check_replaceable(final, config.output.overwrite)
    staging = rundir.claim(folder, final)
    discard_partial(staging)
    return PreparedRun(config, dataset, partition, counts, staging, final), checkpoint


def write_inputs(config: ExperimentConfig, dataset: CachedDataset, partition: Partition,
                 counts: np.ndarray, folder: Path) -> None:
    """Config, per-client train/validation split, counts and the workers' run spec."""
    rundir.write_config(config, folder)
    splits = [split_train_val(idx, config.partition.val_fraction, config.seed, cid)
              for cid, idx in enumerate(partition.indices)]
    PartitionIndex.from_lists([s[0] for s in splits], [s[1] for s in splits]).save(folder)
    counts_frame(counts, dataset.class_names).to_csv(folder / "partition_counts.csv")
    RunSpec(
        run_dir=str(folder.resolve()), dataset_folder=str(dataset.folder.resolve()),
        mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes,
        model=config.model.name, representation_dim=config.model.representation_dim,
        seed=config.seed, recipe=training_recipe(config), eval_batch_size=config.evaluation.batch_size,
        device=client_device(config), architectures=tuple(config.model.architectures),
        distill=method_for(config.strategy.name).client_distill_recipe(config),
        hooks=tuple(config.hooks), engine=config.simulation.engine,
        lockstep_clients=config.simulation.lockstep_clients, lockstep_memory=config.simulation.lockstep_memory,
        compile=config.simulation.compile,
    ).save(folder)
    channels = int(np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape[-1])
    write_time_inputs(config, folder, dataset.num_classes, channels)


def initial_model(config: ExperimentConfig, dataset: CachedDataset) -> FedsimNet:
    """The global model's initial weights, determined by the seed alone."""
    torch.manual_seed(config.seed)
    channels = int(np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape[-1])
    return build_model(config.model.name, dataset.num_classes, config.model.representation_dim, channels)
