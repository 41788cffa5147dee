"""``fedsim partition``: build a configured partition and report its label distribution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.config import ExperimentConfig
from fedsim.config.validation import validate, validate_against_dataset
from fedsim.datasets import counts_frame, format_summary, materialize, plot_heatmap, summary


@dataclass
class PartitionReport:
    """Counts, summary statistics and (when saved) the files written."""

    counts: pd.DataFrame
    stats: dict
    heatmap: Path | None = None
    table: Path | None = None

    def __str__(self) -> str:
        return format_summary(self.stats)


def partition(config: ExperimentConfig, output_dir: str | Path | None = None) -> PartitionReport:
    """Partition the configured dataset; with ``output_dir``, save counts CSV and heat-map PNG."""
    from fedsim.runs.prepare import make_partition

    plan = validate(config)
    dataset = materialize(config.data)
    validate_against_dataset(plan, dataset.num_train, dataset.num_classes)
    _, counts, _ = make_partition(plan, dataset)
    report = PartitionReport(counts_frame(counts, dataset.class_names), summary(np.asarray(counts)))
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        p = config.partition
        stem = f"partition-{config.data.dataset}-{p.scheme}-n{p.num_clients}-a{p.alpha:g}-s{config.seed}"
        report.table = folder / f"{stem}.csv"
        report.counts.to_csv(report.table)
        report.heatmap = plot_heatmap(
            counts, dataset.class_names, folder / f"{stem}.png",
            title=f"{p.scheme} (alpha={p.alpha:g}), {p.num_clients} clients, seed {config.seed}",
        )
    return report
