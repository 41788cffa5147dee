"""Label-distribution statistics of a partition: tables, a text summary and a heat map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def counts_frame(counts: np.ndarray, class_names: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The client x class count matrix as a DataFrame (index ``client``, one column per class)."""
    frame = pd.DataFrame(counts, columns=list(class_names))
    frame.index.name = "client"
    return frame


def summary(counts: np.ndarray) -> dict[str, float]:
    """Sizes, class coverage and skew of a partition, as plain numbers."""
    sizes = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / np.maximum(sizes[:, None], 1)
        entropy = -(np.where(shares > 0, shares * np.log(shares), 0.0)).sum(axis=1)
    global_share = counts.sum(0) / max(counts.sum(), 1)
    # total-variation distance of each client's label mix from the global one
    tv = 0.5 * np.abs(shares - global_share[None, :]).sum(axis=1)
    return {
        "clients": int(counts.shape[0]),
        "classes": int(counts.shape[1]),
        "samples": int(sizes.sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "size_std": float(sizes.std()),
        "classes_per_client_mean": float((counts > 0).sum(1).mean()),
        "label_entropy_mean": float(entropy.mean()),
        "label_entropy_max": float(np.log(counts.shape[1])),
        "tv_from_global_mean": float(tv.mean()),
    }


def format_summary(stats: dict[str, float]) -> str:
    """Human-readable lines for ``fedsim partition``."""
    return "\n".join(
        [
            f"clients: {stats['clients']}   classes: {stats['classes']}   samples: {stats['samples']}",
            f"client size: min {stats['size_min']}  median {stats['size_median']:.0f}  "
            f"max {stats['size_max']}  std {stats['size_std']:.1f}",
            f"classes per client (mean): {stats['classes_per_client_mean']:.2f}",
            f"label entropy (mean): {stats['label_entropy_mean']:.3f} of max "
            f"{stats['label_entropy_max']:.3f} nats",
            f"TV distance from the global label mix (mean): {stats['tv_from_global_mean']:.3f}",
        ]
    )


def plot_heatmap(
    counts: np.ndarray, class_names: list[str] | tuple[str, ...], path: Path, title: str = ""
) -> Path:
    """Save a client x class heat map of sample counts (PNG)."""
    fig = heatmap_figure(counts, class_names, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def heatmap_figure(counts: np.ndarray, class_names: list[str] | tuple[str, ...], title: str = "") -> Figure:
    """The client x class heat map of sample counts as a ``matplotlib.figure.Figure``.

    Drawn without pyplot (the caller's backend, a notebook's, is left alone and no global
    figure is registered), so callers can save it (:func:`plot_heatmap`) or render it to an
    array (``fedsim.outputs.tensorboard``).
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

    num_clients, num_classes = counts.shape
    width = min(max(6.0, 0.35 * num_classes + 3), 20)
    height = min(max(3.0, 0.25 * num_clients + 1.5), 14)
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), list(class_names), rotation=45, ha="right")
    if num_clients <= 40:
        ax.set_yticks(range(num_clients))
    if num_clients * num_classes <= 200:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value < counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_title(title or "label distribution per client")
    fig.tight_layout()
    return fig
