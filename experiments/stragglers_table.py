"""Tabulate a simulated-time comparison: accuracy at equal simulated time, updates, drops, wall time.

Reads a finished ``fedsim compare`` directory whose runs simulate time (``[time.devices]``) and
writes, with ``--docs``, ``docs/experiments/<name>.csv`` (one row per entry and seed) and the
figures ``docs/figures/<name>_accuracy_vs_time.png`` and ``docs/figures/<name>_client_times.png``;
it always prints the per-entry means. The accuracy "at T minutes" is the test accuracy of the
last round that ended by simulated time T (T = ``--at``, default: the shortest run's end, so every
entry is compared at a time all of them reached).

    python experiments/stragglers_table.py experiments/out/cifar10-stragglers --docs
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _publish import ROOT  # noqa: E402

from fedsim import load_run  # noqa: E402

from fedsim.outputs import plots  # noqa: E402


def accuracy_at(rounds: pd.DataFrame, seconds: float) -> float:
    """Test accuracy of the last round that ended by simulated time ``seconds`` (round 0 at 0)."""
    done = rounds[(rounds["round"] == 0) | (rounds["sim_time"] <= seconds + 1e-9)].dropna(subset=["test_accuracy"])
    return float(done["test_accuracy"].iloc[-1])


def table(folder: Path, at_minutes: float | None) -> tuple[pd.DataFrame, float]:
    summary = pd.read_csv(folder / "summary.csv")
    runs = {(r["strategy"], r["seed"]): (pd.read_csv(folder / r["run_dir"] / "rounds.csv"),
                                         pd.read_csv(folder / r["run_dir"] / "clients.csv"))
            for _, r in summary[summary["status"] == "ok"].iterrows()}
    horizon = 60 * at_minutes if at_minutes else min(float(r["sim_time"].max()) for r, _ in runs.values())
    rows = []
    for (entry, seed), (rounds, clients) in runs.items():
        trained = rounds[rounds["round"] > 0]
        train = clients[clients["phase"] == "train"]
        rows.append({
            "entry": entry, "seed": seed, "rounds": int(trained["round"].max()),
            "updates_aggregated": int(trained["clients_succeeded"].sum()),
            "stragglers": int((train["status"] == "straggler").sum()),
            "surplus": int((train["status"] == "surplus").sum()),
            "offline": int((train["status"] == "offline").sum()),
            "mean_staleness": float(trained["staleness_mean"].mean()) if trained["staleness_mean"].notna().any()
            else np.nan,
            "simulated_minutes": float(trained["sim_time"].iloc[-1]) / 60,
            f"accuracy_at_{horizon / 60:.2f}_min": accuracy_at(rounds, horizon),
            "final_accuracy": float(trained["test_accuracy"].dropna().iloc[-1]),
            "wall_seconds": float(trained["wall_seconds"].sum()),
        })
    return pd.DataFrame(rows), horizon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path)
    parser.add_argument("--at", type=float, default=None, help="simulated minutes to compare at")
    parser.add_argument("--docs", action="store_true", help="write the table and figures into docs/")
    args = parser.parse_args()
    frame, horizon = table(args.comparison, args.at)
    means = frame.drop(columns="seed").groupby("entry", sort=False).mean(numeric_only=True)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(f"compared at {horizon / 60:.2f} simulated minutes\n{means.round(3)}")
    if args.docs:
        name = args.comparison.name.replace("-", "_")
        (ROOT / "docs" / "experiments").mkdir(parents=True, exist_ok=True)
        frame.to_csv(ROOT / "docs" / "experiments" / f"{name}.csv", index=False, float_format="%.4f")
        shutil.copyfile(args.comparison / "figures" / "accuracy_vs_time.png",
                        ROOT / "docs" / "figures" / f"{name}_accuracy_vs_time.png")
        first = frame.sort_values("seed").drop_duplicates("entry")
        summary = pd.read_csv(args.comparison / "summary.csv").set_index(["strategy", "seed"])
        grid = {}
        for _, row in first.iterrows():
            run = load_run(args.comparison / summary.loc[(row["entry"], row["seed"]), "run_dir"])
            grid[row["entry"]] = (run.clients, float(run.setting("time.policy.deadline", 0.0)))
        plots.plot_client_times_grid(grid, ROOT / "docs" / "figures" / f"{name}_client_times.png")


if __name__ == "__main__":
    main()
