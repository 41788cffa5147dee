"""Streams per-round and per-client rows into the (staging) run directory as the run goes.

Rows are appended to ``rounds.csv`` and ``clients.csv`` after every round, so a long run
can be watched (and a crashed run inspected) while it is in progress. Columns are fixed up
front; values a round did not produce (e.g. no evaluation that round) are left empty.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

ROUND_COLUMNS = (
    "round", "clients_sampled", "clients_succeeded", "clients_failed", "clients_dropped",
    "train_loss", "train_accuracy", "fed_eval_loss", "fed_eval_accuracy",
    "test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1",
    "tpriv_accuracy", "tpriv_std", "tuni_std", "consensus_accuracy",
    "bytes_down", "bytes_up", "wall_seconds",
    "sim_round_seconds", "sim_time", "staleness_mean", "staleness_max",
    "clients_vectorized", "compile_seconds",
    "dp_epsilon",  # privacy spent so far (DP strategies: fedsim.methods.privacy); empty otherwise
    "avg_model_test_loss", "avg_model_test_accuracy",  # FedDyn's plain client mean (fedsim.methods.feddyn)
)
HOOK_COLUMNS = ("round", "client_id", "hook", "metric", "value")
CLIENT_COLUMNS = ("round", "phase", "client_id", "status", "num_examples", "loss", "accuracy",
                  "tpriv_accuracy", "seconds", "sim_start", "sim_download", "sim_compute", "sim_upload",
                  "sim_finish", "staleness", "engine", "error")


class RunRecorder:
    """Appends rows to CSV files in ``folder`` and keeps the latest confusion matrix."""

    def __init__(self, folder: Path, resume: bool = False):
        self.folder = Path(folder)
        self.rounds_path = self.folder / "rounds.csv"
        self.clients_path = self.folder / "clients.csv"
        self.hooks_path = self.folder / "hooks.csv"
        self.confusion: np.ndarray | None = None
        self.extras: dict[str, object] = {}  # run-level facts for summary.json (e.g. the teacher's accuracy)
        if resume:  # the tables are there; :meth:`restore` cuts them back to the checkpoint
            return
        for path, columns in ((self.rounds_path, ROUND_COLUMNS), (self.clients_path, CLIENT_COLUMNS)):
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    @staticmethod
    def _cell(value: object) -> object:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return value

    def _append(self, path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
        unknown = {k for row in rows for k in row} - set(columns)
        if unknown:
            raise KeyError(f"unexpected result columns {sorted(unknown)}")
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for row in rows:
                writer.writerow([self._cell(row.get(c)) for c in columns])

    def add_round(self, row: dict) -> None:
        self._append(self.rounds_path, ROUND_COLUMNS, [row])

    def add_clients(self, rows: list[dict]) -> None:
        self._append(self.clients_path, CLIENT_COLUMNS, rows)

    def add_hook_stats(self, rows: list[dict]) -> None:
        """Long-format hook statistics: round, client_id, hook, metric, value (``hooks.csv``)."""
        if not rows:
            return
        new = not self.hooks_path.exists()
        with self.hooks_path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(HOOK_COLUMNS)
            for row in rows:
                writer.writerow([row[c] for c in HOOK_COLUMNS])

    def set_confusion(self, matrix: np.ndarray) -> None:
        self.confusion = matrix

    def position(self) -> dict:
        """Where the run's tables end now, and the in-memory results (for a checkpoint).

        Every ``*.csv`` at the top of the run directory is append-only while a run goes on
        (this recorder's tables and those extensions write, e.g. ``workers.csv``), so its byte
        length marks the position.
        """
        return {"tables": {p.name: p.stat().st_size for p in sorted(self.folder.glob("*.csv"))},
                "extras": dict(self.extras), "confusion": self.confusion}

    def restore(self, position: dict) -> None:
        """Cut every table back to ``position`` (rows of rounds after the checkpoint go)."""
        tables = position["tables"]
        for path in self.folder.glob("*.csv"):
            if path.name not in tables:
                path.unlink()
        for name, size in tables.items():
            path = self.folder / name
            if not path.is_file() or path.stat().st_size < size:
                raise FileNotFoundError(f"{path} is shorter than at the checkpoint: the run directory "
                                        "was changed after it was written; it cannot be resumed exactly")
            with path.open("r+b") as handle:
                handle.truncate(size)
        self.extras = dict(position["extras"])
        self.confusion = position["confusion"]
