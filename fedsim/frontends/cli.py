"""The ``fedsim`` command line: ``run``, ``compare``, ``partition``, ``plot``.

Every error ends in one message on stderr naming the cause, and an exit status -- a contract
(``docs/reliability.md``; the constants live in :mod:`fedsim.errors` and :mod:`fedsim.ops.interrupt`):

- **0** -- success;
- **1** -- a run failed after it started (e.g. too few clients succeeded, the model diverged),
  or a comparison in which any run failed; partial output is kept as ``<name>.failed`` with
  ``error.txt``;
- **2** -- bad input (a config value, missing or malformed data, an optional package the config
  needs, an output path that is a file, a folder in the way, a run that cannot be resumed);
  everything that can be checked is checked before the run folder exists, so nothing was written;
- **130** -- SIGINT (Ctrl-C), **143** -- SIGTERM: the run stopped at a safe point and is kept as
  ``<name>.interrupted`` with its checkpoint (``fedsim run --resume`` continues it).

Tracebacks are shown only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
import warnings
from pathlib import Path

from fedsim.config import ConfigError, ExperimentConfig, RenamedKeyWarning, parse_override
from fedsim.config.validation import load_config
from fedsim.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK, InputError
from fedsim.ops.interrupt import RunInterrupted, exit_status, signal_name, stop_signal
from fedsim.outputs.rounds_without_clients import NoClientAggregatedWarning

_SHOW_WARNING = warnings.showwarning


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="TOML experiment config (defaults if omitted)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. --set train.rounds=10; "
                        "the value is read as TOML if it is valid TOML, else taken literally as a string")
    parser.add_argument("--data-dir", help="folder with the datasets (sets data.data_dir; "
                        "default $FEDSIM_DATA_DIR or ./data)")


def _load(args: argparse.Namespace) -> ExperimentConfig:
    """The config file with ``--set`` overrides, then the dedicated flags (taken verbatim)."""
    overrides = dict(parse_override(text) for text in args.overrides)
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    if getattr(args, "overwrite", False):
        overrides["output.overwrite"] = True
    if getattr(args, "tensorboard", False):
        overrides["output.tensorboard"] = True
    if getattr(args, "output", None):
        overrides["output.dir"] = args.output
    if getattr(args, "name", None):
        overrides["output.name"] = args.name
    return load_config(args.config, overrides)


def _seeds(text: str) -> list[int] | None:
    if not text.strip():
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ConfigError(f"--seeds {text!r}: must be comma-separated integers, e.g. 0,1,2") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated learning simulation on Flower + Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment and write its run directory")
    _config_args(run)
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted, failed or killed run from its last checkpoint "
                          "(RUN_DIR: its .interrupted/.failed folder or its final path); takes no other config")
    run.add_argument("--output", "-o", help="parent folder of run directories (output.dir)")
    run.add_argument("--name", help="run directory name (output.name)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--verbose", "-v", action="store_true", help="show Flower and Ray logs")
    run.add_argument("--no-progress", action="store_true", help="hide the per-round progress bar")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard event files to <run dir>/tensorboard/ (output.tensorboard)")

    comp = sub.add_parser("compare", help="compare strategies on the identical partition, init and sampling")
    _config_args(comp)
    comp.add_argument("--strategies", required=True,
                      help="comma-separated specs name[:key=value[:key=value]], e.g. "
                           "fedavg,uniform,ema:beta=0.5,fedprox:proximal_mu=0.01,centralized; a key with a dot "
                           "is a config key for that entry only, e.g. fedavg:time.policy.deadline=3")
    comp.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's seed)")
    comp.add_argument("--grid", action="append", default=[], metavar="KEY=LIST",
                      help="sweep a config key over a TOML list, e.g. --grid 'partition.alpha=[0.05,0.1,0.5,1.0]'; "
                           "repeat for the cartesian product; every strategy and seed runs in every cell")
    comp.add_argument("--target", type=float, help="accuracy for the rounds-to-target column")
    comp.add_argument("--output", "-o", help="parent folder (output.dir)")
    comp.add_argument("--name", help="comparison directory name (default compare-<time>)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing comparison directory")
    comp.add_argument("--verbose", "-v", action="store_true", help="show Flower and Ray logs")
    comp.add_argument("--no-progress", action="store_true", help="hide the per-round progress bars")
    comp.add_argument("--tensorboard", action="store_true",
                      help="also write TensorBoard event files into every run directory (output.tensorboard)")
    from fedsim.frontends.comparison import CONFIRM_ABOVE

    comp.add_argument("--yes", "-y", action="store_true",
                      help=f"start the runs without asking: more than {CONFIRM_ABOVE} runs are asked about on a "
                           "terminal, and refused without one unless --yes is given")

    part = sub.add_parser("partition", help="partition a dataset and report its label distribution")
    _config_args(part)
    part.add_argument("--output", "-o", default="partitions",
                      help="folder for the counts CSV and heat-map PNG (default: partitions)")

    plot = sub.add_parser("plot", help="re-draw the figures of a finished run directory")
    plot.add_argument("run_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_renamed_key  # an old key name: one line, no source location
            return _dispatch(args)
    except RunInterrupted as interrupted:
        print(f"fedsim: {interrupted} (stopped by {signal_name(interrupted.signum)})", file=sys.stderr)
        return interrupted.exit_status
    except KeyboardInterrupt:  # a second stop signal, or Ctrl-C outside a run
        signum = stop_signal()
        print(f"fedsim: aborted (second {signal_name(signum) if signum else 'Ctrl-C'})", file=sys.stderr)
        return exit_status(signum)
    except BaseException as error:  # noqa: BLE001 - every error ends in one message and a status
        if isinstance(error, SystemExit):
            raise
        status = EXIT_INPUT if _is_input_error(error) else EXIT_FAILED
        if verbose:
            traceback.print_exception(error)
        label = "error" if status == EXIT_INPUT else "run failed"
        print(f"fedsim: {label}: {_message(error)}", file=sys.stderr)
        if not verbose and status == EXIT_FAILED:
            print("(run with --verbose for the traceback)", file=sys.stderr)
        return status


def _show_renamed_key(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
    """Print a config key's new name as one line (other warnings as Python prints them)."""
    if issubclass(category, (RenamedKeyWarning, NoClientAggregatedWarning)):
        print(f"fedsim: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


def _is_input_error(error: BaseException) -> bool:
    """Bad input (exit 2): fedsim's input errors, and files that are missing or unreadable."""
    return isinstance(error, (InputError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


def _message(error: BaseException) -> str:
    """The error's message and notes on one screen, without a traceback."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.errno is not None and error.filename:
        text = f"{error.strerror}: {error.filename}"
        if error.errno == errno.ENOSPC:
            text += " (the disk is full: free space and resume the run with fedsim run --resume)"
    elif not isinstance(error, InputError) and type(error).__module__ != "builtins":
        text = f"{type(error).__name__}: {text}"
    notes = getattr(error, "__notes__", [])
    return "\n".join([text, *notes])


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from fedsim.runs.experiment import resume, run

        if args.resume is not None:
            if (args.config or args.overrides or args.data_dir or args.output or args.name or args.overwrite
                    or args.tensorboard):
                raise ConfigError("--resume continues a run with its own config.toml: leave out --config, --set, "
                                  "--data-dir, --output, --name, --overwrite and --tensorboard")
            result = resume(args.resume, progress=not args.no_progress, verbose=args.verbose)
        else:
            result = run(_load(args), progress=not args.no_progress, verbose=args.verbose)
        acc = result.summary.get("final_test_accuracy")
        print(f"run directory: {result.path}")
        if acc is not None:
            print(f"final test accuracy: {acc:.4f}")
    elif args.command == "compare":
        from fedsim.frontends.comparison import compare, terminal_confirmation

        config = _load(args)
        seeds = _seeds(args.seeds)
        result = compare(config, args.strategies, seeds, target=args.target,
                         progress=not args.no_progress, verbose=args.verbose, grid=args.grid,
                         on_run=lambda label, seed: print(f"== {label} (seed {seed})", flush=True),
                         confirm=terminal_confirmation(args.yes), on_note=lambda text: print(text, flush=True))
        columns = [c for c in (*result.grid, "strategy", "runs_ok", "runs_failed", "final_accuracy_mean",
                               "final_accuracy_std", "best_accuracy_mean", "rounds_to_target_mean",
                               "total_mb_mean") if c in result.by_strategy]
        print(result.by_strategy[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        failed = result.summary[result.summary["status"] == "failed"] if len(result.summary) else []
        for _, row in (failed.iterrows() if len(failed) else []):
            cell = "".join(f", {key}={row[key]}" for key in result.grid)
            print(f"FAILED {row['strategy']} (seed {row['seed']}{cell}): {row['error']}", file=sys.stderr)
        print(f"comparison directory: {result.path}")
        if len(failed):
            print(f"fedsim: {len(failed)} of {len(result.summary)} runs failed", file=sys.stderr)
            return EXIT_FAILED
    elif args.command == "partition":
        from fedsim.frontends.partition_report import partition

        report = partition(_load(args), args.output)
        print(report)
        print(f"counts: {report.table}\nheat map: {report.heatmap}")
    elif args.command == "plot":
        from fedsim.outputs.plots import plot_run

        for path in plot_run(args.run_dir):
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
