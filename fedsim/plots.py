"""Figures of a run: accuracy and loss per round (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rounds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Test (centralized) and federated-evaluation accuracy vs round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, label in (("test_accuracy", "test (centralized)"),
                          ("fed_eval_accuracy", "clients' held-out (federated)"),
                          ("train_accuracy", "local training")):
        data = rounds[["round", column]].dropna()
        if len(data):
            ax.plot(data["round"], data[column], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(rounds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Training, federated-evaluation and test loss vs round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, label in (("train_loss", "local training"), ("fed_eval_loss", "clients' held-out"),
                          ("test_loss", "test (centralized)")):
        data = rounds[["round", column]].dropna()
        if len(data):
            ax.plot(data["round"], data[column], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "loss per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(path: str | Path) -> list[Path]:
    """Re-draw a finished run's figures from its tables (``fedsim plot RUN_DIR``)."""
    from fedsim.datasets import plot_heatmap
    from fedsim.results import load_run

    result = load_run(path)
    figures = result.path / "figures"
    figures.mkdir(exist_ok=True)
    title = f"{result.summary['strategy']} / {result.summary['model']} / {result.summary['partition']}"
    return [
        plot_accuracy(result.rounds, figures / "accuracy.png", title),
        plot_loss(result.rounds, figures / "loss.png", title),
        plot_heatmap(result.partition_counts.to_numpy(), list(result.partition_counts.columns),
                     figures / "label_distribution.png"),
    ]
