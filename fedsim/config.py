"""Typed, validated experiment configuration.

An experiment is described by one :class:`ExperimentConfig`: a TOML file (sections
``[data]``, ``[partition]``, ``[model]``, ``[train]``, ``[strategy]``, ``[evaluation]``,
``[simulation]``, ``[output]`` plus a top-level ``seed``) and ``section.key=value``
overrides. Every field is checked before anything is written, and a bad value raises a
:class:`ConfigError` that names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("synthetic", "cifar10", "cifar100", "npz")
RUN_MODES = ("federated", "one-shot", "centralized")
PARTITION_SCHEMES = ("iid", "dirichlet", "dirichlet-per-client", "shards", "quantity")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
RESULT_FORMATS = ("csv", "parquet")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


@dataclass
class DataConfig:
    """Where the images come from (see ``fedsim.datasets``)."""

    dataset: str = "synthetic"
    data_dir: str = ""  # "" -> $FEDSIM_DATA_DIR, else ./data
    path: str = ""  # the .npz file for dataset = "npz" (relative paths: to data_dir)
    classes: list[int] = field(default_factory=list)  # keep only these labels, relabelled 0..k-1
    download: bool = True  # torchvision download when CIFAR folders are absent
    cache_dir: str = ""  # "" -> $FEDSIM_CACHE_DIR, else ~/.cache/fedsim
    synthetic_train: int = 2000
    synthetic_test: int = 500
    synthetic_classes: int = 10
    synthetic_noise: float = 0.6


@dataclass
class PartitionConfig:
    """How training samples are split over clients (``fedsim.datasets.partitioners``)."""

    scheme: str = "dirichlet"
    num_clients: int = 10
    alpha: float = 0.5  # Dirichlet concentration (dirichlet, dirichlet-per-client, quantity)
    min_partition_size: int = 10  # dirichlet / quantity: resample until every client has this many
    self_balancing: bool = False  # dirichlet: flwr-datasets' self-balancing option
    samples_per_client: int = 500  # dirichlet-per-client: fixed n per client
    classes_per_client: int = 2  # shards: #C distinct classes per client
    val_fraction: float = 0.1  # held-out share of each client's samples for federated evaluation


@dataclass
class ModelConfig:
    """Which network every client trains (``fedsim.models``)."""

    name: str = "lenet5"
    representation_dim: int = 0  # r > 0 adds Linear(flat, r) + bias-free Linear(r, C)
    # latent-distill only: client architectures, assigned round-robin by client id
    # ("name" or "name@r"; every r must equal representation_dim). [] = every client uses `name`.
    architectures: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Rounds, sampling and the local SGD recipe.

    ``mode``: ``federated`` (rounds of sample -> train -> aggregate); ``one-shot`` (seed 001:
    every client trains once from the same initial weights for ``local_epochs`` epochs and the
    server aggregates once; needs ``rounds = 1`` and all clients, and evaluates every client's
    own model on the test set too); ``centralized`` (a baseline: the same model trained on the
    union of all clients' training data for ``rounds`` x ``local_epochs`` epochs, one row per
    round, no Flower runtime).
    """

    mode: str = "federated"
    rounds: int = 5
    fraction_train: float = 1.0  # share of clients sampled per round ...
    clients_per_round: int = 0  # ... or an exact count (> 0 overrides fraction_train)
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class StrategyConfig:
    """The Flower server strategy and its keyword arguments."""

    name: str = "fedavg"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Federated distillation with a latent representation layer (strategy ``latent-distill``).

    Each round a sampled client (1) digests: distils toward the current targets on the transfer
    set with ``lambda_ce * CE + lambda_kd * T^2 * KL + lambda_rep * MSE(rep / tau)``, (2) revisits:
    trains on its private data, (3) computes logits and representations on the transfer set and
    sends them. Targets are the consensus (mean over the round's clients, FedMD) or, with
    ``teacher = "server"``, a server model trained on the labelled transfer set (seed 004).
    """

    transfer_size: int = 1024
    transfer_classes: list[int] = field(default_factory=list)  # holdout only from these classes
    # "" = hold the transfer set out of the training set; else another dataset's training images
    # (synthetic | cifar10 | cifar100 | npz, read from data.data_dir; unlabelled for distillation)
    transfer_dataset: str = ""
    transfer_path: str = ""  # the .npz file when transfer_dataset = "npz"
    teacher: str = "consensus"  # consensus | server
    teacher_epochs: int = 20
    lambda_ce: float = 0.0  # CE on the transfer set's labels while digesting
    lambda_kd: float = 1.0
    lambda_rep: float = 1.0
    temperature: float = 4.0
    tau: float = 1.0
    digest_epochs: int = 1
    digest_batch_size: int = 64
    digest_lr: float = 0.0  # 0 = train.lr
    tpriv_size: int = 1000  # per-client test subset matching the client's class mix


@dataclass
class EvaluationConfig:
    """Centralized (server-side, test set) and federated (clients' held-out split) evaluation."""

    centralized_every: int = 1  # rounds between evaluations of the global model; 0 = never
    federated_every: int = 1  # rounds between federated evaluations; 0 = never
    fraction_evaluate: float = 1.0
    clients_per_eval: int = 0  # > 0 overrides fraction_evaluate
    batch_size: int = 512
    client_models: bool = False  # also evaluate every client's uploaded model on the test set


@dataclass
class SimulationConfig:
    """Flower simulation runtime (Ray backend) settings."""

    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    device: str = "auto"
    min_success_fraction: float = 0.5  # stop when fewer sampled clients than this succeed
    round_timeout: float = 3600.0  # seconds to wait for the replies of one round
    ray_num_cpus: int = 0  # CPUs Ray may use; 0 = all
    fail_clients: list[int] = field(default_factory=list)  # fault injection: these clients raise


@dataclass
class OutputConfig:
    """Where and how the run directory is written (``fedsim.results``)."""

    dir: str = "runs"
    name: str = ""  # "" -> <strategy>-<dataset>-<scheme>-s<seed>-<timestamp>
    format: str = "csv"
    overwrite: bool = False
    figures: bool = True


@dataclass
class ExperimentConfig:
    """Everything one experiment needs, validated as a whole by :func:`validate`."""

    seed: int = 0
    hooks: list[dict[str, Any]] = field(default_factory=list)  # client hooks, in order ([[hooks]] tables)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON serialisable)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(ExperimentConfig)[f.name]
    for f in dataclasses.fields(ExperimentConfig)
    if f.name not in ("seed", "hooks")
}


# --------------------------------------------------------------------------- building


def _allowed_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: must be a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} = {value!r}: must be a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: must be a string")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: must be a list")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: must be a table of keyword arguments")
        return dict(value)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build a config from a nested dict (a parsed TOML file), checking names and types."""
    config = ExperimentConfig()
    for key, value in raw.items():
        if key in ("seed", "hooks"):
            set_value(config, key, value)
            continue
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown config section or key {key!r}; allowed: seed, hooks, {', '.join(SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table of settings, got {value!r}")
        for sub_key, sub_value in value.items():
            set_value(config, f"{key}.{sub_key}", sub_value)
    return config


def set_value(config: ExperimentConfig, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` (or ``strategy.kwargs.name``) on ``config`` with type checking."""
    if dotted_key == "seed":
        config.seed = _coerce("seed", value, int)
        return
    if dotted_key == "hooks":
        config.hooks = _coerce("hooks", value, list[dict[str, Any]])
        return
    parts = dotted_key.split(".")
    section = parts[0]
    if section not in SECTIONS or len(parts) < 2:
        raise ConfigError(
            f"unknown config key {dotted_key!r}; keys look like 'section.key' with section "
            f"one of: seed, hooks, {', '.join(SECTIONS)}"
        )
    section_obj = getattr(config, section)
    if section == "strategy" and parts[1] == "kwargs" and len(parts) == 3:
        section_obj.kwargs[parts[2]] = value
        return
    if len(parts) != 2 or parts[1] not in _allowed_keys(section):
        raise ConfigError(
            f"unknown config key {dotted_key!r}; allowed keys in [{section}]: "
            f"{', '.join(_allowed_keys(section))}"
        )
    hints = typing.get_type_hints(SECTIONS[section])
    setattr(section_obj, parts[1], _coerce(dotted_key, value, hints[parts[1]]))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as TOML, bare words as strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw_value = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return key, value


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a TOML file (or start from defaults), apply overrides and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    config = from_dict(raw)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_value(config, key, value)
    validate(config)
    return config


# --------------------------------------------------------------------------- validation


def _check(errors: list[str], ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        errors.append(f"{key} = {value!r}: {allowed}")


def validate(config: ExperimentConfig) -> None:
    """Check every field's range and the cross-field rules; raise one error listing all problems.

    Checks that need the dataset (client count vs dataset size, class ids) are in
    :func:`validate_against_dataset`.
    """
    from fedsim.models import MODEL_NAMES  # local import: models import torch
    from fedsim.strategies import STRATEGY_NAMES

    e: list[str] = []
    c = config
    _check(e, c.seed >= 0, "seed", c.seed, "must be >= 0")
    d = c.data
    _check(e, d.dataset in DATASETS, "data.dataset", d.dataset, f"allowed: {', '.join(DATASETS)}")
    _check(e, d.dataset != "npz" or bool(d.path), "data.path", d.path,
           "dataset 'npz' needs data.path, the .npz file with x_train, y_train, x_test, y_test")
    _check(e, all(k >= 0 for k in d.classes), "data.classes", d.classes, "class ids must be >= 0")
    _check(e, len(set(d.classes)) == len(d.classes), "data.classes", d.classes,
           "class ids must be distinct")
    _check(e, len(d.classes) != 1, "data.classes", d.classes, "keep at least 2 classes (or [] for all)")
    _check(e, d.synthetic_train >= 1, "data.synthetic_train", d.synthetic_train, "must be >= 1")
    _check(e, d.synthetic_test >= 1, "data.synthetic_test", d.synthetic_test, "must be >= 1")
    _check(e, 2 <= d.synthetic_classes <= 1000, "data.synthetic_classes", d.synthetic_classes,
           "must be between 2 and 1000")
    _check(e, d.synthetic_noise >= 0, "data.synthetic_noise", d.synthetic_noise, "must be >= 0")

    p = c.partition
    _check(e, p.scheme in PARTITION_SCHEMES, "partition.scheme", p.scheme,
           f"allowed: {', '.join(PARTITION_SCHEMES)}")
    _check(e, p.num_clients >= 1, "partition.num_clients", p.num_clients, "must be >= 1")
    _check(e, p.alpha > 0, "partition.alpha", p.alpha, "must be > 0")
    _check(e, p.min_partition_size >= 0, "partition.min_partition_size", p.min_partition_size,
           "must be >= 0")
    _check(e, p.samples_per_client >= 1, "partition.samples_per_client", p.samples_per_client,
           "must be >= 1")
    _check(e, p.classes_per_client >= 1, "partition.classes_per_client", p.classes_per_client,
           "must be >= 1")
    _check(e, 0 <= p.val_fraction < 1, "partition.val_fraction", p.val_fraction,
           "must be in [0, 1)")

    m = c.model
    _check(e, m.name in MODEL_NAMES, "model.name", m.name, f"allowed: {', '.join(MODEL_NAMES)}")
    _check(e, m.representation_dim >= 0, "model.representation_dim", m.representation_dim,
           "must be >= 0 (0 = no representation layer)")

    t = c.train
    _check(e, t.rounds >= 1, "train.rounds", t.rounds, "must be >= 1")
    _check(e, 0 < t.fraction_train <= 1, "train.fraction_train", t.fraction_train,
           "must be in (0, 1]")
    _check(e, t.clients_per_round >= 0, "train.clients_per_round", t.clients_per_round,
           "must be >= 0 (0 = use fraction_train)")
    _check(e, t.clients_per_round <= p.num_clients, "train.clients_per_round", t.clients_per_round,
           f"must be <= partition.num_clients ({p.num_clients})")
    _check(e, t.local_epochs >= 1, "train.local_epochs", t.local_epochs, "must be >= 1")
    _check(e, t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(e, t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(e, 0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    _check(e, t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")

    _check(e, t.mode in RUN_MODES, "train.mode", t.mode, f"allowed: {', '.join(RUN_MODES)}")
    if t.mode == "one-shot":
        _check(e, t.rounds == 1, "train.rounds", t.rounds,
               "one-shot mode aggregates exactly once: set train.rounds = 1")
        _check(e, t.fraction_train == 1 and t.clients_per_round in (0, p.num_clients),
               "train.fraction_train", t.fraction_train,
               "one-shot mode trains every client: leave fraction_train = 1 and clients_per_round = 0")

    s = c.strategy
    _check(e, s.name in STRATEGY_NAMES, "strategy.name", s.name,
           f"allowed: {', '.join(STRATEGY_NAMES)}")
    if s.name in STRATEGY_NAMES:
        from fedsim.sampling import sample_size
        from fedsim.strategies import StrategyContext, StrategyError, build_strategy

        context = StrategyContext(t.lr, sample_size(p.num_clients, t.fraction_train, t.clients_per_round))
        try:
            build_strategy(s.name, s.kwargs, context)
        except StrategyError as err:
            e.append(f"strategy.kwargs = {s.kwargs!r}: {err}")

    _validate_distill(c, e)
    _validate_hooks(c, e)

    v = c.evaluation
    _check(e, v.centralized_every >= 0, "evaluation.centralized_every", v.centralized_every,
           "must be >= 0 (0 = never)")
    _check(e, v.federated_every >= 0, "evaluation.federated_every", v.federated_every,
           "must be >= 0 (0 = never)")
    _check(e, 0 < v.fraction_evaluate <= 1, "evaluation.fraction_evaluate", v.fraction_evaluate,
           "must be in (0, 1]")
    _check(e, 0 <= v.clients_per_eval <= p.num_clients, "evaluation.clients_per_eval",
           v.clients_per_eval, f"must be between 0 and partition.num_clients ({p.num_clients})")
    _check(e, v.batch_size >= 1, "evaluation.batch_size", v.batch_size, "must be >= 1")
    _check(e, v.federated_every == 0 or p.val_fraction > 0 or s.name == "latent-distill",
           "evaluation.federated_every",
           v.federated_every, "federated evaluation needs partition.val_fraction > 0 (or set 0)")

    sim = c.simulation
    _check(e, sim.num_cpus_per_client > 0, "simulation.num_cpus_per_client",
           sim.num_cpus_per_client, "must be > 0")
    _check(e, sim.num_gpus_per_client >= 0, "simulation.num_gpus_per_client",
           sim.num_gpus_per_client, "must be >= 0 (fractions share one GPU)")
    _check(e, _valid_device(sim.device), "simulation.device", sim.device, f"allowed: {DEVICES_HELP}")
    _check(e, 0 < sim.min_success_fraction <= 1, "simulation.min_success_fraction",
           sim.min_success_fraction, "must be in (0, 1]")
    _check(e, sim.round_timeout > 0, "simulation.round_timeout", sim.round_timeout, "must be > 0")
    _check(e, all(0 <= k < p.num_clients for k in sim.fail_clients), "simulation.fail_clients",
           sim.fail_clients, f"client ids must be in 0..{p.num_clients - 1}")
    _check(e, sim.ray_num_cpus >= 0, "simulation.ray_num_cpus", sim.ray_num_cpus,
           "must be >= 0 (0 = all CPUs)")

    o = c.output
    _check(e, bool(o.dir), "output.dir", o.dir, "must not be empty")
    _check(e, "/" not in o.name and o.name not in (".", ".."), "output.name", o.name,
           "must be a plain directory name (no '/')")
    _check(e, o.format in RESULT_FORMATS, "output.format", o.format,
           f"allowed: {', '.join(RESULT_FORMATS)}")
    if e:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(e))


def parse_architecture(entry: str) -> tuple[str, int | None]:
    """``"name"`` or ``"name@r"`` -> (name, r or None)."""
    name, _, width = entry.partition("@")
    if width and not width.isdigit():
        raise ConfigError(f"model.architectures entry {entry!r}: write name or name@r with an integer r")
    return name, int(width) if width else None


def _validate_distill(c: ExperimentConfig, e: list[str]) -> None:
    from fedsim.models import MODEL_NAMES

    m, d = c.model, c.distill
    distilling = c.strategy.name == "latent-distill"
    widths, names = set(), set()
    for entry in m.architectures:
        try:
            name, width = parse_architecture(entry)
        except ConfigError as err:
            e.append(str(err))
            continue
        names.add(name)
        _check(e, name in MODEL_NAMES, "model.architectures", m.architectures,
               f"unknown architecture {name!r}; allowed: {', '.join(MODEL_NAMES)}")
        widths.add(m.representation_dim if width is None else width)
    _check(e, widths <= {m.representation_dim}, "model.architectures", m.architectures,
           f"mismatched representation widths {sorted(widths)}: every client shares r = "
           f"model.representation_dim ({m.representation_dim}) so that representations are comparable")
    heterogeneous = bool(names) and names != {m.name}
    _check(e, distilling or not heterogeneous, "model.architectures", m.architectures,
           f"clients with other architectures than model.name need strategy latent-distill; "
           f"{c.strategy.name!r} averages weights")
    if not distilling:
        return
    _check(e, c.train.mode == "federated", "train.mode", c.train.mode, "latent-distill runs in federated mode")
    _check(e, d.transfer_size >= 1, "distill.transfer_size", d.transfer_size, "must be >= 1")
    if d.transfer_dataset:
        _check(e, d.transfer_dataset in DATASETS, "distill.transfer_dataset", d.transfer_dataset,
               f"allowed: '' (hold out from the training set), {', '.join(DATASETS)}")
        _check(e, d.transfer_dataset != "npz" or bool(d.transfer_path), "distill.transfer_path",
               d.transfer_path, "transfer_dataset 'npz' needs the .npz file")
        _check(e, d.teacher == "consensus", "distill.teacher", d.teacher,
               "a server teacher trains on labels; another dataset's labels are not the clients' classes: "
               "use teacher = 'consensus' or hold the transfer set out of the training set")
        _check(e, d.lambda_ce == 0, "distill.lambda_ce", d.lambda_ce,
               "another dataset's labels are not the clients' classes: set lambda_ce = 0")
        _check(e, not d.transfer_classes, "distill.transfer_classes", d.transfer_classes,
               "class subsets apply to a hold-out of the training set only")
    _check(e, d.teacher in ("consensus", "server"), "distill.teacher", d.teacher, "allowed: consensus, server")
    _check(e, d.teacher_epochs >= 1, "distill.teacher_epochs", d.teacher_epochs, "must be >= 1")
    for key in ("lambda_ce", "lambda_kd", "lambda_rep"):
        _check(e, getattr(d, key) >= 0, f"distill.{key}", getattr(d, key), "must be >= 0")
    _check(e, d.temperature > 0, "distill.temperature", d.temperature, "must be > 0")
    _check(e, d.tau > 0, "distill.tau", d.tau, "must be > 0")
    _check(e, d.digest_epochs >= 0, "distill.digest_epochs", d.digest_epochs, "must be >= 0")
    _check(e, d.digest_batch_size >= 1, "distill.digest_batch_size", d.digest_batch_size, "must be >= 1")
    _check(e, d.digest_lr >= 0, "distill.digest_lr", d.digest_lr, "must be >= 0 (0 = train.lr)")
    _check(e, d.tpriv_size >= 1, "distill.tpriv_size", d.tpriv_size, "must be >= 1")
    _check(e, d.lambda_rep == 0 or m.representation_dim > 0, "distill.lambda_rep", d.lambda_rep,
           "the representation loss needs model.representation_dim > 0")
    _check(e, c.evaluation.client_models is False, "evaluation.client_models", True,
           "latent-distill evaluates every client's own model already (T_priv, T_uni)")


def _validate_hooks(c: ExperimentConfig, e: list[str]) -> None:
    from fedsim.clients.hooks import HookError, build_hooks

    try:
        build_hooks(list(c.hooks))
    except HookError as err:
        e.append(f"hooks: {err}")
        return
    if c.hooks and c.strategy.name == "latent-distill":
        e.append("hooks: client hooks apply to weight-based strategies; latent-distill has its own digest step")
    if c.hooks and c.train.mode == "centralized":
        e.append("hooks: the centralized baseline runs no clients; remove the hooks or use mode federated")


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


def validate_against_dataset(config: ExperimentConfig, num_train: int, num_classes: int) -> None:
    """The checks that need the loaded dataset's size and class count."""
    e: list[str] = []
    p = config.partition
    _check(e, p.num_clients <= num_train, "partition.num_clients", p.num_clients,
           f"must be <= the {num_train} training samples")
    if p.scheme in ("dirichlet", "quantity"):
        _check(e, p.min_partition_size * p.num_clients <= num_train,
               "partition.min_partition_size", p.min_partition_size,
               f"x {p.num_clients} clients exceeds the {num_train} training samples")
    if p.scheme == "dirichlet-per-client":
        _check(e, p.samples_per_client * p.num_clients <= num_train,
               "partition.samples_per_client", p.samples_per_client,
               f"x {p.num_clients} clients exceeds the {num_train} training samples")
    if p.scheme == "shards":
        _check(e, p.classes_per_client <= num_classes, "partition.classes_per_client",
               p.classes_per_client, f"must be <= the dataset's {num_classes} classes")
    if config.strategy.name == "latent-distill" and not config.distill.transfer_dataset:
        d = config.distill
        _check(e, d.transfer_size < num_train, "distill.transfer_size", d.transfer_size,
               f"must leave private data: the training set has {num_train} samples")
        _check(e, all(k < num_classes for k in d.transfer_classes), "distill.transfer_classes",
               d.transfer_classes, f"class ids must be < {num_classes}")
    if e:
        raise ConfigError("invalid configuration for this dataset:\n  " + "\n  ".join(e))
