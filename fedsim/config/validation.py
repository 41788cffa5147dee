"""Validate an experiment config by asking the registries that own each rule.

:func:`validate` collects every problem at once and raises one :class:`ConfigError` naming
each field, its value and what is allowed. The rules live with what they govern: dataset and
partition settings in :mod:`fedsim.datasets.settings`, model names in :mod:`fedsim.models`,
strategies and their keyword arguments in :mod:`fedsim.strategies`, hooks in
:mod:`fedsim.clients.hooks`, run modes in :mod:`fedsim.methods.modes`, a method's own settings in
:mod:`fedsim.methods`, executors in :mod:`fedsim.runs.executors`. The rules for the engine's own
sections (``[train]``, ``[evaluation]``, ``[simulation]``, ``[output]``) are here.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

from fedsim.clients.hooks import HookError, build_hooks
from fedsim.clients.lockstep import ENGINE_NAMES
from fedsim.config import ConfigError, ExperimentConfig, problem, read_config
from fedsim.datasets import check_data, check_partition, check_partition_for_dataset
from fedsim.runs.executors import EXECUTOR_NAMES
from fedsim.methods import METHODS, method_for
from fedsim.models import MODEL_NAMES, parse_architecture
from fedsim.methods.modes import check_mode, evaluates_client_models
from fedsim.methods.privacy import check_privacy
from fedsim.core.sampling import sample_size
from fedsim.timing.rules import check_time
from fedsim.strategies import (
    STRATEGIES,
    STREAMABLE,
    StrategyContext,
    StrategyError,
    build_strategy,
    stream_weight_key,
)

DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
RESULT_FORMATS = ("csv", "parquet")


def load_config(path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML file (or start from defaults), apply overrides and validate."""
    config = read_config(path, overrides)
    validate(config)
    return config


def _rules(errors: list[str], rules: list[tuple[bool, str, object, str]]) -> None:
    errors.extend(problem(key, value, allowed) for ok, key, value, allowed in rules if not ok)


MAX_SEED = 2**32 - 1  # NumPy's legacy global generator (seeded per round) takes 32-bit seeds


def validate(config: ExperimentConfig) -> None:
    """Check every field's range and the cross-field rules; raise one error listing all problems.

    Checks that need the dataset (client count vs dataset size, class ids) are in
    :func:`validate_against_dataset`.
    """
    c = config
    e: list[str] = []
    _rules(e, [(0 <= c.seed <= MAX_SEED, "seed", c.seed, f"must be an integer in 0..{MAX_SEED}")])
    e += check_data(c.data)
    e += check_partition(c.partition)
    e += _check_model(c)
    e += _check_train(c)
    e += check_mode(c)
    e += _check_strategy(c)
    e += _check_hooks(c)
    e += _check_evaluation(c)
    e += _check_simulation(c)
    e += _check_output(c)
    e += _check_streaming(c)
    e += check_time(c)
    e += check_privacy(c)
    e += check_resources(c)
    if e:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(e))


def validate_against_dataset(config: ExperimentConfig, num_train: int, num_classes: int) -> None:
    """The checks that need the loaded dataset's size and class count."""
    e = check_partition_for_dataset(config.partition, num_train, num_classes)
    e += method_for(config.strategy.name).check_for_dataset(config, num_train, num_classes)
    if e:
        raise ConfigError("invalid configuration for this dataset:\n  " + "\n  ".join(e))


def _check_model(c: ExperimentConfig) -> list[str]:
    m = c.model
    e: list[str] = []
    _rules(e, [(m.name in MODEL_NAMES, "model.name", m.name, f"allowed: {', '.join(MODEL_NAMES)}"),
               (m.representation_dim >= 0, "model.representation_dim", m.representation_dim,
                "must be >= 0 (0 = no representation layer)")])
    widths, names = set(), set()
    for entry in m.architectures:
        try:
            name, width = parse_architecture(entry)
        except ValueError as err:
            e.append(f"model.architectures: {err}")
            continue
        names.add(name)
        _rules(e, [(name in MODEL_NAMES, "model.architectures", m.architectures,
                    f"unknown architecture {name!r}; allowed: {', '.join(MODEL_NAMES)}")])
        widths.add(m.representation_dim if width is None else width)
    heterogeneous = bool(names) and names != {m.name}
    mixing = [name for name, method in METHODS.items() if method.heterogeneous_architectures]
    _rules(e, [
        (widths <= {m.representation_dim}, "model.architectures", m.architectures,
         f"mismatched representation widths {sorted(widths)}: every client shares r = "
         f"model.representation_dim ({m.representation_dim}) so that representations are comparable"),
        (method_for(c.strategy.name).heterogeneous_architectures or not heterogeneous, "model.architectures",
         m.architectures, f"clients with other architectures than model.name need strategy "
         f"{' or '.join(mixing)}; {c.strategy.name!r} averages weights"),
    ])
    return e


def _check_train(c: ExperimentConfig) -> list[str]:
    t, n = c.train, c.partition.num_clients
    e: list[str] = []
    _rules(e, [
        (t.rounds >= 1, "train.rounds", t.rounds, "must be >= 1"),
        (0 < t.fraction_train <= 1, "train.fraction_train", t.fraction_train, "must be in (0, 1]"),
        (t.clients_per_round >= 0, "train.clients_per_round", t.clients_per_round,
         "must be >= 0 (0 = use fraction_train)"),
        (t.clients_per_round <= n, "train.clients_per_round", t.clients_per_round,
         f"must be <= partition.num_clients ({n})"),
        (t.local_epochs >= 1, "train.local_epochs", t.local_epochs, "must be >= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1"),
        (t.lr > 0, "train.lr", t.lr, "must be > 0"),
        (0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0"),
    ])
    return e


def _check_strategy(c: ExperimentConfig) -> list[str]:
    s = c.strategy
    if s.name not in STRATEGIES:  # the registry as it is now (a strategy may be registered at run time)
        return [problem("strategy.name", s.name, f"allowed: {', '.join(STRATEGIES)}")]
    context = StrategyContext(c.train.lr, sample_size(c.partition.num_clients, c.train.fraction_train,
                                                      c.train.clients_per_round))
    try:
        build_strategy(s.name, s.kwargs, context)
    except StrategyError as err:
        return [f"strategy.kwargs = {s.kwargs!r}: {err}"] + method_for(s.name).check(c)
    return method_for(s.name).check(c)


def _check_hooks(c: ExperimentConfig) -> list[str]:
    try:
        build_hooks(list(c.hooks))
    except HookError as err:
        return [f"hooks: {err}"]
    if c.hooks and not method_for(c.strategy.name).accepts_hooks:
        return [f"hooks: client hooks apply to weight-based strategies; {c.strategy.name} changes local "
                "training its own way"]
    return []


def _check_evaluation(c: ExperimentConfig) -> list[str]:
    v, n = c.evaluation, c.partition.num_clients
    e: list[str] = []
    _rules(e, [
        (v.centralized_every >= 0, "evaluation.centralized_every", v.centralized_every, "must be >= 0 (0 = never)"),
        (v.federated_every >= 0, "evaluation.federated_every", v.federated_every, "must be >= 0 (0 = never)"),
        (0 < v.fraction_evaluate <= 1, "evaluation.fraction_evaluate", v.fraction_evaluate, "must be in (0, 1]"),
        (0 <= v.clients_per_eval <= n, "evaluation.clients_per_eval", v.clients_per_eval,
         f"must be between 0 and partition.num_clients ({n})"),
        (v.batch_size >= 1, "evaluation.batch_size", v.batch_size, "must be >= 1"),
        (v.federated_every == 0 or c.partition.val_fraction > 0
         or method_for(c.strategy.name).evaluates_without_validation_split,
         "evaluation.federated_every", v.federated_every,
         "federated evaluation needs partition.val_fraction > 0 (or set 0)"),
    ])
    return e


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


def _check_simulation(c: ExperimentConfig) -> list[str]:
    sim, n = c.simulation, c.partition.num_clients
    e: list[str] = []
    _rules(e, [
        (sim.num_cpus_per_client > 0, "simulation.num_cpus_per_client", sim.num_cpus_per_client, "must be > 0"),
        (sim.num_gpus_per_client >= 0, "simulation.num_gpus_per_client", sim.num_gpus_per_client,
         "must be >= 0 (fractions share one GPU)"),
        (_valid_device(sim.device), "simulation.device", sim.device, f"allowed: {DEVICES_HELP}"),
        (0 < sim.min_success_fraction <= 1, "simulation.min_success_fraction", sim.min_success_fraction,
         "must be in (0, 1]"),
        (0 < sim.round_timeout < math.inf, "simulation.round_timeout", sim.round_timeout,
         "must be a finite number of seconds > 0 (fedsim never waits without a limit)"),
        (0 < sim.node_wait < math.inf, "simulation.node_wait", sim.node_wait,
         "must be a finite number of seconds > 0 (fedsim never waits without a limit)"),
        (all(0 <= k < n for k in sim.fail_clients), "simulation.fail_clients", sim.fail_clients,
         f"client ids must be in 0..{n - 1}"),
        (sim.ray_num_cpus >= 0, "simulation.ray_num_cpus", sim.ray_num_cpus, "must be >= 0 (0 = all CPUs)"),
        (sim.executor in EXECUTOR_NAMES, "simulation.executor", sim.executor,
         f"allowed: {', '.join(EXECUTOR_NAMES)}"),
        (sim.workers >= 0, "simulation.workers", sim.workers, "must be >= 0 (0 = as many as the resources allow)"),
        (not sim.ray_address or sim.executor != "cohort" or sim.workers > 0, "simulation.workers", sim.workers,
         "on an existing Ray cluster (simulation.ray_address) say how many workers to run: fedsim cannot "
         "see the cluster's CPUs before it connects"),
        (not sim.ray_address or sim.executor != "in-process", "simulation.ray_address", sim.ray_address,
         "the in-process executor runs no Ray; use executor cohort or flower"),
        (0 <= sim.client_timeout < math.inf, "simulation.client_timeout", sim.client_timeout,
         "must be a finite number of seconds >= 0 (0 = simulation.round_timeout)"),
        (not sim.streaming or sim.executor == "cohort", "simulation.streaming", sim.streaming,
         "streaming aggregation happens in cohort workers: set simulation.executor = 'cohort'"),
        (sim.engine in ENGINE_NAMES, "simulation.engine", sim.engine, f"allowed: {', '.join(ENGINE_NAMES)}"),
        (sim.engine != "vectorized" or sim.executor in ("cohort", "in-process"), "simulation.engine", sim.engine,
         f"the vectorized engine trains the many clients one worker hosts; executor {sim.executor!r} runs one "
         "client per node: set simulation.executor = 'cohort' (or 'in-process')"),
        (isinstance(sim.lockstep_clients, int) and sim.lockstep_clients >= 0, "simulation.lockstep_clients",
         sim.lockstep_clients, "must be an integer >= 0 (0 = as many clients as fit in memory)"),
        (0 < sim.lockstep_memory <= 1, "simulation.lockstep_memory", sim.lockstep_memory,
         "must be a fraction of free device memory in (0, 1]"),
        (not sim.compile or sim.engine == "vectorized", "simulation.compile", sim.compile,
         "compiles the lockstep step: set simulation.engine = 'vectorized'"),
    ])
    return e


def check_resources(c: ExperimentConfig) -> list[str]:
    """Per-client resources this machine cannot give, refused before Ray starts.

    Ray would otherwise accept the request and wait forever for a CPU or GPU that does not
    exist. On an existing cluster (``simulation.ray_address``) the cluster's resources are not
    known here, and the in-process executor asks Ray for nothing.
    """
    sim = c.simulation
    if sim.ray_address or sim.executor == "in-process" or c.train.mode == "centralized":
        return []
    import os

    cpus = sim.ray_num_cpus or os.cpu_count() or 1
    e: list[str] = []
    if sim.num_cpus_per_client > cpus:
        e.append(problem("simulation.num_cpus_per_client", sim.num_cpus_per_client,
                         f"this machine gives Ray {cpus} CPU(s) (simulation.ray_num_cpus or all CPUs); "
                         f"ask for at most {cpus}"))
    if sim.num_gpus_per_client > 0:
        import torch

        gpus = torch.cuda.device_count()
        if sim.num_gpus_per_client > gpus:
            e.append(problem("simulation.num_gpus_per_client", sim.num_gpus_per_client,
                             f"this machine has {gpus} visible GPU(s); use 0 on a machine without a GPU"
                             if gpus == 0 else f"this machine has {gpus} visible GPU(s); ask for at most {gpus}"))
    return e


def _check_streaming(c: ExperimentConfig) -> list[str]:
    """Streaming aggregation needs a weighted-mean strategy and nothing that reads each client's arrays."""
    if not c.simulation.streaming or c.strategy.name not in STRATEGIES:
        return []
    e: list[str] = []
    try:
        strategy = build_strategy(c.strategy.name, c.strategy.kwargs, StrategyContext(c.train.lr, 1))
    except StrategyError:
        return []  # reported by _check_strategy
    if stream_weight_key(strategy) is None:
        streamable = ", ".join(n for n in STRATEGIES if n != c.strategy.name and _streams(n))
        e.append(problem("simulation.streaming", True, f"strategy {c.strategy.name!r} does not aggregate a weighted "
                         f"mean of the client models; streaming works with: {streamable}"))
    if evaluates_client_models(c):
        e.append(problem("simulation.streaming", True, "every client's model is evaluated (one-shot mode or "
                         "evaluation.client_models): the models must travel; turn streaming off"))
    try:
        needing = [h.name for h in build_hooks(list(c.hooks)) if getattr(h.round_extension(), "needs_client_arrays", False)]
    except HookError:
        needing = []
    if needing:
        e.append(problem("simulation.streaming", True, f"hook(s) {', '.join(needing)} use other clients' models: "
                         "turn streaming off"))
    return e


def _streams(name: str) -> bool:
    return STRATEGIES[name].cls in STREAMABLE


def _check_output(c: ExperimentConfig) -> list[str]:
    o = c.output
    e: list[str] = []
    _rules(e, [
        (bool(o.dir), "output.dir", o.dir, "must not be empty"),
        ("/" not in o.name and o.name not in (".", ".."), "output.name", o.name,
         "must be a plain directory name (no '/')"),
        (o.format in RESULT_FORMATS, "output.format", o.format, f"allowed: {', '.join(RESULT_FORMATS)}"),
        (o.checkpoint_every >= 0, "output.checkpoint_every", o.checkpoint_every,
         "must be >= 0 (rounds between checkpoints; 0 = none)"),
    ])
    return e
