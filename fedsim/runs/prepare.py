"""Prepare a run before anything runs: validate, load data, partition, stage the inputs.

:func:`prepare` does everything that can fail on bad input *before* anything is written to
the final location or a runtime is started, and returns the run's plan with its inputs
(:class:`~fedsim.runs.plan.RunInputs`). It leaves a staging run directory with the resolved
config, the partition (``partition.npz``, ``partition_counts.csv``), the run spec the workers
read (``spec.json``: data, model, the one training recipe, per-client behaviour), the
fingerprint of the config and of every input file (``inputs.json``, :mod:`fedsim.runs.fingerprint`)
and whatever the run's method and simulated time need (a transfer set, device profiles, a trace).
:func:`prepare_resume` checks a run directory against what it recorded before taking it over.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsim.config import ExperimentConfig
from fedsim.config.validation import validate, validate_against_dataset
from fedsim.clients.distill import STATE as LATENT_DISTILL_STATE
from fedsim.clients.state import adopt_unnamespaced
from fedsim.core.checkpoint import FOLDER as CHECKPOINT
from fedsim.core.checkpoint import Checkpoint, discard_partial
from fedsim.core.spec import CLIENT_STATE, CONFIG_FILE, RANDOM_STREAMS, SPEC_FILE, PartitionIndex, RunSpec
from fedsim.datasets import CachedDataset, build_partition, check_disjoint, counts_frame, materialize, split_train_val
from fedsim.errors import InputError
from fedsim.models import build_model, parse_architecture
from fedsim.outputs import rundir
from fedsim.timing.setup import write_time_inputs

from . import fingerprint
from .plan import RunInputs, RunPlan


def make_partition(plan: RunPlan, dataset: CachedDataset) -> tuple[PartitionIndex, np.ndarray, np.ndarray | None]:
    """Partition the training labels as configured.

    Returns every client's training and validation indices (into the training set), the client x
    class count matrix of the training partition before the validation split, and the samples
    the run's method holds out before partitioning (else None).
    """
    config = plan.config
    labels = np.asarray(dataset.load()["y_train"])
    p = config.partition
    holdout = plan.method.holdout(config, labels)
    pool = np.arange(len(labels)) if holdout is None else np.setdiff1d(np.arange(len(labels)), holdout)
    partition = build_partition(
        labels[pool], dataset.num_classes, p.scheme, p.num_clients, config.seed, alpha=p.alpha,
        min_partition_size=p.min_partition_size, self_balancing=p.self_balancing,
        samples_per_client=p.samples_per_client, classes_per_client=p.classes_per_client,
    )
    partition.indices = [pool[idx] for idx in partition.indices]
    if holdout is not None:
        check_disjoint(partition.indices, holdout)
    splits = [split_train_val(idx, p.val_fraction, config.seed, cid) for cid, idx in enumerate(partition.indices)]
    index = PartitionIndex.from_lists([s[0] for s in splits], [s[1] for s in splits])
    return index, partition.counts(labels), holdout


def _model_names(config: ExperimentConfig) -> set[str]:
    return {config.model.name, *(parse_architecture(entry)[0] for entry in config.model.architectures)}


def stream_dependent(config: ExperimentConfig, dataset: CachedDataset) -> list[str]:
    """What a run draws that :data:`~fedsim.core.spec.RANDOM_STREAMS` changed: dropout layers, the augment hook."""
    found = []
    for name in sorted(_model_names(config)):
        model = build_model(name, dataset.num_classes, config.model.representation_dim, dataset.image_shape[-1])
        if any(isinstance(m, torch.nn.Dropout) for m in model.modules()):
            found.append(f"the dropout masks of model {name!r}")
    if any(hook.get("name") == "augment" for hook in config.hooks):
        found.append("the augment hook's parameters")
    return found


def check_streams(folder: Path, config: ExperimentConfig, dataset: CachedDataset) -> None:
    """Refuse to resume a run whose random draws this fedsim makes differently (exit 2).

    A run records the fedsim version and random streams it was made with (``spec.json``; a spec
    without them predates fedsim 0.2.0). When the streams differ in something the run draws,
    its finished rounds and the rounds to come would mix two streams in one result; a run that
    draws nothing that changed (no dropout, no augment hook) resumes exactly.
    """
    raw = json.loads((folder / SPEC_FILE).read_text())
    streams, version = int(raw.get("random_streams", 1)), str(raw.get("fedsim_version", "0.1.0"))
    if streams == RANDOM_STREAMS:
        return
    changed = stream_dependent(config, dataset)
    if changed:
        from fedsim import __version__

        raise InputError(
            f"{folder} was run by fedsim {version} (random streams {streams}); this fedsim {__version__} "
            f"(random streams {RANDOM_STREAMS}) draws {' and '.join(changed)} differently, so resuming would "
            f"mix two random streams in one result: start the run again, or resume it with fedsim {version}")


def check_image_shape(config: ExperimentConfig, dataset: CachedDataset) -> None:
    """Every model of the run must take the dataset's images (one forward pass of a blank image).

    fedsim's models are built for 32x32 images (CIFAR's size); other sizes fail inside the first
    convolution or linear layer, which would otherwise surface as a failure of every client.
    """
    shape = dataset.image_shape
    for name in sorted(_model_names(config)):
        model = build_model(name, dataset.num_classes, config.model.representation_dim, shape[-1])
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, shape[2], shape[0], shape[1]))
        except RuntimeError as error:
            raise InputError(
                f"model {name!r} cannot take the dataset's {shape[0]}x{shape[1]} images with {shape[2]} "
                f"channel(s) ({str(error).splitlines()[0]}); fedsim's models are built for 32x32 images "
                "(CIFAR's size): resize the images to 32x32") from error


def prepare(config: ExperimentConfig) -> RunPlan:
    """Validate, load and partition; create the staging folder with spec, partition and config."""
    return stage(validate(config))


def stage(plan: RunPlan) -> RunPlan:
    """A validated plan's inputs: load the data, partition it, create the staging folder."""
    config = plan.config
    dataset = materialize(config.data)
    validate_against_dataset(plan, dataset.num_train, dataset.num_classes)
    check_image_shape(config, dataset)
    partition, counts, holdout = make_partition(plan, dataset)
    output = config.output
    final, staging = rundir.create_output_staging(output.dir, output.name, rundir.default_run_name(config),
                                                  output.overwrite)
    try:
        plan = replace(plan, inputs=RunInputs(dataset, partition, counts, staging, final))
        write_inputs(plan)
        plan.method.write_inputs(plan, holdout)
    except BaseException:
        rundir.discard(staging, final)
        raise
    return plan


def prepare_resume(path: str | Path) -> tuple[RunPlan, Checkpoint]:
    """An interrupted, failed or killed run, taken over to continue from its checkpoint.

    Everything that can refuse (no such run, no checkpoint, a damaged one, an edited
    ``config.toml``, an input file that changed, a run still going) is checked before the folder
    is touched; then it is renamed to this process's staging name. The config and the input
    files are compared with what the run recorded at start (``inputs.json``,
    :mod:`fedsim.runs.fingerprint`; a run made before it was recorded skips that comparison).
    The partition is recomputed from the run's own ``config.toml`` (it depends on the data and
    the seed alone) and must match the counts the run recorded. The checkpoint's global arrays
    must be the run's model (names, shapes, finite values). The run spec is written anew from
    that config (it is derived from it alone), so a run started by an earlier fedsim carries what
    this fedsim's workers read.
    """
    from fedsim.config.parse import read_config

    folder, final = rundir.find_resumable(Path(path))
    config = read_config(folder / CONFIG_FILE)
    fingerprint.check(folder, config)
    plan = validate(config)
    checkpoint = Checkpoint.read(folder)
    dataset = materialize(config.data)
    check_streams(folder, config, dataset)
    validate_against_dataset(plan, dataset.num_train, dataset.num_classes)
    if plan.method.global_model:
        checkpoint.check_model(model_shapes(config, dataset), folder)
    partition, counts, _ = make_partition(plan, dataset)
    recorded = pd.read_csv(folder / "partition_counts.csv", index_col=0).to_numpy()
    if recorded.shape != counts.shape or not np.array_equal(recorded, counts):
        raise InputError(f"the dataset {config.data.dataset!r} gives another partition than the one {folder} "
                         "was run on: it changed since; the run cannot be resumed exactly")
    staging = rundir.claim(folder, final, config.output.overwrite)
    discard_partial(staging)
    for state in (staging / CLIENT_STATE, staging / CHECKPOINT / CLIENT_STATE):  # a run started before namespaces:
        adopt_unnamespaced(state, LATENT_DISTILL_STATE)  # only latent-distill kept client state then
    plan = replace(plan, inputs=RunInputs(dataset, partition, counts, staging, final))
    run_spec(plan).save(staging)
    return plan, checkpoint


def model_shapes(config: ExperimentConfig, dataset: CachedDataset) -> dict[str, tuple[int, ...]]:
    """The global model's array names and shapes (built without drawing from the global RNGs)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model.name, dataset.num_classes, config.model.representation_dim,
                            dataset.image_shape[-1])
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def run_spec(plan: RunPlan) -> RunSpec:
    """What the workers read (``spec.json``): the dataset, the model, the recipe, the behaviours."""
    from fedsim import __version__

    config, dataset, engine = plan.config, plan.dataset, plan.config.engine
    return RunSpec(
        run_dir=str(plan.staging.resolve()), dataset_folder=str(dataset.folder.resolve()),
        mean=dataset.mean, std=dataset.std, num_classes=dataset.num_classes,
        model=config.model.name, representation_dim=config.model.representation_dim,
        seed=config.seed, recipe=plan.recipe, eval_batch_size=config.evaluation.batch_size,
        device=plan.client_device, architectures=tuple(config.model.architectures),
        distill=plan.distill_recipe, hooks=tuple(config.hooks), engine=engine.kind,
        lockstep_clients=engine.lockstep_clients, lockstep_memory=engine.lockstep_memory, compile=engine.compile,
        behaviours=tuple(b.to_json() for b in plan.behaviours),
        fedsim_version=__version__, random_streams=RANDOM_STREAMS,
    )


def write_inputs(plan: RunPlan) -> None:
    """Config, per-client train/validation split, counts, the workers' run spec and the time inputs;
    and the fingerprint of the config and every input file (``inputs.json``), which a resume checks."""
    folder = plan.staging
    rundir.write_config(plan.config, folder)
    fingerprint.record(plan.config, folder)
    plan.partition.save(folder)
    counts_frame(plan.counts, plan.dataset.class_names).to_csv(folder / "partition_counts.csv")
    run_spec(plan).save(folder)
    write_time_inputs(plan, plan.dataset.image_shape[-1])
