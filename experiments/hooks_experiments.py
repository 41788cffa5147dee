"""Client-hook experiments on CIFAR-10 (crucial samples, sample selection, KD), at a 2-core CPU scale.

The papers (full references in ``docs/methods.md``): (a) Singh and Toshniwal, "Federated
Learning Based Data Distillation and Augmentation for Improving the Performance of MobileNet-V2";
(b) Jiang, Zhu, Tan and Liston, "Training Sample Selection for Deep Learning of Distributed Data",
2017; (c) Jun and Shin, "Improving Knowledge Distillation Using Data Augmentation".

Common setting: 5 clients x 1,000 images (``dirichlet-per-client``, alpha 1.0), NIID-Bench CNN,
FedAvg over all clients, SGD lr 0.01 momentum 0.9 batch 32, test on the full CIFAR-10 test set.

(a) Singh and Toshniwal -- crucial-sample augmentation: 3 rounds x 3 local epochs; ``crucial`` with the
    paper's committee (k = 10 tiny models on stratified local chunks, theta = 9, rule ``lt``),
    then one ``affine`` copy per crucial sample; vs the same number of randomly chosen samples
    augmented (``target = "random"``); vs no augmentation.
(b) Jiang et al. -- training-sample selection: 6 rounds x 1 local epoch; rounds 1-3 train on all data
    (the scorer's warm-up, like the paper's initial model), then each round a client scores its data
    with the received global model and trains only on the top rho (0.05, 0.3) by ``corr_conf``
    (eq. 6), ``correctness`` or ``uniform``.
(c) Jun and Shin -- knowledge distillation in local training: 5 rounds x 1 local epoch;
    ``(1 - alpha) * CE + alpha * T^2 KL`` (T = 4) toward a fixed teacher -- the NIID-Bench CNN
    trained centrally on all 50,000 training images for 3 epochs (a checkpoint, loaded safely) --
    alpha in {0, 0.5, 1}, without and with online flip + crop augmentation.

    python experiments/hooks_experiments.py --data-dir DIR --seeds 0,1,2 --docs

All runs share one Flower simulation runtime. Writes ``experiments/out/hooks/`` and, with
``--docs``, ``docs/experiments/hooks_<a|b|c>.csv`` and ``docs/figures/hooks_<a|b|c>.png``.
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

ROOT = Path(__file__).resolve().parents[1]
CRUCIAL = {"name": "crucial", "committee": "chunks", "k": 10, "theta": 9, "rule": "lt"}

EXPERIMENTS: dict[str, dict[str, dict]] = {
    "a": {
        "none": {"rounds": 3, "epochs": 3, "hooks": []},
        "random augmentation": {"rounds": 3, "epochs": 3, "hooks": [
            CRUCIAL, {"name": "augment", "transform": "affine", "target": "random", "random_like": "crucial"}]},
        "crucial augmentation": {"rounds": 3, "epochs": 3, "hooks": [
            CRUCIAL, {"name": "augment", "transform": "affine", "target": "crucial"}]},
    },
    "b": {
        f"{proxy} rho={rho}": {"rounds": 6, "epochs": 1,
                               "hooks": [{"name": "select", "rho": rho, "proxy": proxy, "start_round": 4}]}
        for rho in (0.05, 0.3) for proxy in ("corr_conf", "correctness", "uniform")
    },
    "c": {
        f"alpha={alpha}{' + flip/crop' if aug else ''}": {
            "rounds": 5, "epochs": 1,
            "hooks": [{"name": "kd", "alpha": alpha, "temperature": 4.0, "teacher": "checkpoint",
                       "teacher_model": "niid_cnn"}]
            + ([{"name": "augment", "transform": "flip_crop", "mode": "online"}] if aug else [])}
        for aug in (False, True) for alpha in (0.0, 0.5, 1.0)
    },
}


def train_teacher(args: argparse.Namespace) -> Path:
    """(c)'s fixed teacher: the NIID-Bench CNN trained centrally on all 50,000 training images."""
    from fedsim.runs.experiment import run

    result = run(load_config(None, {
        "seed": 0, "train.mode": "centralized", "train.rounds": args.teacher_epochs, "train.local_epochs": 1,
        "data.dataset": "npz", "data.path": "cifar10.npz", "data.data_dir": str(args.data_dir),
        "partition.scheme": "iid", "partition.num_clients": 1, "partition.val_fraction": 0.0,
        "model.name": "niid_cnn", "train.batch_size": 64, "train.lr": 0.01,
        "evaluation.batch_size": 1000, "evaluation.federated_every": 0,
        "output.dir": str(args.out), "output.name": "teacher",
        "output.overwrite": True, "output.figures": False}), progress=False)
    print(f"teacher test accuracy: {result.summary['final_test_accuracy']:.4f}", flush=True)
    return result.path / "final_model.pt"


def config_for(args: argparse.Namespace, experiment: str, variant: str, seed: int, teacher: Path | None = None):
    spec = EXPERIMENTS[experiment][variant]
    hooks = [dict(h, checkpoint=str(teacher)) if h.get("teacher") == "checkpoint" else h for h in spec["hooks"]]
    return load_config(None, {
        "seed": seed, "hooks": hooks,
        "data.dataset": "npz", "data.path": "cifar10.npz", "data.data_dir": str(args.data_dir),
        "partition.scheme": "dirichlet-per-client", "partition.alpha": 1.0,
        "partition.samples_per_client": 1000, "partition.num_clients": 5, "partition.val_fraction": 0.0,
        "model.name": "niid_cnn",
        "train.rounds": spec["rounds"], "train.local_epochs": spec["epochs"], "train.batch_size": 32,
        "train.lr": 0.01, "train.momentum": 0.9,
        "evaluation.federated_every": 0, "evaluation.batch_size": 1000,
        "output.dir": str(args.out / "runs"), "output.overwrite": True, "output.figures": False,
        "output.name": f"{experiment}-{variant}-s{seed}".replace(" ", "_").replace("/", "-"),
    })


def row_for(experiment: str, variant: str, seed: int, result) -> dict:  # noqa: ANN001
    row = {"experiment": experiment, "variant": variant, "seed": seed}
    if isinstance(result, BaseException):
        return {**row, "status": "failed", "error": str(result).splitlines()[0]}
    row.update(status="ok", final_accuracy=result.summary["final_test_accuracy"],
               best_accuracy=result.summary["best_test_accuracy"])
    hooks_file = result.path / "hooks.csv"
    if hooks_file.is_file():
        stats = pd.read_csv(hooks_file)
        for (hook, metric), value in stats.groupby(["hook", "metric"])["value"].mean().items():
            if not metric.startswith("count_class"):
                row[f"{hook}.{metric}"] = value
    return row


def plot(table: pd.DataFrame, experiment: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[(table["experiment"] == experiment) & (table["status"] == "ok")]
    variants = list(dict.fromkeys(ok["variant"]))
    groups = [ok[ok["variant"] == v]["final_accuracy"] for v in variants]
    means = np.array([g.mean() for g in groups])
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(variants)), 3.8))
    ax.bar(range(len(variants)), means,
           yerr=[means - [g.min() for g in groups], [g.max() for g in groups] - means], capsize=3)
    for i, g in enumerate(groups):
        ax.scatter(np.full(len(g), i), g, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(variants)), variants, rotation=25, ha="right", fontsize=8)
    lo = max(0.0, float(min(g.min() for g in groups)) - 0.05)
    ax.set_ylim(lo, min(1.0, float(max(g.max() for g in groups)) + 0.03))
    ax.set_ylabel("final test accuracy")
    titles = {"a": "Singh & Toshniwal: augmenting crucial vs random samples",
              "b": "Jiang et al.: training-sample selection proxies",
              "c": "Jun & Shin: KD weight alpha, with and without augmentation"}
    seeds = sorted(int(s) for s in ok["seed"].unique())
    ax.set_title(f"{titles[experiment]}\nCIFAR-10, 5 clients x 1,000 images, seeds {seeds}; bars = min..max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDSIM_DATA_DIR", "data")))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--experiments", default="a,b,c")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "out" / "hooks")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="(c): centralized teacher epochs")
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = [e for e in args.experiments.split(",") if e]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    teacher = train_teacher(args) if "c" in chosen else None
    entries = [(e, v, s) for e in chosen for s in seeds for v in EXPERIMENTS[e]]
    configs = [config_for(args, e, v, s, teacher) for e, v, s in entries]
    started = time.perf_counter()
    outcomes = run_many(configs, progress=False,
                        on_start=lambda i: print(f"== ({entries[i][0]}) {entries[i][1]} seed {entries[i][2]}", flush=True))
    print(f"{len(configs)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    table = pd.DataFrame([row_for(e, v, s, r) for (e, v, s), r in zip(entries, outcomes)])
    table.to_csv(args.out / "hooks_experiments.csv", index=False)
    for experiment in chosen:
        part = table[table["experiment"] == experiment].dropna(axis=1, how="all")
        summary = part[part["status"] == "ok"].groupby("variant", sort=False).mean(numeric_only=True)
        print(f"\n--- experiment ({experiment})")
        print(summary.drop(columns=["seed"]).to_string(float_format=lambda v: f"{v:.4f}"))
        plot(table, experiment, args.out / f"hooks_{experiment}.png")
        if args.docs:
            publish(part, f"hooks_{experiment}", lambda path, e=experiment: plot(table, e, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
