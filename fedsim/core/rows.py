"""The round's table rows: one ``clients.csv`` row per client and phase, and weighted means of them."""

from __future__ import annotations

import numpy as np

from .extension import PHASE_TRAIN
from .protocol import (
    CLIENT_SECONDS,
    ENGINE,
    ENGINE_LABELS,
    EVAL_ACCURACY,
    EVAL_LOSS,
    NUM_EXAMPLES,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    ClientReply,
)
from .schedule import TrainingRound


def client_rows(server_round: int, phase: str, replies: list[ClientReply],
                times: dict[int, dict] | None = None) -> list[dict]:
    """One ``clients.csv`` row per task (ok or failed), sorted by client id.

    ``times``: simulated-time columns by client id (:class:`fedsim.core.schedule.TrainingRound`).
    """
    rows = []
    times = times or {}
    for reply in replies:
        row = {"round": server_round, "phase": phase, "client_id": reply.client_id, **times.get(reply.client_id, {})}
        if not reply.ok:
            rows.append({**row, "status": "failed", "error": reply.error})
            continue
        metrics = reply.metrics
        rows.append({**row, "status": "ok", "num_examples": int(metrics[NUM_EXAMPLES]),
                     "loss": float(metrics[TRAIN_LOSS if phase == PHASE_TRAIN else EVAL_LOSS]),
                     "accuracy": float(metrics[TRAIN_ACCURACY if phase == PHASE_TRAIN else EVAL_ACCURACY]),
                     "seconds": float(metrics.get(CLIENT_SECONDS, np.nan)) if phase == PHASE_TRAIN else np.nan,
                     "engine": ENGINE_LABELS.get(int(metrics[ENGINE]), "") if ENGINE in metrics else ""})
    return sorted(rows, key=lambda r: r["client_id"])


def dropped_rows(server_round: int, training: TrainingRound) -> list[dict]:
    """``clients.csv`` rows of the round's dropped clients: their status, reason and times.

    A dropped client trained anyway (``time.policy.train_dropped``) keeps its training metrics.
    """
    rows = []
    for drop in training.dropped:
        row = {"round": server_round, "phase": PHASE_TRAIN, "client_id": drop.client_id, **drop.times}
        if drop.reply is not None:
            (trained,) = client_rows(server_round, PHASE_TRAIN, [drop.reply], {drop.client_id: drop.times})
            row = trained
        rows.append({**row, "status": drop.status, "error": drop.reason})
    return rows


def training_rows(server_round: int, training: TrainingRound) -> list[dict]:
    """Every ``clients.csv`` training row of a round: arrivals (ok or failed) and drop-outs, by client id."""
    rows = client_rows(server_round, PHASE_TRAIN, training.arrived, training.times) + dropped_rows(server_round, training)
    return sorted(rows, key=lambda r: r["client_id"])


def weighted_mean(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over successful rows, weighted by their examples (NaN when none)."""
    good = [r for r in rows if r["status"] == "ok" and np.isfinite(r[key])]
    total = sum(r["num_examples"] for r in good)
    return float(sum(r[key] * r["num_examples"] for r in good) / total) if total else float("nan")
