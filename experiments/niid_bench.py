"""NIID-Bench's CIFAR-10 label-skew table, run through ``fedsim compare``, beside the published numbers.

The setup (``configs/niid_bench_cifar10.toml``) is NIID-Bench's: Li, Diao, Chen and He,
"Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022 -- 10 parties under
Dirichlet(0.5), every party every round, the simple CNN, 50 rounds of 10 local epochs, batch 64,
SGD lr 0.01 momentum 0.9 weight decay 1e-5, online random crop + flip. Every strategy sees the
same partition, initial weights and data order for a seed (``fedsim compare``).

    python experiments/niid_bench.py --data-dir DIR                         # the full table: hours on 2 CPUs
    python experiments/niid_bench.py --data-dir DIR --rounds 10 --docs      # what fits, labelled with its rounds

``--tabulate DIR [DIR ...]`` tabulates finished comparison directories instead of running one.
``--strategies`` takes ``fedsim compare``'s specs (default: every algorithm of the table that
this fedsim offers). Writes ``experiments/out/niid-bench-r<rounds>/`` (the comparison directory)
and, with ``--docs``, ``docs/experiments/niid_bench_r<rounds>.csv`` (one row per strategy: final
and best accuracy over the seeds, the published numbers and the difference) and
``docs/figures/niid_bench_r<rounds>.png`` (test accuracy per round, mean over seeds).

Published numbers (CIFAR-10, Dirichlet(0.5), 10 parties, 50 rounds, final accuracy, mean of three
seeds): NIID-Bench's README -- FedAvg 68.2, FedProx 67.9 (its best mu, 0.001), SCAFFOLD 69.8,
FedNova 66.8; Flower's re-run of the benchmark (``baselines/niid_bench``, best accuracy over the
rounds) -- FedAvg 62.47, FedProx 65.63 (mu 0.01), SCAFFOLD 68.08, FedNova 63.89; MOON's paper (Li, He
and Song, "Model-Contrastive Federated Learning", CVPR 2021, Table 1: the same setup run for 100
rounds, mu = 5) -- FedAvg 66.3, FedProx 66.9, SCAFFOLD 66.6, MOON 69.1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import ROOT, publish  # noqa: E402

from fedsim import compare  # noqa: E402
from fedsim.config.validation import load_config  # noqa: E402
from fedsim.strategies.registry import STRATEGIES  # noqa: E402

CONFIG = ROOT / "configs" / "niid_bench_cifar10.toml"
# (spec, the published rows' key): FedProx with NIID-Bench's best mu for Dirichlet(0.5)
TABLE = [("fedavg", "fedavg"), ("fedprox:proximal_mu=0.001", "fedprox"), ("scaffold", "scaffold"),
         ("fednova", "fednova"), ("feddyn", "feddyn"), ("moon:mu=5", "moon")]
# final accuracy in %, 50 rounds (NIID-Bench README); best accuracy over 50 rounds in % (Flower's re-run)
NIID_BENCH = {"fedavg": 68.2, "fedprox": 67.9, "scaffold": 69.8, "fednova": 66.8}
FLOWER_RERUN = {"fedavg": 62.47, "fedprox": 65.63, "scaffold": 68.08, "fednova": 63.89}
# MOON paper, Table 1 (the same setup with 100 rounds): final accuracy in %
MOON_PAPER = {"fedavg": 66.3, "fedprox": 66.9, "scaffold": 66.6, "moon": 69.1}


def offered_specs() -> list[str]:
    """The table's strategies that this fedsim offers, as ``fedsim compare`` specs."""
    return [spec for spec, _ in TABLE if spec.split(":")[0] in STRATEGIES]


def table(summary: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """One row per strategy: final and best accuracy (mean and std over seeds, %) beside the papers'."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for spec, group in ok.groupby("strategy", sort=False):
        key = dict(TABLE).get(spec, spec.split(":")[0])
        final, best = 100 * group["final_accuracy"], 100 * group["best_accuracy"]
        niid, flower = NIID_BENCH.get(key, float("nan")), FLOWER_RERUN.get(key, float("nan"))
        rows.append({
            "strategy": spec, "rounds": rounds, "seeds": len(group),
            "final_accuracy": final.mean(), "final_accuracy_std": final.std(ddof=0),
            "best_accuracy": best.mean(), "best_accuracy_std": best.std(ddof=0),
            "niid_bench_final_50_rounds": niid, "final_minus_niid_bench": final.mean() - niid,
            "flower_rerun_best_50_rounds": flower, "best_minus_flower_rerun": best.mean() - flower,
            "moon_paper_final_100_rounds": MOON_PAPER.get(key, float("nan")),
        })
    return pd.DataFrame(rows)


def draw(tidy: pd.DataFrame, rounds: int):  # noqa: ANN201 - a drawing callback for publish()
    def to(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        accuracy = tidy[(tidy["metric"] == "test_accuracy") & (tidy["round"] > 0)]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for spec, group in accuracy.groupby("strategy", sort=False):
            curve = group.groupby("round")["value"].mean()
            ax.plot(curve.index, 100 * curve.to_numpy(), marker="o", markersize=3, label=spec)
        ax.set(xlabel="round", ylabel="test accuracy (%)",
               title=f"NIID-Bench CIFAR-10, Dirichlet(0.5), 10 parties: {rounds} of 50 rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return to


def tabulate(folders: list[Path], docs: bool) -> int:
    """Print (and with ``docs`` publish) the table of finished comparison directories.

    Comparisons of this script with the same rounds and seeds share the partition, the initial
    weights and the sampling, so their strategies can stand in one table.
    """
    summary = pd.concat([pd.read_csv(folder / "summary.csv") for folder in folders], ignore_index=True)
    tidy = pd.concat([pd.read_csv(folder / "tidy.csv") for folder in folders], ignore_index=True)
    rounds = int(tidy["round"].max())
    if summary.duplicated(["strategy", "seed"]).any() or tidy.groupby("strategy")["round"].max().nunique() != 1:
        raise SystemExit("the comparisons overlap in strategy and seed, or ran different numbers of rounds")
    rows = table(summary, rounds)
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if docs:
        publish(rows, f"niid_bench_r{rounds}", draw(tidy, rounds))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder holding cifar10.npz (data.data_dir)")
    parser.add_argument("--rounds", type=int, default=50, help="rounds per run (NIID-Bench: 50)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (NIID-Bench: 0,1,2)")
    parser.add_argument("--strategies", default=",".join(offered_specs()), help="fedsim compare specs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another config override (as fedsim run --set)")
    parser.add_argument("--docs", action="store_true", help="write the table and figure into docs/")
    parser.add_argument("--tabulate", type=Path, nargs="+", metavar="COMPARISON_DIR",
                        help="run nothing: tabulate finished comparison directories of this script (several: "
                             "their strategies side by side, e.g. one added later with --set output.name=...)")
    args = parser.parse_args(argv)
    if args.tabulate:
        return tabulate(args.tabulate, args.docs)

    overrides = [f"train.rounds={args.rounds}", f"output.name=niid-bench-r{args.rounds}",
                 f"output.dir={ROOT / 'experiments' / 'out'}", "output.overwrite=true", *args.overrides]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    config = load_config(CONFIG, overrides)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = compare(config, args.strategies, seeds, on_run=lambda label, seed: print(f"== {label} (seed {seed})",
                                                                                        flush=True),
                     on_note=lambda text: print(text, flush=True))
    rows = table(result.summary, args.rounds)
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"comparison directory: {result.path}")
    if args.docs:
        publish(rows, f"niid_bench_r{args.rounds}", draw(result.tidy, args.rounds))
    return 1 if (result.summary["status"] != "ok").any() else 0


if __name__ == "__main__":
    sys.exit(main())
