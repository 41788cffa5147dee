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
   hooks) and the client hooks (built once, in the plan, by :func:`fedsim.clients.hooks.build_hooks`);
5. the machine: the output folder (:func:`output_dir_problems`) and every package the config
   needs but fedsim imports only when it is used (:func:`optional_import_problems`).

All of this happens before the run folder exists, so bad input ends with exit status 2 and
nothing written -- including a package that would have failed to import mid-run.

The plan it returns is what a run uses (:func:`fedsim.runs.prepare.prepare`), so nothing is
derived twice. Checks that need the loaded dataset are :func:`validate_against_dataset`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fedsim.datasets import check_partition_for_dataset
from fedsim.methods.modes import MODES, RUN_MODES
from fedsim.methods.registry import method_problems
from fedsim.runs.plan import RunPlan, plan_for
from fedsim.settings import problem
from fedsim.strategies import STRATEGIES

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
    errors += output_dir_problems(config.output.dir)
    errors += optional_import_problems(config, plan)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(errors)))
    return plan


def output_dir_problems(directory: str) -> list[str]:
    """``output.dir`` must be a folder, or a path where one can be made: not a file, nor under one.

    The folder itself is created when the run starts; a path through a file would fail only
    then (as a run failure, after the run folder was claimed).
    """
    path = Path(directory).expanduser()
    for existing in (path, *path.parents):
        if existing.is_dir():
            return []
        if existing.exists() or existing.is_symlink():
            where = f"{existing} is not a folder" if existing == path else \
                f"{existing} is not a folder, so no folder can be made under it"
            return [problem("output.dir", directory, f"{where}; give a folder for the run directories "
                            "(--output / output.dir; it is created if missing)")]
    return []


# A package imported only when a setting uses it: (the modules, any one of which will do; the pip package)
TENSORBOARD = (("torch.utils.tensorboard",), "tensorboard")
PARQUET = (("pyarrow", "fastparquet"), "pyarrow")
FIGURES = (("matplotlib.figure", "matplotlib.backends.backend_agg"), "matplotlib")
DP_ACCOUNTING = (("opacus.accountants",), "opacus")


def optional_import_problems(config: ExperimentConfig, plan: RunPlan) -> list[str]:
    """A problem for each package the config needs that cannot be imported, naming the key that needs it.

    fedsim imports these only where they are used (TensorBoard's writer when the run starts,
    parquet and matplotlib when it ends, opacus for the DP accountant); checked here, a missing
    or broken install is bad input found before anything is written.
    """
    output = config.output
    needs = [
        ("output.tensorboard", output.tensorboard, TENSORBOARD, "set output.tensorboard = false (or leave out "
         "--tensorboard)"),
        ("output.tensorboard", output.tensorboard, FIGURES, "set output.tensorboard = false (its label heat map "
         "is drawn with matplotlib)"),
        ("output.format", output.format if output.format == "parquet" else None, PARQUET, 'use output.format = "csv"'),
        ("output.figures", output.figures, FIGURES, "set output.figures = false"),
        ("strategy.name", config.strategy.name if _accounts_privacy(plan) else None, DP_ACCOUNTING,
         "choose a strategy without differential privacy"),
    ]
    problems, seen = [], set()
    for key, value, (modules, package), otherwise in needs:
        if not value or (key, package) in seen:
            continue
        seen.add((key, package))
        failure = _import_failure(modules)
        if failure:
            problems.append(problem(key, value, f"needs the {package} package, which cannot be imported ({failure}); "
                                    f"install it (pip install {package}) or {otherwise}"))
    return problems


def _import_failure(modules: tuple[str, ...]) -> str:
    """Why none of ``modules`` can be imported ("" when one can): the first one's error."""
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
            return ""
        except Exception as error:  # noqa: BLE001 - a broken install raises more than ImportError
            failures.append(f"{type(error).__name__}: {error}")
    return failures[0]


def _accounts_privacy(plan: RunPlan) -> bool:
    """Whether the run's strategy is a DP wrapper, whose privacy accountant comes from opacus."""
    entry = STRATEGIES.get(plan.strategy.name)
    return bool(entry and entry.wraps and not plan.strategy.error)


def validate_against_dataset(plan: RunPlan, num_train: int, num_classes: int) -> None:
    """The checks that need the loaded dataset's size and class count."""
    config = plan.config
    errors = check_partition_for_dataset(config.partition, num_train, num_classes)
    errors += plan.method.check_for_dataset(config, num_train, num_classes)
    if errors:
        raise ConfigError("invalid configuration for this dataset:\n  " + "\n  ".join(errors))
