"""Screening a round's outcome: updates that cannot be aggregated, too few successes, a diverged model.

Every check here turns a problem into a clear outcome instead of a poisoned aggregate: an
update with NaN values or the wrong shapes becomes that client's failure
(:func:`screen_updates`); a round in which fewer clients succeeded than
``train.min_success_fraction`` stops the run naming every failure (:func:`check_success`); a
global model with NaN values stops it naming the round and the likely cause
(:func:`check_finite`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedsim.errors import RunError

from .arrays import nonfinite_keys, nonfinite_update
from .protocol import INVALID_UPDATE, ClientReply, ClientTask, failed_reply
from .stack import Layout


class AggregationError(RunError):
    """The strategy produced no global model from a round's successful replies."""


class TooFewClientsError(RunError):
    """Fewer sampled clients succeeded in a round than ``train.min_success_fraction``."""


class DivergenceError(RunError):
    """The global model has NaN or infinite values: the run diverged."""


def screen_updates(tasks: list[ClientTask], replies: list[ClientReply], reference: ArrayRecord) -> list[ClientReply]:
    """Successful replies whose arrays cannot be aggregated become failures with the reason.

    A reply's arrays must be finite, and where they share names with the arrays the round
    sent (weight averaging) they must have the same names and shapes: one client's NaN or a
    wrong shape would otherwise poison or crash the aggregate. A stacked update is read in
    place (its stack's layout once, its finiteness in one pass over the stack); replies without
    arrays (a streaming worker summed them after its own check) pass.
    """
    screened = []
    expected = {key: tuple(reference[key].shape) for key in reference.keys()}
    layouts: dict[Layout, str] = {}
    for task, reply in zip(tasks, replies):
        reason = ""
        if reply.ok and reply.update is not None:
            layout = reply.update.layout
            if layout not in layouts:
                layouts[layout] = _mismatch(dict(zip(layout.names, layout.shapes)), expected)
            reason = layouts[layout]
            bad = reply.update.stack.nonfinite(reply.update.index) if not reason else []
            if bad:
                reason = nonfinite_update(bad)
        elif reply.ok and reply.content.array_records:
            arrays = reply.arrays
            reason = _mismatch({key: tuple(arrays[key].shape) for key in arrays.keys()}, expected)
            bad = nonfinite_keys(arrays) if not reason else []
            if bad:
                reason = nonfinite_update(bad)
        screened.append(failed_reply(task, reason, INVALID_UPDATE) if reason else reply)
    return screened


def _mismatch(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    """Why arrays of ``shapes`` do not match the global model's; empty when they match or share no name with it."""
    if not set(shapes) & set(expected):
        return ""
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [f"{k}: {shapes[k]} instead of {expected[k]}" for k in shapes
             if k in expected and tuple(shapes[k]) != tuple(expected[k])]
    if missing or extra or wrong:
        return (f"its update does not match the global model (missing {missing[:3]}, "
                f"unexpected {extra[:3]}, shapes {wrong[:3]})")
    return ""


def check_finite(server_round: int, arrays: ArrayRecord, lr: float | None) -> None:
    """Raise :class:`DivergenceError` naming the round if ``arrays`` hold NaN or Inf."""
    bad = nonfinite_keys(arrays)
    if bad:
        hint = f" (train.lr = {lr:g})" if lr is not None else ""
        raise DivergenceError(
            f"round {server_round}: the global model has NaN or infinite values in {len(bad)} of "
            f"{len(list(arrays.keys()))} arrays ({', '.join(bad[:3])}) after aggregation: the run diverged. "
            f"Likely cause: a learning rate too high for this model{hint}, or a strategy setting "
            "(e.g. a server learning rate) that amplifies updates; lower it and run again"
        )


def check_success(server_round: int, replies: list[ClientReply], needed_fraction: float) -> None:
    """Raise :class:`TooFewClientsError`, naming each failure, when too few of ``replies`` succeeded."""
    ok = sum(r.ok for r in replies)
    needed = int(np.ceil(needed_fraction * len(replies)))
    if ok < max(needed, 1):
        by_reason: dict[str, list[int]] = {}
        for r in sorted(replies, key=lambda r: r.client_id):
            if not r.ok:
                by_reason.setdefault(r.error, []).append(r.client_id)
        errors = "; ".join(f"client{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids[:20]))}"
                           f"{' ...' if len(ids) > 20 else ''}: {reason}" for reason, ids in by_reason.items())
        raise TooFewClientsError(
            f"round {server_round}: only {ok} of {len(replies)} sampled clients succeeded "
            f"(train.min_success_fraction = {needed_fraction} needs {needed}). "
            f"Failures: {errors[:2000]}. Each failure is in clients.csv; to go on with fewer clients, lower "
            "train.min_success_fraction"
        )
