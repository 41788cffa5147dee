"""Shared by the experiment scripts: copy a result table and figure into ``docs/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def publish(table: pd.DataFrame, name: str, draw: Callable[[Path], None]) -> None:
    """Write ``docs/experiments/<name>.csv`` and ``docs/figures/<name>.png`` (drawn by ``draw``)."""
    (ROOT / "docs" / "experiments").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "figures").mkdir(parents=True, exist_ok=True)
    table.to_csv(ROOT / "docs" / "experiments" / f"{name}.csv", index=False, float_format="%.4f")
    draw(ROOT / "docs" / "figures" / f"{name}.png")
