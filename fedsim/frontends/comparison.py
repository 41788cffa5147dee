"""``fedsim compare``: several strategies on the identical partition, initial weights and sampling.

Every compared run uses the same config except the strategy (or the ``centralized``
baseline); in a comparison that includes ``latent-distill`` with heterogeneous
``model.architectures``, the weight-averaging entries give every client ``model.name`` (FedAvg
with homogeneous models as the reference, as the run's ``config.toml`` records). Partition, initial weights and the client-sampling sequence depend only on the
dataset, the partition settings and the seed, so for each seed all strategies see exactly the
same clients in the same rounds (tested). The federated runs share one Flower simulation runtime
(``fedsim.runs.experiment.run_many``) and execute one after another; a strategy that fails is
reported in the summary and the others still run.

The comparison directory holds ``runs/<label>-s<seed>/`` (ordinary run directories without
figures: ``fedsim plot`` draws a run's, and the comparison draws its own), a tidy
table ``tidy.csv`` (strategy, seed, round, metric, value), ``summary.csv`` (one row per
strategy and seed), ``summary_by_strategy.csv`` (mean and std over seeds) and figures:
accuracy vs round, accuracy vs cumulative MB communicated and -- when the runs simulate time --
accuracy vs simulated hours (mean with a min-max band over seeds) and every entry's client round
times (first seed), and the final confusion matrices side by side.

An entry may carry config settings of its own: in ``fedavg:time.policy.deadline=600`` a key with a dot
is a config key set for that entry only (a strategy's keyword arguments have no dots), so
``--strategies fedavg,fedavg:time.policy.deadline=600,fedbuff:buffer_size=10`` compares synchronous
FedAvg with and without a deadline and FedBuff on the same devices and data.

A **grid** sweeps any config keys: ``grid={"partition.alpha": [0.05, 0.1, 0.5, 1.0]}`` (the command
line's ``--grid 'partition.alpha=[0.05,0.1,0.5,1.0]'``, repeatable: several keys make the cartesian
product) runs every strategy and seed in every grid cell. Within a cell everything but the
strategy is the same, so every strategy sees the same partition for a seed; the cell's runs
are in ``runs/<cell>/<label>-s<seed>/``. Every table gets one column per grid key
(``summary_by_strategy.csv`` has one row per cell and strategy), and ``figures/sweep_<metric>.png``
draw each metric (final and best accuracy, MB communicated, and rounds/hours to target or
simulated hours where there are any) against the first grid key, one line per strategy with
error bars of one standard deviation over seeds, one panel per combination of the other keys.
Every cell's config is checked before anything is written.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.config import ConfigError, ExperimentConfig, current_name, parse_override, set_value
from fedsim.config.validation import validate
from fedsim.errors import InputError
from fedsim.methods.registry import method_for
from fedsim.outputs import rundir
from fedsim.outputs.results import RunResult
from fedsim.ops.interrupt import RunInterrupted
from fedsim.strategies import STRATEGY_NAMES, StrategyError, parse_strategy_spec

CENTRALIZED = "centralized"
KIND = "comparison"  # the run-directory marker's kind (fedsim.outputs.rundir)
CONFIRM_ABOVE = 100
"""A comparison of more runs than this asks before it starts: ``fedsim compare`` asks on a terminal and,
without one, needs ``--yes``; the Python API asks only through its ``confirm`` callback."""
TIDY_METRICS = ("test_accuracy", "test_loss", "test_f1", "train_loss", "train_accuracy",
                "fed_eval_accuracy", "cumulative_mb", "sim_hours", "staleness_mean", "clients_dropped")


@dataclass(frozen=True)
class StrategySpec:
    """One compared entry: a label for tables and figures, a strategy name, its kwargs, and
    config settings of its own (``fedavg:time.policy.deadline=600``: a key with a dot is a config key)."""

    label: str
    name: str
    kwargs: dict
    mode: str = "federated"
    overrides: dict = field(default_factory=dict)

    def apply(self, config: ExperimentConfig, seed: int) -> ExperimentConfig:
        out = copy.deepcopy(config)
        for key, value in self.overrides.items():
            set_value(out, key, value)
        out.seed = seed
        if self.name == CENTRALIZED:
            out.train.mode = CENTRALIZED
        else:
            out.strategy.name = self.name
            out.strategy.kwargs = dict(self.kwargs)
            if out.train.mode == CENTRALIZED:
                out.train.mode = "federated"
        if self.name == CENTRALIZED or not method_for(self.name).heterogeneous_architectures:
            # weight averaging needs one architecture: such entries run model.name on every client
            out.model.architectures = []
        return out


def parse_strategies(specs: str | list[str]) -> list[StrategySpec]:
    """``"fedavg,ema:beta=0.5,centralized"`` (or a list of such specs) -> StrategySpecs."""
    items = [s for part in ([specs] if isinstance(specs, str) else specs) for s in part.split(",")]
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise StrategyError("no strategies given; e.g. --strategies fedavg,uniform,centralized")
    parsed = []
    for item in items:
        name, arguments = parse_strategy_spec(item)
        kwargs = {k: v for k, v in arguments.items() if "." not in k}
        overrides = {current_name(k, v): v for k, v in arguments.items() if "." in k}
        for key in overrides:
            if key.split(".")[0] in ("strategy", "output") or key == "seed":
                raise StrategyError(f"{item!r}: {key} cannot differ between compared entries (the entry names the "
                                    "strategy; output and seeds belong to the comparison)")
        if name != CENTRALIZED and name not in STRATEGY_NAMES:
            raise StrategyError(f"unknown strategy {name!r} in {item!r}; allowed: "
                                f"{', '.join(STRATEGY_NAMES)}, {CENTRALIZED}")
        if name == CENTRALIZED and kwargs:
            raise StrategyError(f"{item!r}: the centralized baseline takes no arguments")
        parsed.append(StrategySpec(label=item, name=name, kwargs=kwargs, overrides=overrides))
    labels = [p.label for p in parsed]
    if len(set(labels)) != len(labels):
        raise StrategyError(f"strategies listed twice: {labels}")
    return parsed


def _dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


GRID_HELP = "KEY=[VALUE,...], e.g. partition.alpha=[0.05,0.1,0.5,1.0] (values in TOML, as for --set)"


def parse_grid(specs: str | list[str] | dict[str, list] | None) -> dict[str, list]:
    """``["partition.alpha=[0.05,0.1]", "train.lr=[0.01,0.1]"]`` (or a dict key -> values) -> the grid.

    Each key must be a config key that may differ between compared runs (not ``seed``: that is
    ``seeds``; not ``strategy.*``: the entries name the strategy; not ``output.*``), given once,
    with a non-empty list of distinct values of the key's type. Range rules are checked per
    cell by :func:`compare`. Raises :class:`ConfigError` naming the bad item and what is allowed.
    """
    if not specs:
        return {}
    if isinstance(specs, dict):
        items = [(str(key), values, f"{key}={values!r}") for key, values in specs.items()]
    else:
        items = []
        for text in [specs] if isinstance(specs, str) else specs:
            if "=" not in text:
                raise ConfigError(f"--grid {text!r}: must look like {GRID_HELP}")
            key, values = parse_override(text)
            if isinstance(values, str) and values.startswith("["):
                raise ConfigError(f"--grid {text!r}: {values!r} is not a valid TOML list; expected {GRID_HELP} "
                                  "(strings in quotes: model.name=[\"lenet5\",\"resnet18\"])")
            items.append((key, values, text))
    grid: dict[str, list] = {}
    for key, values, text in items:
        if not key:
            raise ConfigError(f"--grid {text!r}: no key; expected {GRID_HELP}")
        if key == "seed":
            raise ConfigError(f"--grid {text!r}: seeds are swept with --seeds (seeds=[...]), not the grid")
        if key.split(".")[0] in ("strategy", "output"):
            raise ConfigError(f"--grid {text!r}: {key} cannot be swept (the --strategies entries name the strategy "
                              "and its arguments, e.g. fedprox:proximal_mu=0.01,fedprox:proximal_mu=0.1; output "
                              "belongs to the comparison); any other config key can")
        key = current_name(key, values[0] if isinstance(values, list) and values else None)
        if key in grid:
            raise ConfigError(f"--grid {text!r}: {key} is swept twice; give all its values in one list")
        if not isinstance(values, list):
            raise ConfigError(f"--grid {text!r}: {values!r} is not a list; expected {GRID_HELP}")
        if not values:
            raise ConfigError(f"--grid {text!r}: the list of values is empty; give at least one value, "
                              f"e.g. {key}=[v1,v2]")
        texts = [_column_value(v) for v in values]
        if len(set(map(repr, texts))) != len(texts):
            raise ConfigError(f"--grid {text!r}: values listed twice: {values}")
        for value in values:  # names and types: the first error says what the key allows
            try:
                set_value(ExperimentConfig(), key, value)
            except ConfigError as err:
                raise ConfigError(f"--grid {text!r}: {err}") from err
        grid[key] = list(values)
    return grid


def _column_value(value: object) -> object:
    """A grid value as a table cell: numbers, strings and booleans as they are, lists and tables as JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class GridCell:
    """One point of a sweep: the config values it sets, their table form and its runs' folder."""

    values: dict = field(default_factory=dict)  # config key -> value, in grid order
    folder: str = ""  # under runs/ ("" without a grid: the runs are directly in runs/)

    @property
    def columns(self) -> dict:
        """The grid keys as table columns (lists and tables as JSON text)."""
        return {key: _column_value(value) for key, value in self.values.items()}

    def describe(self) -> str:
        """``partition.alpha=0.05, train.lr=0.1`` for messages and figure labels."""
        return ", ".join(f"{key}={value}" for key, value in self.columns.items())

    def apply(self, config: ExperimentConfig) -> ExperimentConfig:
        """A copy of ``config`` with the cell's values set (type-checked)."""
        out = copy.deepcopy(config)
        for key, value in self.values.items():
            set_value(out, key, value)
        return out


def grid_cells(grid: dict[str, list]) -> list[GridCell]:
    """The cartesian product of the grid, first key slowest; one cell without a grid."""
    if not grid:
        return [GridCell()]
    cells, used = [], set()
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        folder = _dir_name("__".join(f"{k}={_column_value(v)}" for k, v in values.items()))[:120]
        if folder in used:  # different values that sanitize alike (e.g. "a b" and "a_b")
            folder = f"{folder}-{len(cells)}"
        used.add(folder)
        cells.append(GridCell(values, folder))
    return cells


@dataclass
class ComparisonResult:
    """A finished comparison: its folder and tables."""

    path: Path
    tidy: pd.DataFrame
    summary: pd.DataFrame
    by_strategy: pd.DataFrame
    grid: dict[str, list] = field(default_factory=dict)  # the swept keys and values ({} without a grid)


def _rounds_to_target(rounds: pd.DataFrame, target: float | None) -> float:
    if target is None:
        return float("nan")
    reached = rounds[(rounds["round"] > 0) & (rounds["test_accuracy"] >= target)]
    return float(reached["round"].iloc[0]) if len(reached) else float("nan")


def _hours_to_target(rounds: pd.DataFrame, target: float | None) -> float:
    """Simulated hours until the test accuracy first reaches ``target`` (NaN: never, or no target)."""
    if target is None:
        return float("nan")
    reached = rounds[(rounds["round"] > 0) & (rounds["test_accuracy"] >= target)]
    return float(reached["sim_hours"].iloc[0]) if len(reached) else float("nan")


def compare(
    config: ExperimentConfig,
    strategies: str | list[str],
    seeds: list[int] | None = None,
    target: float | None = None,
    progress: bool = True,
    verbose: bool = False,
    on_run: Callable[[str, int], None] | None = None,
    grid: str | list[str] | dict[str, list] | None = None,
    confirm: Callable[[str], bool] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> ComparisonResult:
    """Run every strategy for every seed (in every cell of ``grid``) on identical data; write and return it.

    ``grid`` sweeps config keys (see :func:`parse_grid`); ``on_run`` then gets the label with the
    cell, ``"fedavg @ partition.alpha=0.1"``. Every run's config is validated before anything is
    written. A run that fails is a row with ``status = failed`` (the others go on); Ctrl-C raises
    :class:`~fedsim.ops.interrupt.RunInterrupted` with the comparison kept as ``<name>.interrupted``.

    ``on_note`` gets the number of runs before anything starts (``"12 runs: 3 strategies x 2 seeds
    x 2 grid cells"``) and, when the first run has finished, an estimate for the others (``"first
    run took 41 s; about 7.5 min for the other 11"``). With more than :data:`CONFIRM_ABOVE` runs,
    ``confirm`` (if given) is asked with that count first; when it answers False nothing is written
    and :class:`RunsNotConfirmed` is raised. Without ``confirm`` nothing asks or blocks.
    """
    specs = parse_strategies(strategies)
    swept = parse_grid(grid)
    seeds = list(seeds) if seeds else [config.seed]
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds = {seeds}: must be distinct integers >= 0")
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"target = {target}: must be an accuracy in (0, 1]")
    for spec in specs:
        both = [key for key in swept if key in spec.overrides]
        if both:
            raise ConfigError(f"strategy {spec.label!r} sets {', '.join(both)}, which the grid sweeps; a key is "
                              "either swept (--grid) or set per entry, not both")
    cells = grid_cells(swept)
    confirm_size(len(specs), len(seeds), len(cells) if swept else 0, confirm, on_note)
    for cell in cells:  # refuse bad input before anything is written: every run's config
        where = f"grid cell {cell.describe()}, " if swept else ""
        for spec in specs:
            for seed in seeds:
                try:
                    validate(spec.apply(cell.apply(config), seed))
                except ConfigError as err:
                    raise ConfigError(f"{where}strategy {spec.label!r}: {err}") from err
                if not swept:
                    break  # as before: only the seed differs, and seeds were checked above

    final, staging = rundir.create_output_staging(config.output.dir, config.output.name,
                                                  f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
                                                  config.output.overwrite, kind=KIND)
    try:
        result = _compare(config, specs, seeds, target, progress, verbose, on_run, staging, final, swept, cells,
                          on_note)
    except RunInterrupted as interrupted:
        kept = rundir.mark_interrupted(staging, final, kind=KIND)
        raise RunInterrupted(f"{interrupted}; the comparison so far is kept in {kept}") from None
    except BaseException as error:
        if staging.exists():
            failed = rundir.mark_failed(staging, final, error, kind=KIND)
            error.add_note(f"partial output kept in {failed}")
        raise
    finally:
        rundir.release(final)  # published, kept or failed: the name is free again
    return result


def _compare(config: ExperimentConfig, specs: list[StrategySpec], seeds: list[int], target: float | None,
             progress: bool, verbose: bool, on_run: Callable[[str, int], None] | None, staging: Path,
             final: Path, grid: dict[str, list], cells: list[GridCell],
             on_note: Callable[[str], None] | None = None) -> ComparisonResult:
    """Run the entries into ``staging``, write the tables and figures, publish as ``final``."""
    from fedsim.runs.experiment import run_many

    rundir.write_config(config, staging)
    if grid:
        (staging / "grid.json").write_text(json.dumps(grid, indent=1) + "\n")
    # every (cell, entry, seed) is an ordinary run under runs/, all run by one run_many: the
    # federated ones share one Flower runtime, and one that fails does not stop the others
    entries = [(cell, spec, seed) for cell in cells for seed in seeds for spec in specs]
    names = [f"{spec.label} @ {cell.describe()}" if grid else spec.label for cell, spec, _ in entries]
    run_configs = []
    for cell, spec, seed in entries:
        run_config = spec.apply(cell.apply(config), seed)
        run_config.output.dir = str(staging / "runs" / cell.folder)
        run_config.output.name = f"{_dir_name(spec.label)}-s{seed}"
        run_config.output.overwrite = False
        run_config.output.figures = False  # the comparison draws its own; `fedsim plot` draws a run's
        run_configs.append(run_config)
    estimate = Estimate(len(entries), on_note)

    def on_start(i: int) -> None:
        estimate.run_started()
        if on_run:
            on_run(names[i], entries[i][2])

    outcomes = run_many(run_configs, progress=progress, verbose=verbose, on_start=on_start)
    interrupted = [o for o in outcomes if isinstance(o, RunInterrupted)]
    if interrupted:  # Ctrl-C: compare() keeps what there is as <name>.interrupted
        raise interrupted[0]
    rows, tidy_parts, confusions, times = [], [], {}, {}
    for (cell, spec, seed), result in zip(entries, outcomes):
        row = {**cell.columns, "strategy": spec.label, "seed": seed}
        if isinstance(result, BaseException):  # reported; the other strategies still ran
            text = "".join(traceback.format_exception_only(result)).strip()
            rows.append({**row, "status": "failed", "error": text.replace(str(staging), str(final))})
            continue
        rounds = _with_cumulative_columns(result.rounds)
        rows.append({**row, **_summary_row(rounds, result, target), "run_dir": str(Path("runs", cell.folder,
                                                                                        result.path.name))})
        tidy_parts.append(_tidy_rows(rounds, result, cell, spec, seed))
        # the figures show the first seed's confusion matrix and client times of every entry
        if result.confusion_matrix is not None and spec.label not in confusions:
            confusions[spec.label] = result.confusion_matrix
        if "sim_hours" in rounds and spec.label not in times:
            times[spec.label] = (result.clients, float(result.setting("time.policy.deadline", 0.0)))

    tidy = (pd.concat(tidy_parts, ignore_index=True) if tidy_parts
            else pd.DataFrame(columns=[*grid, "strategy", "seed", "round", "metric", "value"]))
    summary = pd.DataFrame(rows)
    by_strategy = summarize_by_strategy(summary, [s.label for s in specs], cells if grid else None)
    tidy.to_csv(staging / "tidy.csv", index=False)
    summary.to_csv(staging / "summary.csv", index=False)
    by_strategy.to_csv(staging / "summary_by_strategy.csv", index=False)
    if config.output.figures and grid:
        _plot_sweep(tidy, by_strategy, grid, staging / "figures")
    elif config.output.figures and len(tidy):
        _plot_comparison(tidy, confusions, times, staging / "figures")
    rundir.publish(staging, final, kind=KIND)
    return ComparisonResult(final, tidy, summary, by_strategy, grid)


# ---------------------------------------------------------------------- how many runs, how long


class RunsNotConfirmed(InputError):
    """A comparison of more than :data:`CONFIRM_ABOVE` runs was not confirmed; nothing was written."""


def _counted(n: int, thing: str, things: str = "") -> str:
    return f"{n} {thing if n == 1 else things or thing + 's'}"


def describe_size(strategies: int, seeds: int, cells: int = 0) -> tuple[int, str]:
    """The number of runs and how it comes about: ``(12, "12 runs: 3 strategies x 2 seeds x 2 grid cells")``
    (``cells`` = 0: no grid)."""
    total = strategies * seeds * max(cells, 1)
    factors = [_counted(strategies, "strategy", "strategies"), _counted(seeds, "seed")]
    if cells:
        factors.append(_counted(cells, "grid cell"))
    return total, f"{_counted(total, 'run')}: {' x '.join(factors)}"


def confirm_size(strategies: int, seeds: int, cells: int, confirm: Callable[[str], bool] | None,
                 on_note: Callable[[str], None] | None) -> None:
    """Say how many runs there are; above :data:`CONFIRM_ABOVE`, ask ``confirm`` (if any) before anything is written."""
    total, text = describe_size(strategies, seeds, cells)
    if on_note:
        on_note(text)
    if confirm is not None and total > CONFIRM_ABOVE and not confirm(text):
        raise RunsNotConfirmed(f"compare: {text}; not started, as answered (fedsim compare --yes starts them "
                               "without the question)")


def terminal_confirmation(yes: bool) -> Callable[[str], bool] | None:
    """The command line's ``confirm`` for :func:`compare`: none with ``--yes``; a question on a terminal;
    without a terminal, a refusal naming ``--yes`` (exit 2), so that a script never starts thousands
    of runs by a typo in a grid, nor waits for an answer nobody can give."""
    if yes:
        return None

    def ask(text: str) -> bool:
        if not sys.stdin.isatty():
            raise RunsNotConfirmed(f"compare: {text}, more than {CONFIRM_ABOVE}, and there is no terminal to confirm "
                                   "them on: pass --yes to start them")
        print(f"fedsim compare: {text}, more than {CONFIRM_ABOVE}. Start them? [y/N] ", end="", file=sys.stderr,
              flush=True)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return ask


def _duration(seconds: float) -> str:
    """``0.4 s``, ``41 s``, ``7.5 min``, ``3.2 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Estimate:
    """Times the first run (from its start to the next run's start) and says how long the others will take."""

    def __init__(self, runs: int, on_note: Callable[[str], None] | None) -> None:
        self.runs, self.on_note = runs, on_note
        self.first_started: float | None = None
        self.said = False

    def run_started(self) -> None:
        now = time.perf_counter()
        if self.first_started is None:
            self.first_started = now
        elif not self.said:
            self.said = True
            if self.on_note:
                self.on_note(estimate_line(now - self.first_started, self.runs - 1))


def estimate_line(first: float, others: int) -> str:
    """``"first run took 41 s; about 7.5 min for the other 11"``."""
    rest = "the other one" if others == 1 else f"the other {others}"
    return f"first run took {_duration(first)}; about {_duration(first * others)} for {rest}"


def _with_cumulative_columns(rounds: pd.DataFrame) -> pd.DataFrame:
    """A run's rounds with the comparison's x axes: MB communicated so far, simulated hours so far."""
    rounds = rounds.copy()
    trained = rounds["round"] > 0
    rounds["cumulative_mb"] = ((rounds["bytes_down"].fillna(0) + rounds["bytes_up"].fillna(0))
                               .where(trained, 0).cumsum() / 1e6)
    if "sim_time" in rounds and rounds["sim_time"].notna().any():
        rounds["sim_hours"] = rounds["sim_time"].where(trained, 0.0) / 3600.0
    return rounds


def _summary_row(rounds: pd.DataFrame, result: RunResult, target: float | None) -> dict:
    """One ``summary.csv`` row of a finished run (``rounds`` with the cumulative columns)."""
    timed = "sim_hours" in rounds
    tested = rounds.dropna(subset=["test_accuracy"])
    return {"status": "ok", "error": "",
            "final_accuracy": float(tested["test_accuracy"].iloc[-1]) if len(tested) else np.nan,
            "best_accuracy": float(tested["test_accuracy"].max()) if len(tested) else np.nan,
            "rounds_to_target": _rounds_to_target(tested, target),
            "total_mb": float(rounds["cumulative_mb"].iloc[-1]),
            "wall_seconds": float(rounds["wall_seconds"].sum()),
            "sim_hours": float(rounds["sim_hours"].iloc[-1]) if timed else np.nan,
            "hours_to_target": _hours_to_target(rounds, target) if timed else np.nan,
            "clients_dropped": int(rounds["clients_dropped"].fillna(0).sum()) if "clients_dropped" in rounds else 0,
            "client_failures": int(result.summary.get("client_failures", 0))}


def _tidy_rows(rounds: pd.DataFrame, result: RunResult, cell: GridCell, spec: StrategySpec, seed: int) -> pd.DataFrame:
    """A run's ``tidy.csv`` rows: every round metric, plus its hooks' statistics (mean over the round's clients)."""
    present = [m for m in TIDY_METRICS if m in rounds]
    long = rounds.melt(id_vars=["round"], value_vars=present, var_name="metric").dropna()
    hooks_file = result.path / "hooks.csv"
    if hooks_file.is_file():
        stats = pd.read_csv(hooks_file)
        stats = stats[~stats["metric"].str.startswith("count_class")]
        stats = stats.groupby(["round", "hook", "metric"], as_index=False)["value"].mean()
        stats["metric"] = "hook." + stats["hook"] + "." + stats["metric"]
        long = pd.concat([long, stats[["round", "metric", "value"]]], ignore_index=True)
    long.insert(0, "seed", seed)
    long.insert(0, "strategy", spec.label)
    for position, (key, value) in enumerate(cell.columns.items()):
        long.insert(position, key, value)
    return long


def _plot_comparison(tidy: pd.DataFrame, confusions: dict, times: dict, figures: Path) -> None:
    """The figures of a comparison without a grid: accuracy against rounds, MB and simulated hours."""
    from fedsim.outputs import plots

    figures.mkdir(exist_ok=True)
    plots.plot_comparison(tidy, figures / "accuracy_vs_round.png", x="round")
    plots.plot_comparison(tidy, figures / "accuracy_vs_mb.png", x="cumulative_mb")
    if (tidy["metric"] == "sim_hours").any():
        plots.plot_comparison(tidy, figures / "accuracy_vs_time.png", x="sim_hours")
        plots.plot_client_times_grid(times, figures / "client_times.png")
    plots.plot_confusions(confusions, figures / "confusion_matrices.png")
    if tidy["metric"].str.startswith("hook.").any():
        plots.plot_hook_stats(tidy, figures / "hook_stats.png")


SUMMARY_METRICS = ("final_accuracy", "best_accuracy", "rounds_to_target", "total_mb", "wall_seconds",
                   "sim_hours", "hours_to_target")
# what the sweep figures draw against the grid, where any cell has a value: column -> axis label
SWEEP_METRICS = {"final_accuracy": "final test accuracy", "best_accuracy": "best test accuracy",
                 "total_mb": "MB communicated (model arrays)", "rounds_to_target": "rounds to target accuracy",
                 "sim_hours": "simulated hours", "hours_to_target": "simulated hours to target accuracy"}


def summarize_by_strategy(summary: pd.DataFrame, order: list[str],
                          cells: list[GridCell] | None = None) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) over seeds of the successful runs.

    One row per strategy, or with ``cells`` (a sweep) one row per grid cell and strategy, the
    grid keys as its first columns.
    """
    out = []
    for cell in cells or [GridCell()]:
        in_cell = pd.Series(True, index=summary.index)
        for key, value in cell.columns.items():
            in_cell &= summary[key] == value
        for label in order:
            part = summary[in_cell & (summary["strategy"] == label)] if len(summary) else summary
            ok = part[part["status"] == "ok"] if "status" in part else part.iloc[:0]
            row: dict = {**cell.columns, "strategy": label, "runs_ok": len(ok), "runs_failed": len(part) - len(ok)}
            for column in SUMMARY_METRICS:
                values = ok[column].astype(float) if column in ok else pd.Series(dtype=float)
                row[f"{column}_mean"] = float(values.mean()) if len(values) else np.nan
                row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            out.append(row)
    return pd.DataFrame(out)


def _plot_sweep(tidy: pd.DataFrame, by_cell: pd.DataFrame, grid: dict[str, list], figures: Path) -> list[Path]:
    """A sweep's figures: each metric against the grid, and every run's accuracy per round."""
    from fedsim.outputs import plots

    figures.mkdir(exist_ok=True)
    columns = {key: [_column_value(v) for v in values] for key, values in grid.items()}
    drawn = []
    for metric, label in SWEEP_METRICS.items():
        means = by_cell[f"{metric}_mean"] if f"{metric}_mean" in by_cell else pd.Series(dtype=float)
        if means.notna().any():
            drawn.append(plots.plot_sweep(by_cell, columns, metric, figures / f"sweep_{metric}.png", label))
    if len(tidy):  # one curve per (strategy, cell): the label names both
        keys = list(grid)
        curves = tidy.copy()
        cell_text = curves[keys].apply(lambda row: ", ".join(f"{k}={row[k]}" for k in keys), axis=1)
        curves["strategy"] = curves["strategy"] + " @ " + cell_text
        drawn.append(plots.plot_comparison(curves.drop(columns=keys), figures / "accuracy_vs_round.png", x="round"))
    return drawn
