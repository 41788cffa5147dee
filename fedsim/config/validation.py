"""Validate an experiment config; the result is the run's plan.

:func:`validate` collects every problem at once and raises one :class:`ConfigError` naming
each key, its value and what is allowed. It asks, in this order:

1. every section for the problems of its own values (:meth:`fedsim.settings.Section.check`,
   next to the section's keys in the module that owns them);
2. the run plan for the values derived from the config (:func:`fedsim.runs.plan.plan_for`:
   clients per round, the strategy built once, the method, the run mode, ...);
3. every section for how it combines with the others and with the plan (a section's
   ``check_against``: e.g. ``[engine]`` on which executors lockstep training works with);
4. the run mode, the method (its rules, and whether it takes the configured architectures and
   hooks) and the client hooks (built once, in the plan, by :func:`fedsim.clients.hooks.build_hooks`).

The plan it returns is what a run uses (:func:`fedsim.runs.prepare.prepare`), so nothing is
derived twice. Checks that need the loaded dataset are :func:`validate_against_dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.datasets import check_partition_for_dataset
from fedsim.methods.modes import MODES, RUN_MODES
from fedsim.methods.registry import method_problems
from fedsim.runs.plan import RunPlan, plan_for
from fedsim.settings import problem

from .parse import read_config
from .schema import ConfigError, ExperimentConfig


def load_config(path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML file (or start from defaults), apply overrides and validate."""
    config = read_config(path, overrides)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> RunPlan:
    """Check every rule (see the module); raise one error listing all problems, else return the plan."""
    sections = [("", config), *config.sections()]
    errors = [error for prefix, section in sections for error in section.check(prefix)]
    plan = plan_for(config)
    for _, section in sections:
        check_against = getattr(section, "check_against", None)
        if check_against is not None:
            errors += check_against(config, plan)
    mode = MODES.get(config.train.mode)
    errors += [problem("train.mode", config.train.mode, f"allowed: {', '.join(RUN_MODES)}")] if mode is None \
        else mode.rule(config)
    errors += method_problems(config, plan.method)
    if plan.hooks_error:
        errors.append(f"hooks: {plan.hooks_error}")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(errors)))
    return plan


def validate_against_dataset(plan: RunPlan, num_train: int, num_classes: int) -> None:
    """The checks that need the loaded dataset's size and class count."""
    config = plan.config
    errors = check_partition_for_dataset(config.partition, num_train, num_classes)
    errors += plan.method.check_for_dataset(config, num_train, num_classes)
    if errors:
        raise ConfigError("invalid configuration for this dataset:\n  " + "\n  ".join(errors))
