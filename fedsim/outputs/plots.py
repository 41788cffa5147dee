"""Figures of a run: accuracy and loss per round, accuracy against simulated time, and who was
slow or dropped out each round.

Figures are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``), never
through ``pyplot``'s global state: fedsim works without a display and leaves the backend of the
caller (a notebook's inline plots) alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


class _Figures:
    """``pyplot.subplots`` without pyplot: a ``Figure`` of its own, registered nowhere."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs):  # noqa: ANN003, ANN205
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)


def _pyplot() -> _Figures:
    return _Figures()


def _save(fig, path: Path, dpi: int = 110) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Lay out and write a figure; ``path`` back."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def plot_accuracy(rounds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Test (centralized) and federated-evaluation accuracy vs round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, label in (("test_accuracy", "test set (global model, or mean of client models: T_uni)"),
                          ("tpriv_accuracy", "clients' models on T_priv"),
                          ("fed_eval_accuracy", "clients' held-out (federated)"),
                          ("train_accuracy", "local training")):
        if column not in rounds:
            continue
        data = rounds[["round", column]].dropna()
        if len(data):
            ax.plot(data["round"], data[column], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy per round")
    return _save(fig, path)


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
    return _save(fig, path)


def has_simulated_time(rounds: pd.DataFrame) -> bool:
    """Whether a run simulated time (its ``rounds.csv`` has ``sim_time`` values)."""
    return "sim_time" in rounds and rounds["sim_time"].notna().any()


def time_unit(longest_seconds: float) -> tuple[float, str]:
    """Seconds per unit and the unit's name for an axis spanning ``longest_seconds``."""
    if longest_seconds < 120:
        return 1.0, "seconds"
    if longest_seconds < 2 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def plot_accuracy_vs_time(rounds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Test accuracy against cumulative simulated time (round 0 at time 0)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    data = rounds[["round", "sim_time", "test_accuracy"]].copy()
    data.loc[data["round"] == 0, "sim_time"] = 0.0
    data = data.dropna()
    unit, name = time_unit(float(data["sim_time"].max()) if len(data) else 0.0)
    ax.plot(data["sim_time"] / unit, data["test_accuracy"], marker="o", ms=3)
    ax.set_xlabel(f"simulated time ({name})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy against simulated time")
    return _save(fig, path)


STATUS_COLOURS = {"ok": "tab:green", "failed": "black", "straggler": "tab:red", "offline": "tab:purple",
                  "surplus": "tab:orange"}


def _draw_client_times(ax, clients: pd.DataFrame, deadline: float) -> None:  # noqa: ANN001 - an Axes
    from matplotlib.ticker import MaxNLocator

    train = clients[(clients["phase"] == "train") & clients["sim_finish"].notna()]
    seconds = train["sim_finish"] - train["sim_start"]
    offsets = np.random.default_rng(0).uniform(-0.25, 0.25, size=len(train))  # spread the dots of a round
    for status, colour in STATUS_COLOURS.items():
        mask = (train["status"] == status).to_numpy()
        if mask.any():
            ax.scatter(train["round"].to_numpy()[mask] + offsets[mask], seconds.to_numpy()[mask], s=9,
                       color=colour, alpha=0.7, label=f"{status} ({int(mask.sum())})")
    if deadline > 0:
        ax.axhline(deadline, ls="--", color="grey", label=f"deadline {deadline:g} s")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_client_times(clients: pd.DataFrame, path: Path, deadline: float = 0.0, title: str = "") -> Path:
    """Each training client's simulated round time per round, coloured by what became of it.

    One dot per sampled client and round (x = round, y = seconds from its start to when it
    finished or dropped out), so the slow clients, the stragglers past a deadline (dashed line),
    the clients that went offline and the over-selected surplus are visible at a glance.
    """
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    _draw_client_times(ax, clients, deadline)
    ax.set_ylabel("simulated seconds (download + compute + upload)")
    ax.set_title(title or "client round times")
    return _save(fig, path)


def plot_client_times_grid(runs: dict[str, tuple[pd.DataFrame, float]], path: Path) -> Path:
    """:func:`plot_client_times` for several runs side by side (label -> clients table, deadline)."""
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False, sharey=True)
    for ax, (label, (clients, deadline)) in zip(axes.flat, runs.items()):
        _draw_client_times(ax, clients, deadline)
        ax.set_title(label, fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("simulated seconds")
    return _save(fig, path)


RUN_FIGURES = ("accuracy.png", "loss.png", "label_distribution.png")
PRIVACY_FIGURE = "privacy.png"
TIME_FIGURES = ("accuracy_vs_time.png", "client_times.png")


def plot_time_figures(rounds: pd.DataFrame, clients: pd.DataFrame, figures: Path, deadline: float,
                      title: str = "") -> list[Path]:
    """The simulated-time figures of a run (none when the run did not simulate time)."""
    if not has_simulated_time(rounds):
        return []
    for name in TIME_FIGURES:
        if (figures / name).is_symlink():
            (figures / name).unlink()
    return [plot_accuracy_vs_time(rounds, figures / TIME_FIGURES[0], title),
            plot_client_times(clients, figures / TIME_FIGURES[1], deadline, title)]


def plot_privacy(rounds: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Privacy spent (epsilon at the run's delta, ``fedsim.methods.privacy``) vs round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    data = rounds[["round", "dp_epsilon"]].dropna()
    data = data[data["round"] > 0]
    finite = data[np.isfinite(data["dp_epsilon"])]
    ax.plot([0, *finite["round"]], [0.0, *finite["dp_epsilon"]], marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (client-level)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "privacy spent per round")
    return _save(fig, path)


def plot_privacy_figure(rounds: pd.DataFrame, figures: Path, title: str = "") -> list[Path]:
    """``privacy.png`` when the run accounted privacy (a DP strategy), else nothing."""
    if "dp_epsilon" not in rounds or not rounds["dp_epsilon"].notna().any():
        return []
    if (figures / PRIVACY_FIGURE).is_symlink():
        (figures / PRIVACY_FIGURE).unlink()
    return [plot_privacy(rounds, figures / PRIVACY_FIGURE, title)]


def plot_run(path: str | Path) -> list[Path]:
    """Re-draw a finished run's figures from its tables (``fedsim plot RUN_DIR``).

    Writes only into the run's own ``figures/`` folder and never through a symlink: a
    ``figures`` that is a symlink is refused, and a figure file that is a symlink is replaced
    by a regular file (the link's target is left alone).
    """
    from fedsim.datasets import plot_heatmap
    from fedsim.errors import InputError
    from fedsim.outputs.results import load_run

    result = load_run(path)
    figures = result.path / "figures"
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        raise InputError(f"{figures} is a symlink or a file, not the run's figures folder; fedsim plot writes "
                         "only into a real figures/ folder inside the run directory: remove it and plot again")
    figures.mkdir(exist_ok=True)
    for name in RUN_FIGURES:
        if (figures / name).is_symlink():
            (figures / name).unlink()
    title = f"{result.summary['strategy']} / {result.summary['model']} / {result.summary['partition']}"
    accuracy, loss, labels = (figures / name for name in RUN_FIGURES)
    deadline = float(result.setting("time.policy.deadline", 0.0))
    return [
        plot_accuracy(result.rounds, accuracy, title),
        plot_loss(result.rounds, loss, title),
        plot_heatmap(result.partition_counts.to_numpy(), list(result.partition_counts.columns), labels),
        *plot_time_figures(result.rounds, result.clients, figures, deadline, title),
        *plot_privacy_figure(result.rounds, figures, title),
    ]


X_LABELS = {"round": "round", "cumulative_mb": "cumulative MB communicated (model arrays)"}


def plot_comparison(tidy: pd.DataFrame, path: Path, x: str = "round") -> Path:
    """Test accuracy vs ``round``, ``cumulative_mb`` or ``sim_hours``: mean over seeds with a min-max band.

    Strategies that communicate nothing (the centralized baseline) appear on the MB plot as a
    dashed horizontal line at their final accuracy.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    acc = tidy[tidy["metric"] == "test_accuracy"]
    unit, unit_name = 1.0, ""
    if x == "sim_hours":  # hours in the table; the axis in a unit that suits the span
        seconds = time_unit(3600.0 * float(tidy.loc[tidy["metric"] == x, "value"].max()))
        unit, unit_name = seconds[0] / 3600.0, seconds[1]
    for label, part in acc.groupby("strategy", sort=False):
        if x == "round":
            frame = part.pivot_table(index="round", columns="seed", values="value")
            xs = frame.index.to_numpy(dtype=float)
        else:
            mb = tidy[(tidy["strategy"] == label) & (tidy["metric"] == x)]
            frame = part.pivot_table(index="round", columns="seed", values="value")
            mb_mean = mb.pivot_table(index="round", columns="seed", values="value").mean(axis=1)
            if not len(mb_mean) or float(mb_mean.max()) == 0.0:
                what = "no communication" if x == "cumulative_mb" else "no simulated time"
                ax.axhline(float(frame.mean(axis=1).iloc[-1]), ls="--", color="grey", label=f"{label} ({what})")
                continue
            xs = mb_mean.reindex(frame.index).to_numpy(dtype=float) / unit
        mean = frame.mean(axis=1).to_numpy()
        line, = ax.plot(xs, mean, marker="o", ms=3, label=f"{label} (n={frame.shape[1]})")
        if frame.shape[1] > 1:
            ax.fill_between(xs, frame.min(axis=1), frame.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel(f"simulated time ({unit_name})" if x == "sim_hours" else X_LABELS[x])
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mean over seeds, band = min..max")
    return _save(fig, path)


def plot_confusions(matrices: dict[str, pd.DataFrame], path: Path) -> Path:
    """Final confusion matrices side by side (rows = true labels), first seed of each strategy."""
    plt = _pyplot()
    n = max(len(matrices), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.5, 3.4), squeeze=False)
    for ax, (label, frame) in zip(axes[0], matrices.items()):
        values = frame.to_numpy()
        ax.imshow(values, cmap="Blues")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if values.shape[0] <= 10:
            names = [str(c)[:5] for c in frame.columns]
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            if values.shape[0] <= 4:
                for (i, j), v in np.ndenumerate(values):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    return _save(fig, path)


def plot_hook_stats(tidy: pd.DataFrame, path: Path) -> Path:
    """Client-hook statistics (mean over clients, then seeds) vs round, one panel per statistic."""
    plt = _pyplot()
    hooks = tidy[tidy["metric"].str.startswith("hook.")]
    metrics = sorted(hooks["metric"].unique())
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        part = hooks[hooks["metric"] == metric]
        for label, group in part.groupby("strategy", sort=False):
            series = group.groupby("round")["value"].mean()
            ax.plot(series.index, series.values, marker="o", ms=3, label=label)
        ax.set_title(metric.removeprefix("hook."), fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path, dpi=100)


def sweep_axis(values: list) -> tuple[str, list[float]]:
    """How a sweep figure places grid values on its x-axis: ``"log"``, ``"linear"`` or ``"categorical"``.

    Numbers (not booleans) that are all positive and span a factor of 10 or more (alpha from 0.05
    to 1) get a log axis, so the small values are not squeezed together; other numbers a linear
    one. Anything else (strings, booleans, lists) is categorical: evenly spaced, in grid order.
    Returns the scale and each value's position.
    """
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values):
        return "categorical", [float(i) for i in range(len(values))]
    xs = [float(v) for v in values]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        return "log", xs
    return "linear", xs


def plot_sweep(by_cell: pd.DataFrame, grid: dict[str, list], metric: str, path: Path, ylabel: str = "") -> Path:
    """One metric of a sweep against the first grid key: mean over seeds, error bars of one std.

    ``by_cell`` has one row per grid cell and strategy (``fedsim compare --grid``'s
    ``summary_by_strategy.csv``): the grid keys, ``strategy``, ``runs_ok``, ``<metric>_mean`` and
    ``<metric>_std``; ``grid`` maps each key to its values as they appear in the table, in order.
    One line per strategy; with more grid keys, one panel per combination of the other keys
    (shared y-axis), so each panel stays a few lines. A cell whose runs all failed is a gap.
    """
    import itertools

    keys = list(grid)
    x_key, others = keys[0], keys[1:]
    panels = list(itertools.product(*(grid[k] for k in others)))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False, sharey=True)
    scale, xs = sweep_axis(grid[x_key])
    strategies = list(dict.fromkeys(by_cell["strategy"]))
    for ax, combination in zip(axes.flat, panels):
        part = by_cell
        for key, value in zip(others, combination):
            part = part[part[key] == value]
        for i, label in enumerate(strategies):
            line = part[part["strategy"] == label]
            means, stds = [], []
            for value in grid[x_key]:
                row = line[line[x_key] == value]
                means.append(float(row[f"{metric}_mean"].iloc[0]) if len(row) else np.nan)
                stds.append(float(row[f"{metric}_std"].iloc[0]) if len(row) else np.nan)
            # categorical: spread the strategies a little so their error bars do not hide each other
            offset = (i - (len(strategies) - 1) / 2) * 0.08 if scale == "categorical" else 0.0
            n = int(line["runs_ok"].max()) if len(line) else 0
            ax.errorbar(np.asarray(xs) + offset, means, yerr=np.nan_to_num(np.asarray(stds)), marker="o", ms=4,
                        capsize=3, label=f"{label} (n={n})")
        if scale == "log":
            ax.set_xscale("log")
            ax.minorticks_off()
        names = [f"{v:g}" if scale != "categorical" else str(v).lower() if isinstance(v, bool) else str(v)[:24]
                 for v in grid[x_key]]
        ax.set_xticks(xs, names, rotation=30 if max(map(len, names)) > 6 else 0, fontsize=8)
        ax.set_xlabel(x_key + (" (log scale)" if scale == "log" else ""))
        ax.grid(alpha=0.3)
        if others:
            ax.set_title(", ".join(f"{k}={v}" for k, v in zip(others, combination)), fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or metric)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{ylabel or metric} vs {x_key}: mean over seeds, bars = 1 std", fontsize=10)
    return _save(fig, path)
