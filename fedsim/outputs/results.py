"""Reading a run directory back as pandas tables (the Python API's return value)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class RunResult:
    """A finished run: its folder, tables and summary."""

    path: Path
    rounds: pd.DataFrame
    clients: pd.DataFrame
    partition_counts: pd.DataFrame
    summary: dict
    config: dict = field(default_factory=dict)
    confusion_matrix: pd.DataFrame | None = None

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_test_accuracy")

    def setting(self, key: str, default: Any = None) -> Any:
        """The run's config value of dotted ``key`` (``time.policy.deadline``), or ``default``.

        A run directory written by an earlier fedsim keeps old key names in its ``config.toml``;
        they are looked up too.
        """
        from fedsim.config.renamed import RENAMED

        for name in [key, *(old for old, new in RENAMED.items() if new == key)]:
            value: Any = self.config
            for part in name.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is not _MISSING and not isinstance(value, dict):
                return value
        return default


_MISSING = object()


def _table(folder: Path, name: str) -> pd.DataFrame:
    if (folder / f"{name}.parquet").is_file():
        return pd.read_parquet(folder / f"{name}.parquet")
    return pd.read_csv(folder / f"{name}.csv")


def load_run(path: str | Path) -> RunResult:
    """Open a published run directory."""
    folder = Path(path)
    if not (folder / "summary.json").is_file():
        raise FileNotFoundError(f"{folder} is not a finished fedsim run directory (no summary.json)")
    confusion = None
    if (folder / "confusion_matrix.csv").is_file():
        confusion = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
    return RunResult(
        path=folder,
        rounds=_table(folder, "rounds"),
        clients=_table(folder, "clients"),
        partition_counts=pd.read_csv(folder / "partition_counts.csv", index_col=0),
        summary=json.loads((folder / "summary.json").read_text()),
        config=tomllib.loads((folder / "config.toml").read_text()),
        confusion_matrix=confusion,
    )
