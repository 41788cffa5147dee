"""Arithmetic on ``ArrayRecord``s: the dtype-preserving weighted mean and the finiteness check.

Depends on :mod:`fedsim.core.stack` only (the weighted mean is the stacked one). fedsim's
averaging strategies aggregate with it, and a cohort worker that streams (``executor.streaming``) sums its clients' models with it before replying. Clients
check their own update with :func:`nonfinite_keys` (so a streaming worker never sums a NaN),
and the round loop checks every update it receives and the new global model with it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from .stack import stack_of_records, weighted_mean


_NPY_MAGIC = b"\x93NUMPY"


def flat_values(array: Array) -> np.ndarray:
    """An ``Array``'s values as a flat read-only view, without ``np.load``'s header parsing.

    Flower stores an array as ``.npy`` bytes; parsing that header costs ~30 us per array, which
    adds up when every update of every client is checked. The values start right after it (its
    length is in bytes 8-9, or 8-11 from format version 2), so a view is taken there; any other
    encoding falls back to ``Array.numpy()``.
    """
    data = array.data
    if isinstance(data, bytes) and data[:6] == _NPY_MAGIC and array.dtype:
        major = data[6]
        size = 2 if major == 1 else 4
        start = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
        try:
            return np.frombuffer(data, dtype=np.dtype(array.dtype), offset=start)
        except (TypeError, ValueError):
            pass
    return array.numpy().reshape(-1)


def nonfinite_keys(arrays: ArrayRecord) -> list[str]:
    """Names of the floating-point arrays in ``arrays`` holding NaN or infinite values."""
    bad = []
    for key in arrays.keys():
        values = flat_values(arrays[key])
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            bad.append(key)
    return bad


def nonfinite_update(keys: list[str]) -> str:
    """Why an update with non-finite ``keys`` is refused (one wording for clients and server)."""
    return f"its update has NaN or infinite values (in {', '.join(keys[:3])}): local training diverged"


def aggregate_arrays(records: list[ArrayRecord], weights: np.ndarray | list[float]) -> ArrayRecord:
    """Weighted mean of ArrayRecords with weights normalised to sum 1; dtypes are preserved.

    The per-client path of :func:`fedsim.core.stack.weighted_mean` (one rule for both): the
    records are stacked, then averaged client by client in the order given.
    """
    if len(records) != len(weights) or not len(records):
        raise ValueError(f"need one weight per record, got {len(weights)} weights for {len(records)} records")
    return weighted_mean(stack_of_records(records).views(), weights)
