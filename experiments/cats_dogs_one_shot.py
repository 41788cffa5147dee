"""Raj's one-shot protocol on CIFAR-10 cats vs dogs: centralized vs 10-client one-shot FedAvg and beta-EMA.

Raj, "Building Decentralized Image Classifiers with Federated Learning" (see
``docs/methods.md``), fine-tunes an ImageNet-pretrained AlexNet on Kaggle cats-vs-dogs:
10 clients x (99 cats + 99 dogs), batch 4, 10 epochs, SGD lr 1e-3, then aggregates the 10
client models once, either by FedAvg or by the sequential "Polyak" EMA with beta = 0.5, and
compares with one model trained on all the data. This script runs the same protocol on
CIFAR-10's cat (3) and dog (5) classes:

* clients: ``dirichlet-per-client`` with alpha = 1e6 (class mix ~ (0.5, 0.5)) and 198 samples
  each, i.e. about 99 cats + 99 dogs per client, 1,980 training images in all;
* model: the NIID-Bench CNN trained from scratch from one seeded initialisation shared by all
  clients (no pretrained weights are available offline -- the main departure from the paper);
* recipe: 10 local epochs, batch 4, SGD lr 1e-3, momentum 0.9 (the PyTorch tutorial the paper
  cites), every client once (``train.mode = "one-shot"``);
* centralized: the same model and recipe on the union of the clients' 1,980 images;
* test: all 2,000 CIFAR-10 test cats and dogs; positive class = dog (label 1).

Also reported: each client's own model on the test set (the paper: 0.668-0.880), and FedAvg
over 10 rounds of 1 epoch (same epochs, more communication) as a reference.

    python experiments/cats_dogs_one_shot.py --data-dir DIR --seeds 0,1,2

Writes ``experiments/out/cats_dogs_one_shot/`` (comparison directories) and, with ``--docs``,
the table ``docs/experiments/cats_dogs_one_shot.csv`` and figure
``docs/figures/cats_dogs_one_shot.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
import pandas as pd

from fedsim.frontends.comparison import compare
from _publish import publish
from fedsim.config.validation import load_config
from fedsim.outputs.results import load_run

ROOT = Path(__file__).resolve().parents[1]


def base_config(args: argparse.Namespace, name: str, **extra: object):
    settings = {
        "data.dataset": "npz", "data.path": "cifar10.npz", "data.data_dir": str(args.data_dir),
        "data.classes": [3, 5],
        "partition.scheme": "dirichlet-per-client", "partition.alpha": 1e6,
        "partition.samples_per_client": 198, "partition.num_clients": 10, "partition.val_fraction": 0.0,
        "model.name": args.model,
        "train.mode": "one-shot", "train.rounds": 1, "train.local_epochs": 10, "train.batch_size": 4,
        "train.lr": 1e-3, "train.momentum": 0.9,
        "evaluation.federated_every": 0, "evaluation.batch_size": 1000,
        "output.dir": str(args.out), "output.name": name, "output.overwrite": True,
    }
    settings.update(extra)
    return load_config(None, settings)


def binary_scores(confusion: pd.DataFrame) -> dict[str, float]:
    """Accuracy, precision and recall with dog (row/column 1) as the positive class."""
    m = confusion.to_numpy()
    tp, fp, fn = m[1, 1], m[0, 1], m[1, 0]
    return {"accuracy": float(np.trace(m) / m.sum()),
            "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
            "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
            "tn": int(m[0, 0]), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def collect(comparison_dir: Path, method_names: dict[str, str]) -> list[dict]:
    rows = []
    summary = pd.read_csv(comparison_dir / "summary.csv")
    for _, entry in summary.iterrows():
        if entry["status"] != "ok":
            rows.append({"method": method_names[entry["strategy"]], "seed": entry["seed"], "status": "failed"})
            continue
        result = load_run(comparison_dir / entry["run_dir"])
        row = {"method": method_names[entry["strategy"]], "seed": int(entry["seed"]), "status": "ok",
               **binary_scores(result.confusion_matrix)}
        local = result.clients[result.clients["phase"] == "local-test"]
        if len(local):
            row["client_models_min"] = float(local["accuracy"].min())
            row["client_models_max"] = float(local["accuracy"].max())
        rows.append(row)
    return rows


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"]
    methods = list(dict.fromkeys(ok["method"]))
    metrics = ["accuracy", "precision", "recall"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        means = [ok[ok["method"] == m][metric].mean() for m in methods]
        lows = [means[i] - ok[ok["method"] == m][metric].min() for i, m in enumerate(methods)]
        highs = [ok[ok["method"] == m][metric].max() - means[i] for i, m in enumerate(methods)]
        ax.bar(np.arange(len(methods)) + j * width, means, width, yerr=[lows, highs], capsize=3, label=metric)
    clients = ok.dropna(subset=["client_models_min"])
    if len(clients):
        lo, hi = clients["client_models_min"].min(), clients["client_models_max"].max()
        ax.axhspan(lo, hi, color="grey", alpha=0.15, label=f"single-client models ({lo:.2f}-{hi:.2f})")
    ax.set_xticks(np.arange(len(methods)) + width, methods, fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("test score (dog = positive)")
    ax.set_title(f"CIFAR-10 cat vs dog, 10 clients x 198 images, seeds {sorted(int(s) for s in ok['seed'].unique())}")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDSIM_DATA_DIR", "data")))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="niid_cnn")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "out" / "cats_dogs_one_shot")
    parser.add_argument("--docs", action="store_true", help="write the table and figure under docs/")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    one_shot = compare(base_config(args, "one-shot"), "centralized,fedavg,ema:beta=0.5", seeds, progress=False,
                       on_run=lambda label, seed: print(f"== one-shot: {label} (seed {seed})", flush=True))
    rounds = compare(base_config(args, "ten-rounds", **{"train.mode": "federated", "train.rounds": 10,
                                                        "train.local_epochs": 1}),
                     "fedavg", seeds, progress=False,
                     on_run=lambda label, seed: print(f"== 10 rounds: {label} (seed {seed})", flush=True))
    rows = collect(one_shot.path, {"centralized": "centralized", "fedavg": "FedAvg one-shot",
                                   "ema:beta=0.5": "EMA(0.5) one-shot"})
    rows += collect(rounds.path, {"fedavg": "FedAvg 10x1 epoch"})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "cats_dogs_one_shot.csv", index=False)
    numeric = ["accuracy", "precision", "recall", "client_models_min", "client_models_max"]
    means = table[table["status"] == "ok"].groupby("method", sort=False)[numeric].agg(["mean", "std"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    print(means.to_string(float_format=lambda v: f"{v:.4f}"))
    plot(table, args.out / "cats_dogs_one_shot.png")
    if args.docs:
        publish(table, "cats_dogs_one_shot", lambda path: plot(table, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
