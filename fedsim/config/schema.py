"""The experiment config's schema: its sections, each a dataclass owned by the module that reads it.

One :class:`ExperimentConfig` describes an experiment: a top-level ``seed``, the client
``[[hooks]]`` tables and one attribute per section. Each section's class lives next to the
code that reads it (``fedsim/<package>/settings.py``) with its own rules; this file only lists
them, so adding a section is one line here plus its class. The section tables:

==================  ==========================================  =============================================
section             what it says                                owned by
==================  ==========================================  =============================================
``[data]``          where the images come from                  :mod:`fedsim.datasets.settings`
``[partition]``     how the training set is split over clients  :mod:`fedsim.datasets.settings`
``[model]``         the network the clients train               :mod:`fedsim.models.settings`
``[train]``         rounds, sampling, the local recipe          :mod:`fedsim.core.settings`
``[strategy]``      the server strategy and its arguments       :mod:`fedsim.strategies.settings`
``[evaluation]``    central and federated evaluation            :mod:`fedsim.core.settings`
``[runtime]``       Flower's simulation runtime, Ray resources  :mod:`fedsim.runs.settings`
``[executor]``      where client tasks run, time limits         :mod:`fedsim.runs.settings`
``[engine]``        how a worker trains its clients             :mod:`fedsim.clients.lockstep.settings`
``[faults]``        clients that fail on purpose                :mod:`fedsim.clients.behaviours`
``[time]``          simulated time: devices, availability,      :mod:`fedsim.timing.settings`
                    round policy
``[privacy]``       DP accounting                               :mod:`fedsim.methods.privacy.settings`
``[latent_distill]`` latent-distill's own settings              :mod:`fedsim.methods.latent_distill.settings`
``[output]``        the run directory                           :mod:`fedsim.outputs.settings`
==================  ==========================================  =============================================

Parsing (TOML files and ``section.key=value`` overrides, with names and types checked as
values are set) is :mod:`fedsim.config.parse`; the old names of renamed keys are in
:mod:`fedsim.config.renamed`; value rules are collected by :mod:`fedsim.config.validation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fedsim.clients.behaviours import FaultSettings
from fedsim.clients.lockstep.settings import EngineSettings
from fedsim.core.settings import EvaluationSettings, TrainSettings
from fedsim.datasets.settings import DataSettings, PartitionSettings
from fedsim.errors import InputError
from fedsim.methods.latent_distill.settings import LatentDistillSettings
from fedsim.methods.privacy.settings import PrivacySettings
from fedsim.models.settings import ModelSettings
from fedsim.outputs.settings import OutputSettings
from fedsim.runs.settings import ExecutorSettings, RuntimeSettings
from fedsim.settings import KINDS, Section, setting
from fedsim.strategies.settings import StrategySettings
from fedsim.timing.settings import TimeSettings

MAX_SEED = 2**32 - 1  # NumPy's legacy global generator (seeded per round) takes 32-bit seeds


class ConfigError(InputError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


@dataclass
class ExperimentConfig(Section):
    """Everything one experiment needs; validated as a whole by :func:`fedsim.config.validation.validate`."""

    seed: int = setting(0, "drives the partition, initial weights, client sampling and local shuffling "
                        f"(0..{MAX_SEED})")
    hooks: list[dict[str, Any]] = setting(help="client hooks, in order (`[[hooks]]` tables, each with `name` and "
                                          "its parameters; see Client hooks)", factory=list)
    data: DataSettings = setting(factory=DataSettings)
    partition: PartitionSettings = setting(factory=PartitionSettings)
    model: ModelSettings = setting(factory=ModelSettings)
    train: TrainSettings = setting(factory=TrainSettings)
    strategy: StrategySettings = setting(factory=StrategySettings)
    evaluation: EvaluationSettings = setting(factory=EvaluationSettings)
    runtime: RuntimeSettings = setting(factory=RuntimeSettings)
    executor: ExecutorSettings = setting(factory=ExecutorSettings)
    engine: EngineSettings = setting(factory=EngineSettings)
    faults: FaultSettings = setting(factory=FaultSettings)
    time: TimeSettings = setting(factory=TimeSettings)
    privacy: PrivacySettings = setting(factory=PrivacySettings)
    latent_distill: LatentDistillSettings = setting(factory=LatentDistillSettings)
    output: OutputSettings = setting(factory=OutputSettings)

    def check(self, prefix: str = "") -> list[str]:
        return [] if 0 <= self.seed <= MAX_SEED else [
            f"seed = {self.seed!r}: must be an integer in 0..{MAX_SEED}"]

    def sections(self) -> Iterator[tuple[str, Section]]:
        """Every section with its dotted name, nested ones (``time.devices``) after their parent."""
        yield from _sections(self, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON serialisable); a tagged section carries its ``kind``."""
        return _to_dict(self)


def is_section(f: dataclasses.Field) -> bool:
    """Whether a field holds a (nested or tagged) section rather than a value."""
    return KINDS in f.metadata or (f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                                   and isinstance(f.default_factory, type) and issubclass(f.default_factory, Section))


def _sections(section: Section, prefix: str) -> Iterator[tuple[str, Section]]:
    for f in dataclasses.fields(section):
        if is_section(f):
            name = f"{prefix}.{f.name}" if prefix else f.name
            child = getattr(section, f.name)
            yield name, child
            yield from _sections(child, name)


def _to_dict(section: Section, tagged: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": section.kind} if tagged else {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = _to_dict(value, KINDS in f.metadata) if is_section(f) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
