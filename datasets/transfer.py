"""Transfer sets and per-client test views for federated distillation (``docs/methods.md``).

* The transfer set is held out of the training set **before** partitioning, so it is disjoint
  from every client's private data by construction (and :func:`check_disjoint` proves it).
  ``classes`` restricts the hold-out to some classes (a class-subset transfer set).
* A transfer set taken from another dataset (``latent_distill.transfer_dataset``) is checked by
  content: :func:`shared_images` counts its images that are, byte for byte, also clients' images,
  so the clients' own file under another name is caught as well as the same file.
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


def image_hashes(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A 64-bit hash of the bytes of each image ``images[i]``, ``i`` in ``indices`` (int64).

    Python's own hash of the image's bytes (SipHash): the fastest exact-content hash at hand
    (about 0.2 s for CIFAR-10's 50,000 training images, read image by image from a memory map
    without copying the set). Its values differ between processes; compare them within one call.
    """
    return np.fromiter((hash(images[i].tobytes()) for i in indices), dtype=np.int64, count=len(indices))


def shared_images(transfer: np.ndarray, transfer_indices: np.ndarray, private: np.ndarray,
                  private_indices: np.ndarray) -> int:
    """How many of the images ``transfer[transfer_indices]`` equal, byte for byte, one of ``private[private_indices]``.

    Hashes find the candidates (``np.isin`` of two hash arrays), and each candidate is compared with
    the images of its hash, so a hash collision is never counted. Images of another shape or
    type are never equal.
    """
    if transfer.shape[1:] != private.shape[1:] or transfer.dtype != private.dtype:
        return 0
    transfer_indices, private_indices = np.asarray(transfer_indices), np.asarray(private_indices)
    mine, theirs = image_hashes(transfer, transfer_indices), image_hashes(private, private_indices)
    candidates = np.flatnonzero(np.isin(mine, theirs))
    if not len(candidates):
        return 0
    by_hash: dict[int, list[int]] = {}
    for position in np.flatnonzero(np.isin(theirs, mine[candidates])):
        by_hash.setdefault(int(theirs[position]), []).append(int(private_indices[position]))
    return sum(any(np.array_equal(transfer[transfer_indices[c]], private[i]) for i in by_hash[int(mine[c])])
               for c in candidates)
