"""Seeded label partitioners: client id -> sample indices, plus the client x class count matrix.

Conventions (``docs/methods.md``, "Partition schemes"):

* ``dirichlet`` -- the per-class convention of NIID-Bench and flwr-datasets'
  ``DirichletPartitioner``: for each class, its samples are split over the N clients with
  proportions drawn from Dir(alpha * 1_N). ``min_partition_size`` resamples (at most 10
  times, as flwr-datasets does) and ``self_balancing`` stops giving samples to clients that
  already hold more than the average. With the same seed, the assignment is identical to
  flwr-datasets' (tested).
* ``dirichlet-per-client`` -- Hsu et al. 2019 / Schmitt's latent-distillation code: each client draws a class mix
  q ~ Dir(alpha * p) (p = the class prior) and then ``samples_per_client`` samples by class
  according to q, without replacement across clients. When a class runs out, the client's
  remaining draws go to its other classes in proportion to q (the "renormalise over
  available classes" resolution).
* ``shards`` -- NIID-Bench's ``noniid-#label{C}``: client i always gets class i mod K plus
  C-1 other distinct random classes; each class is split evenly over the clients holding it.
* ``quantity`` -- NIID-Bench's ``iid-diff-quantity``: IID labels, client sizes ~ Dir(alpha).
* ``iid`` -- a seeded shuffle cut into near-equal parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.errors import InputError

from .settings import PARTITION_SCHEMES


class PartitionError(InputError):
    """The requested partition cannot be built from this dataset."""


@dataclass
class Partition:
    """Per-client sample indices into the training set and the client x class counts."""

    indices: list[np.ndarray]
    num_classes: int

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(i) for i in self.indices], dtype=np.int64)

    def counts(self, labels: np.ndarray) -> np.ndarray:
        """(num_clients, num_classes) matrix of label counts."""
        out = np.zeros((self.num_clients, self.num_classes), dtype=np.int64)
        for cid, idx in enumerate(self.indices):
            out[cid] = np.bincount(labels[idx], minlength=self.num_classes)
        return out


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle all indices and cut them into ``num_clients`` near-equal parts."""
    rng = np.random.default_rng(seed)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    shuffle: bool = True,
    max_tries: int = 10,
) -> list[np.ndarray]:
    """Per-class Dirichlet split, step for step the algorithm of flwr-datasets 0.5/0.6.

    The random stream (one ``default_rng(seed)``, a Dirichlet draw per class in sorted class
    order, then one in-place shuffle per client) matches ``DirichletPartitioner`` so that the
    same seed gives the same partition; the arithmetic is vectorised.
    """
    rng = np.random.default_rng(seed)
    alphas = np.full(num_clients, float(alpha))
    classes = np.unique(labels)
    by_class = [np.nonzero(labels == k)[0] for k in classes]
    average = len(labels) / num_clients
    for attempt in range(max_tries + 1):  # redraw (continuing the stream) until every client has enough
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx_k in by_class:
            proportions = rng.dirichlet(alphas)
            if self_balancing:  # clients already above the average get nothing more of this class
                proportions = np.where(sizes > average, 0.0, proportions)
                proportions = proportions / proportions.sum()
            cuts = (np.cumsum(proportions) * len(idx_k)).astype(int)[:-1]  # flwr-datasets' rounding, exactly
            for cid, piece in enumerate(np.split(idx_k, cuts)):
                if len(piece):
                    parts[cid].append(piece)
                    sizes[cid] += len(piece)
        if sizes.min() >= min_partition_size:
            break
        if attempt == max_tries:
            raise PartitionError(
                f"dirichlet partition: after {max_tries + 1} draws some client still had fewer "
                f"than partition.min_partition_size = {min_partition_size} samples "
                f"(smallest: {sizes.min()}); raise partition.alpha, lower "
                "partition.min_partition_size or use fewer clients"
            )
    out = []
    for pieces in parts:
        idx = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        if shuffle:
            rng.shuffle(idx)
        out.append(idx.astype(np.int64))
    return out


def dirichlet_per_client(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    samples_per_client: int,
    seed: int,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Hsu et al.: q_c ~ Dir(alpha * prior), then ``samples_per_client`` samples drawn by q_c."""
    num_classes = num_classes or int(labels.max()) + 1
    if samples_per_client * num_clients > len(labels):
        raise PartitionError(
            f"dirichlet-per-client: {num_clients} clients x {samples_per_client} samples "
            f"exceeds the {len(labels)} training samples"
        )
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.nonzero(labels == k)[0]) for k in range(num_classes)]
    taken = np.zeros(num_classes, dtype=np.int64)
    prior = np.array([len(p) for p in pools], dtype=np.float64)
    prior /= prior.sum()
    concentration = np.maximum(alpha * prior * num_classes, 1e-12)
    out = []
    for _ in range(num_clients):
        q = rng.dirichlet(concentration)
        if not np.all(np.isfinite(q)):  # numpy returns NaN for tiny alpha: one class
            q = np.zeros(num_classes)
            q[rng.integers(num_classes)] = 1.0
        want = np.zeros(num_classes, dtype=np.int64)
        remaining = samples_per_client
        while remaining > 0:
            available = np.array([len(p) for p in pools]) - taken - want
            weights = np.where(available > 0, q, 0.0)
            if weights.sum() <= 0:  # the client's classes ran out: fall back to the prior
                weights = np.where(available > 0, prior, 0.0)
            draw = rng.multinomial(remaining, weights / weights.sum())
            draw = np.minimum(draw, available)
            want += draw
            remaining -= int(draw.sum())
        chosen = [pools[k][taken[k] : taken[k] + want[k]] for k in range(num_classes)]
        taken += want
        out.append(rng.permutation(np.concatenate(chosen)).astype(np.int64))
    return out


def shards(
    labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """NIID-Bench ``#C``: each client holds ``classes_per_client`` distinct classes."""
    num_classes = num_classes or int(labels.max()) + 1
    if classes_per_client > num_classes:
        raise PartitionError(
            f"shards: classes_per_client = {classes_per_client} exceeds the {num_classes} classes"
        )
    rng = np.random.default_rng(seed)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for cid in range(num_clients):
        first = cid % num_classes
        others = rng.permutation([k for k in range(num_classes) if k != first])
        for k in [first, *others[: classes_per_client - 1].tolist()]:
            holders[k].append(cid)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k, clients in enumerate(holders):
        if not clients:
            continue  # as in NIID-Bench, a class nobody holds is left out
        idx_k = rng.permutation(np.nonzero(labels == k)[0])
        for cid, piece in zip(clients, np.array_split(idx_k, len(clients))):
            parts[cid].append(piece)
    return [rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts]


def quantity(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_partition_size: int = 10,
    max_tries: int = 10000,
) -> list[np.ndarray]:
    """NIID-Bench quantity skew: IID labels, client sizes proportional to Dir(alpha * 1_N)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    for _ in range(max_tries):
        proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
        if (proportions * len(labels)).min() >= min_partition_size:
            break
    else:
        raise PartitionError(
            f"quantity partition: no Dir({alpha}) draw in {max_tries} gave every client at "
            f"least partition.min_partition_size = {min_partition_size} samples; raise alpha "
            "or lower min_partition_size"
        )
    cuts = (np.cumsum(proportions) * len(labels)).astype(int)[:-1]
    return [np.sort(p).astype(np.int64) for p in np.split(order, cuts)]


def build_partition(
    labels: np.ndarray,
    num_classes: int,
    scheme: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    samples_per_client: int = 500,
    classes_per_client: int = 2,
) -> Partition:
    """Dispatch on ``scheme`` (see the module docstring) and wrap the result."""
    labels = np.asarray(labels, dtype=np.int64)
    if num_clients > len(labels):
        raise PartitionError(f"{num_clients} clients exceed the {len(labels)} samples")
    if scheme == "iid":
        indices = iid(labels, num_clients, seed)
    elif scheme == "dirichlet":
        indices = dirichlet(labels, num_clients, alpha, seed, min_partition_size, self_balancing)
    elif scheme == "dirichlet-per-client":
        indices = dirichlet_per_client(labels, num_clients, alpha, samples_per_client, seed, num_classes)
    elif scheme == "shards":
        indices = shards(labels, num_clients, classes_per_client, seed, num_classes)
    elif scheme == "quantity":
        indices = quantity(labels, num_clients, alpha, seed, min_partition_size)
    else:
        raise PartitionError(f"unknown partition scheme {scheme!r}; allowed: {', '.join(PARTITION_SCHEMES)}")
    return Partition(indices=indices, num_classes=num_classes)


def split_train_val(indices: np.ndarray, val_fraction: float, seed: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``val_fraction`` of a client's samples (seeded by ``(seed, client_id)``)."""
    if val_fraction <= 0 or len(indices) < 2:
        return indices, indices[:0]
    rng = np.random.default_rng([seed, client_id, 0x5A1])
    order = rng.permutation(len(indices))
    n_val = max(1, int(round(len(indices) * val_fraction)))
    n_val = min(n_val, len(indices) - 1)
    return indices[np.sort(order[n_val:])], indices[np.sort(order[:n_val])]
