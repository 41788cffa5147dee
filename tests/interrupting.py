"""Shared by the resume tests: press Ctrl-C at the end of a round, and compare two run directories."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from fedsim.core.extension import RoundExtension
from fedsim.ops.interrupt import request_stop

VOLATILE = ["wall_seconds", "seconds"]  # timings differ between any two runs


class StopAfter(RoundExtension):
    """Presses Ctrl-C (a stop request) at the end of round ``server_round``."""

    def __init__(self, server_round: int) -> None:
        self.server_round = server_round

    def on_round_end(self, record, arrays) -> None:  # noqa: ANN001
        if record.server_round == self.server_round:
            request_stop()


def same_results(a: Path, b: Path) -> None:
    """Two run directories hold the same tables and final model, bit for bit (timings aside)."""
    for table in ("rounds.csv", "clients.csv"):
        left, right = pd.read_csv(a / table), pd.read_csv(b / table)
        drop = [c for c in VOLATILE if c in left]
        pd.testing.assert_frame_equal(left.drop(columns=drop), right.drop(columns=drop), check_exact=True)
    left, right = torch.load(a / "final_model.pt"), torch.load(b / "final_model.pt")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)
