"""Transfer sets and per-client test views for federated distillation (``docs/methods.md``).

* The transfer set is held out of the training set **before** partitioning, so it is disjoint
  from every client's private data by construction (and :func:`check_disjoint` proves it).
  ``classes`` restricts the hold-out to some classes (a class-subset transfer set).
* T_priv for a client is a test subset with the client's class proportions (Schmitt's code's
  ``partition_by_dist``); T_uni is the whole test set.
"""

from __future__ import annotations

import numpy as np

from .partitioners import PartitionError


def holdout_transfer(labels: np.ndarray, size: int, seed: int, classes: list[int] | None = None) -> np.ndarray:
    """``size`` training indices (sorted), drawn uniformly from ``classes`` (default all), seeded."""
    pool = np.arange(len(labels)) if not classes else np.nonzero(np.isin(labels, classes))[0]
    if size > len(pool):
        raise PartitionError(f"latent_distill.transfer_size = {size}: only {len(pool)} training samples "
                             f"{'in classes ' + str(classes) if classes else ''} to hold out")
    rng = np.random.default_rng([seed, 0x7F])
    return np.sort(rng.choice(pool, size=size, replace=False)).astype(np.int64)


def check_disjoint(private: list[np.ndarray], transfer: np.ndarray) -> None:
    """Raise if any client's private indices overlap the transfer set."""
    transfer_set = set(transfer.tolist())
    for client_id, indices in enumerate(private):
        overlap = transfer_set.intersection(indices.tolist())
        if overlap:
            raise PartitionError(
                f"transfer set overlaps client {client_id}'s private data ({len(overlap)} samples, "
                f"e.g. index {min(overlap)}); the transfer set must be disjoint from every client"
            )


def tpriv_indices(test_labels: np.ndarray, class_counts: np.ndarray, size: int, seed: int,
                  client_id: int) -> np.ndarray:
    """A test subset of about ``size`` samples whose class proportions follow ``class_counts``.

    Per class k the client gets round(size * p_k) test samples (capped by what the test set has),
    drawn without replacement with a generator seeded by (seed, client id).
    """
    total = class_counts.sum()
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, client_id, 0x7E])
    want = np.rint(size * class_counts / total).astype(int)
    chosen = []
    for k, n in enumerate(want):
        if n <= 0:
            continue
        pool = np.nonzero(test_labels == k)[0]
        chosen.append(rng.choice(pool, size=min(n, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)
