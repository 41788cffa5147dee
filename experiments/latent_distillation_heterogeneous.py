"""Latent distillation, heterogeneous CNNs on CIFAR-10: CE-only vs KD vs LKD, plus FedAvg as a reference.

Setting (Schmitt's latent-space knowledge distillation, ``docs/methods.md``, scaled to a 2-core
CPU budget):

* 10 clients, the per-client Dirichlet convention of Schmitt's code (``dirichlet-per-client``,
  alpha 0.5) with scarce private data: 500 images per client;
* heterogeneous small CNNs: even clients LeNet-5, odd clients the NIID-Bench CNN, both with a
  representation layer of width r = 64 (their perception modules end at 84 features);
* a transfer set of 1,024 training images held out before partitioning (disjoint from every
  client);
* 6 rounds (`--rounds`); each round every client digests 1 epoch on the transfer set, revisits 2 epochs on
  its private data (SGD lr 0.01, momentum 0.9); evaluation after rounds 3 and 6 on T_priv
  (1,000 test images with the client's class mix) and T_uni (the full test set);
* variants (``distill`` settings): CE only (no distillation), KD (lambda_kd = 1, T = 4),
  LKD (lambda_rep = 1, tau = 1), KD+LKD; targets from a **server teacher** (Schmitt's
  setting: the NIID-Bench CNN trained 30 epochs on the labelled transfer set) and, for KD and
  LKD, from the **consensus** of the clients (FedMD); FedAvg with homogeneous NIID-Bench CNNs
  (T_priv for FedAvg's global model is the expectation sum_k p_k recall_k over each client's
  class mix).

    python experiments/latent_distillation_heterogeneous.py --data-dir DIR --seeds 0,1,2 --docs

All runs share one Flower simulation runtime. Writes
``experiments/out/latent_distillation_heterogeneous/`` and, with ``--docs``, ``docs/experiments/latent_distillation_heterogeneous.csv`` and the figure
``docs/figures/latent_distillation_heterogeneous.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
import pandas as pd

from _publish import publish
from fedsim.config.validation import load_config
from fedsim.runs.experiment import run_many
from fedsim.outputs.results import RunResult

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "CE only": {"latent_distill.lambda_kd": 0.0, "latent_distill.lambda_rep": 0.0},
    "KD (teacher)": {"latent_distill.lambda_kd": 1.0, "latent_distill.lambda_rep": 0.0, "latent_distill.teacher": "server"},
    "LKD (teacher)": {"latent_distill.lambda_kd": 0.0, "latent_distill.lambda_rep": 1.0, "latent_distill.teacher": "server"},
    "KD+LKD (teacher)": {"latent_distill.lambda_kd": 1.0, "latent_distill.lambda_rep": 1.0, "latent_distill.teacher": "server"},
    "KD (consensus)": {"latent_distill.lambda_kd": 1.0, "latent_distill.lambda_rep": 0.0},
    "LKD (consensus)": {"latent_distill.lambda_kd": 0.0, "latent_distill.lambda_rep": 1.0},
    "FedAvg (homogeneous)": {"strategy.name": "fedavg", "model.architectures": []},
}


def config_for(args: argparse.Namespace, variant: str, seed: int):
    settings = {
        "seed": seed,
        "data.dataset": "npz", "data.path": "cifar10.npz", "data.data_dir": str(args.data_dir),
        "partition.scheme": "dirichlet-per-client", "partition.alpha": 0.5,
        "partition.samples_per_client": args.samples, "partition.num_clients": 10,
        "partition.val_fraction": 0.0,
        "model.name": "niid_cnn", "model.representation_dim": 64,
        "model.architectures": ["lenet5", "niid_cnn"],
        "strategy.name": "latent-distill",
        "train.rounds": args.rounds, "train.local_epochs": 2, "train.batch_size": 32, "train.lr": 0.01,
        "latent_distill.transfer_size": 1024, "latent_distill.teacher_epochs": 30, "latent_distill.digest_epochs": 1,
        "latent_distill.digest_batch_size": 64, "latent_distill.temperature": 4.0, "latent_distill.tau": 1.0,
        "latent_distill.tpriv_size": 1000,
        "evaluation.federated_every": args.rounds // 2, "evaluation.centralized_every": args.rounds // 2,
        "evaluation.batch_size": 1000,
        "output.dir": str(args.out / "runs"), "output.name": f"{variant}-s{seed}".replace(" ", "_"),
        "output.overwrite": True, "output.figures": False,
    }
    settings.update(VARIANTS[variant])
    if settings["strategy.name"] == "fedavg":
        settings["evaluation.federated_every"] = 0
    return load_config(None, settings)


def fedavg_tpriv(result: RunResult) -> float:
    """Expected T_priv accuracy of the global model: sum_k p_k * recall_k, averaged over clients."""
    cm = result.confusion_matrix.to_numpy().astype(float)
    recall = np.diag(cm) / cm.sum(axis=1)
    counts = result.partition_counts.to_numpy().astype(float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float((shares @ recall).mean())


def row_for(variant: str, seed: int, result: RunResult | BaseException) -> dict:
    if isinstance(result, BaseException):
        return {"variant": variant, "seed": seed, "status": "failed", "error": str(result).splitlines()[0]}
    last = result.rounds[result.rounds["round"] == result.rounds["round"].max()].iloc[0]
    row = {"variant": variant, "seed": seed, "status": "ok",
           "t_uni": float(last["test_accuracy"]),
           "t_priv": float(last["tpriv_accuracy"]) if pd.notna(last.get("tpriv_accuracy")) else fedavg_tpriv(result),
           "t_uni_client_std": float(last["tuni_std"]) if pd.notna(last.get("tuni_std")) else np.nan,
           "mb_total": float(result.summary["total_megabytes"]),
           "teacher_t_uni": result.summary.get("teacher_test_accuracy", np.nan)}
    return row


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"]
    variants = list(dict.fromkeys(ok["variant"]))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for j, (column, label) in enumerate((("t_priv", "T_priv (client's class mix)"), ("t_uni", "T_uni (full test set)"))):
        groups = [ok[ok["variant"] == v][column] for v in variants]
        means = [g.mean() for g in groups]
        ax.bar(np.arange(len(variants)) + j * width, means, width,
               yerr=[[m - g.min() for m, g in zip(means, groups)], [g.max() - m for m, g in zip(means, groups)]],
               capsize=3, label=label)
    ax.set_xticks(np.arange(len(variants)) + width / 2, variants, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (mean over clients, then seeds)")
    seeds = sorted(int(s) for s in ok["seed"].unique())
    ax.set_title(f"CIFAR-10, 10 clients x 500 images, Dir(0.5), LeNet-5 + NIID CNN, r = 64; seeds {seeds}; bars = min..max")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDSIM_DATA_DIR", "data")))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=500, help="private images per client")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "out" / "latent_distillation_heterogeneous")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)

    entries = [(variant, seed) for seed in seeds for variant in VARIANTS]
    configs = [config_for(args, variant, seed) for variant, seed in entries]
    started = time.perf_counter()
    outcomes = run_many(configs, progress=False,
                        on_start=lambda i: print(f"== {entries[i][0]} (seed {entries[i][1]})", flush=True))
    elapsed = time.perf_counter() - started
    table = pd.DataFrame([row_for(v, s, r) for (v, s), r in zip(entries, outcomes)])
    table.to_csv(args.out / "latent_distillation_heterogeneous.csv", index=False)
    summary = (table[table["status"] == "ok"].groupby("variant", sort=False)[["t_priv", "t_uni", "mb_total"]]
               .agg(["mean", "std"]))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\n{len(configs)} runs in {elapsed / 60:.1f} min")
    plot(table, args.out / "latent_distillation_heterogeneous.png")
    if args.docs:
        publish(table, "latent_distillation_heterogeneous", lambda path: plot(table, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
