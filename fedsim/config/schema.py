"""The experiment configuration's schema and its parsing (TOML files, ``section.key=value`` overrides).

An experiment is described by one :class:`ExperimentConfig`: a TOML file (sections
``[data]``, ``[partition]``, ``[model]``, ``[train]``, ``[strategy]``, ``[distill]``,
``[evaluation]``, ``[simulation]``, ``[time]``, ``[output]``, ``[privacy]``, a top-level ``seed`` and ``[[hooks]]``
tables) and overrides. This module checks names and types as values are set; the rules on
values (ranges, allowed names, cross-field rules) are asked of the registries that own them
by :mod:`fedsim.config.validation`, which also provides :func:`~fedsim.config.validation.load_config`.
The ``[data]`` and ``[partition]`` sections are the datasets package's own settings classes.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.datasets.settings import DataSettings as DataConfig
from fedsim.errors import InputError
from fedsim.datasets.settings import PartitionSettings as PartitionConfig
from fedsim.datasets.settings import problem


class ConfigError(InputError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


__all__ = ["ConfigError", "DataConfig", "ExperimentConfig", "PartitionConfig", "problem"]


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

    ``mode`` is one of :data:`fedsim.methods.modes.MODES` (``federated``, ``one-shot``,
    ``centralized``); the local recipe fields become the run's one
    :class:`~fedsim.core.recipe.SGDRecipe` (:func:`fedsim.runs.prepare.training_recipe`).
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
    ``teacher = "server"``, a server model trained on the labelled transfer set (Schmitt's setting;
    ``docs/methods.md``).
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
    node_wait: float = 300.0  # seconds to wait at the start for the nodes (Ray start-up; a deployment's SuperNodes)
    ray_num_cpus: int = 0  # CPUs Ray may use; 0 = all
    executor: str = "cohort"  # where client tasks run: cohort | flower | in-process (fedsim.runs.executors)
    workers: int = 0  # cohort executor: worker nodes; 0 = as many as the per-client resources allow
    ray_address: str = ""  # "" = start Ray here; else an existing Ray cluster's address (host:port)
    client_timeout: float = 0.0  # seconds one client may take on a worker (cohort, in-process); 0 = round_timeout
    streaming: bool = False  # cohort workers reply with partial weighted means (weighted-mean strategies)
    fail_clients: list[int] = field(default_factory=list)  # fault injection: these clients raise
    engine: str = "sequential"  # how a worker trains its clients: sequential | vectorized (fedsim.clients.lockstep)
    lockstep_clients: int = 0  # vectorized: most clients trained in lockstep at once; 0 = as many as fit in memory
    lockstep_memory: float = 0.5  # vectorized: fraction of the device's free memory a lockstep chunk may use
    compile: bool = False  # vectorized: torch.compile the lockstep step (once per architecture and chunk size)


@dataclass
class TimeConfig:
    """Simulated time: device profiles, availability, synchronous deadlines and over-selection.

    Off by default (``devices = "none"``): rounds take no simulated time. The rules and the
    arithmetic live in :mod:`fedsim.timing`; ``docs/simulated_time.md`` is the reference.
    """

    devices: str = "none"  # none | lognormal | tiers | file
    seconds_per_sample: float = 0.002  # lognormal: median training time per sample of a LeNet-5-sized model
    download_mbps: float = 20.0  # lognormal: median download bandwidth (megabit/s)
    upload_mbps: float = 5.0  # lognormal: median upload bandwidth (megabit/s)
    latency: float = 0.05  # lognormal: seconds added to every transfer
    compute_sigma: float = 0.5  # lognormal and tiers: spread (sigma of log) of seconds_per_sample
    network_sigma: float = 0.5  # lognormal and tiers: spread of the bandwidths
    tiers: list[str] = field(default_factory=lambda: ["fast", "medium", "slow"])  # tiers: presets drawn
    tier_weights: list[float] = field(default_factory=list)  # tiers: draw probabilities ([] = equal)
    devices_file: str = ""  # file: CSV of profiles per client (client_id) or per device type (device)
    round_jitter: float = 0.0  # sigma of a per-round lognormal factor on each client's compute time
    availability: str = "always"  # always | bernoulli | daily | trace
    availability_p: float = 0.8  # bernoulli: probability a client is online in a round
    daily_on_hours: float = 8.0  # daily: hours online per period (phase drawn per client)
    daily_period_hours: float = 24.0  # daily: length of the on/off cycle
    trace_file: str = ""  # trace: CSV of online intervals (client_id, start, end in seconds)
    trace_period: float = 0.0  # trace: repeat the trace every this many seconds (0 = no repeat)
    deadline: float = 0.0  # synchronous: seconds a round waits; later clients are stragglers (0 = none)
    over_selection: float = 0.0  # synchronous: sample ceil((1 + x) * K) and keep the first K to finish
    train_dropped: bool = False  # also train stragglers, offline and surplus clients (then discard them)
    concurrency: int = 0  # asynchronous strategies: clients training at once (0 = the round's sample size)


@dataclass
class PrivacyConfig:
    """Privacy accounting of the DP strategies (``fedsim.methods.privacy``, ``docs/privacy.md``); unused otherwise."""

    accountant: str = "rdp"  # rdp | prv (Opacus accountants)
    delta: float = 0.0  # 0 = auto: min(1e-5, partition.num_clients ** -1.1); else must be < 1 / num_clients


@dataclass
class OutputConfig:
    """Where and how the run directory is written (``fedsim.outputs.results``)."""

    dir: str = "runs"
    name: str = ""  # "" -> <strategy>-<dataset>-<scheme>-s<seed>-<timestamp>
    format: str = "csv"
    overwrite: bool = False  # replace an existing *fedsim* run directory of that name (never any other folder)
    figures: bool = True
    checkpoint_every: int = 1  # rounds between checkpoints (the last round always gets one); 0 = none
    tensorboard: bool = False  # also write TensorBoard event files to <run dir>/tensorboard/ (fedsim.outputs.tensorboard)


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
    time: TimeConfig = field(default_factory=TimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

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


def read_config(path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML file (or start from defaults) and apply overrides; names and types checked.

    Value rules are not checked here: :func:`fedsim.config.validation.load_config` does both.
    """
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
    return config


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
