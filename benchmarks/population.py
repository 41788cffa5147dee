"""Population scaling: start-up and round time at a fixed number of clients per round.

The cohort executor's cost should follow the work (clients per round), not the population:
no per-client process, message or query. This runs the same round (LeNet-5, ``--per-round``
clients of ``--samples`` synthetic samples each, batch 10, 1 epoch, no evaluation) for
populations of 1,000, 10,000 and 100,000 clients and prints, per population, the preparation
time (partition + run directory), the whole run and the median round (first round excluded:
Ray's workers start then), and each round time's ratio to the smallest population's.

    python benchmarks/population.py                          # 1k, 10k, 100k clients
    python benchmarks/population.py --populations 1000,10000 --rounds 4

The synthetic dataset of each size is decoded into the cache before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedsim.datasets import materialize
from fedsim.runs.experiment import run
from fedsim.runs.prepare import prepare
from fedsim.config.validation import load_config


def config_for(args: argparse.Namespace, clients: int, out: Path, name: str):  # noqa: ANN201 - ExperimentConfig
    return load_config(None, {
        "seed": args.seed, "data.dataset": "synthetic", "data.synthetic_train": clients * args.samples,
        "data.synthetic_test": 200, "partition.scheme": "iid", "partition.num_clients": clients,
        "partition.val_fraction": 0.0, "model.name": "lenet5", "train.rounds": args.rounds,
        "train.clients_per_round": args.per_round, "train.batch_size": 10, "train.lr": 0.05,
        "evaluation.centralized_every": 0, "evaluation.federated_every": 0,
        "executor.kind": args.executor, "executor.workers": args.workers,
        "output.dir": str(out), "output.name": name, "output.figures": False,
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", default="1000,10000,100000")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2, help="samples per client")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--executor", default="cohort")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    populations = [int(p) for p in args.populations.split(",")]
    out = Path(tempfile.mkdtemp(prefix="fedsim-population-"))
    rows = []
    try:
        for clients in populations:
            config = config_for(args, clients, out, f"prepare-{clients}")
            materialize(config.data)  # decode once, untimed
            started = time.perf_counter()
            prepared = prepare(config)
            prepare_s = time.perf_counter() - started
            shutil.rmtree(prepared.staging)
            started = time.perf_counter()
            result = run(config_for(args, clients, out, f"run-{clients}"), progress=False)
            run_s = time.perf_counter() - started
            rounds = result.rounds[result.rounds["round"] > 1]["wall_seconds"].tolist()
            rows.append({"clients": clients, "prepare_s": prepare_s, "run_s": run_s,
                         "round_median_s": statistics.median(rounds)})
            print(f"{clients} clients: prepare {prepare_s:.2f} s, run {run_s:.1f} s, "
                  f"rounds after the first {[round(r, 3) for r in rounds]}", flush=True)
            shutil.rmtree(result.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    base = rows[0]["round_median_s"]
    print(f"\n{args.executor} executor, {args.per_round} clients/round x {args.samples} samples, LeNet-5, "
          f"{os.cpu_count()} CPUs")
    print(f"{'clients':>8} {'prepare':>9} {'whole run':>10} {'median round':>13} {'vs smallest':>12}")
    for row in rows:
        print(f"{row['clients']:>8} {row['prepare_s']:>7.2f} s {row['run_s']:>8.1f} s {row['round_median_s']:>11.3f} s "
              f"{row['round_median_s'] / base:>11.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
