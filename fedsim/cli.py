"""The ``fedsim`` command line: ``run``, ``compare``, ``partition``, ``plot``.

Errors in user input (config values, missing data, an existing run directory) print one
clear message to stderr and exit with status 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsim.config import ConfigError, ExperimentConfig
from fedsim.validation import load_config

USER_ERROR = 2


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="TOML experiment config (defaults if omitted)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. --set train.rounds=10")
    parser.add_argument("--data-dir", help="folder with the datasets (sets data.data_dir; "
                        "default $FEDSIM_DATA_DIR or ./data)")


def _load(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}".replace("'", '"'))
    if getattr(args, "overwrite", False):
        overrides.append("output.overwrite=true")
    if getattr(args, "output", None):
        overrides.append(f'output.dir="{args.output}"')
    if getattr(args, "name", None):
        overrides.append(f'output.name="{args.name}"')
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
    run.add_argument("--output", "-o", help="parent folder of run directories (output.dir)")
    run.add_argument("--name", help="run directory name (output.name)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--verbose", "-v", action="store_true", help="show Flower and Ray logs")
    run.add_argument("--no-progress", action="store_true", help="hide the per-round progress bar")

    comp = sub.add_parser("compare", help="compare strategies on the identical partition, init and sampling")
    _config_args(comp)
    comp.add_argument("--strategies", required=True,
                      help="comma-separated specs name[:key=value[:key=value]], e.g. "
                           "fedavg,uniform,ema:beta=0.5,fedprox:proximal_mu=0.01,centralized")
    comp.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's seed)")
    comp.add_argument("--target", type=float, help="accuracy for the rounds-to-target column")
    comp.add_argument("--output", "-o", help="parent folder (output.dir)")
    comp.add_argument("--name", help="comparison directory name (default compare-<time>)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing comparison directory")
    comp.add_argument("--verbose", "-v", action="store_true", help="show Flower and Ray logs")
    comp.add_argument("--no-progress", action="store_true", help="hide the per-round progress bars")

    part = sub.add_parser("partition", help="partition a dataset and report its label distribution")
    _config_args(part)
    part.add_argument("--output", "-o", default="partitions",
                      help="folder for the counts CSV and heat-map PNG (default: partitions)")

    plot = sub.add_parser("plot", help="re-draw the figures of a finished run directory")
    plot.add_argument("run_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fedsim.datasets import DatasetError, PartitionError
    from fedsim.rundir import RunDirectoryExists
    from fedsim.strategies import StrategyError

    try:
        if args.command == "run":
            from fedsim.experiment import run

            config = _load(args)
            result = run(config, progress=not args.no_progress, verbose=args.verbose)
            acc = result.summary.get("final_test_accuracy")
            print(f"run directory: {result.path}")
            if acc is not None:
                print(f"final test accuracy: {acc:.4f}")
        elif args.command == "compare":
            from fedsim.compare import compare

            config = _load(args)
            seeds = _seeds(args.seeds)
            result = compare(config, args.strategies, seeds, target=args.target,
                             progress=not args.no_progress, verbose=args.verbose,
                             on_run=lambda label, seed: print(f"== {label} (seed {seed})", flush=True))
            columns = [c for c in ("strategy", "runs_ok", "runs_failed", "final_accuracy_mean",
                                   "final_accuracy_std", "best_accuracy_mean", "rounds_to_target_mean",
                                   "total_mb_mean") if c in result.by_strategy]
            print(result.by_strategy[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            failed = result.summary[result.summary["status"] == "failed"] if len(result.summary) else []
            for _, row in (failed.iterrows() if len(failed) else []):
                print(f"FAILED {row['strategy']} (seed {row['seed']}): {row['error']}", file=sys.stderr)
            print(f"comparison directory: {result.path}")
        elif args.command == "partition":
            from fedsim.partition_report import partition

            report = partition(_load(args), args.output)
            print(report)
            print(f"counts: {report.table}\nheat map: {report.heatmap}")
        elif args.command == "plot":
            from fedsim.plots import plot_run

            for path in plot_run(args.run_dir):
                print(path)
    except (ConfigError, DatasetError, PartitionError, RunDirectoryExists, StrategyError,
            FileNotFoundError) as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
