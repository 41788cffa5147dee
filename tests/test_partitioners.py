"""Partitioners: counts, determinism, the alpha limits, sizes, and flwr-datasets equivalence."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedsim.datasets import PartitionError, build_partition, dirichlet, split_train_val, summary


def labels_for(n: int = 5000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


SCHEMES = ["iid", "dirichlet", "dirichlet-per-client", "shards", "quantity"]


def make(scheme: str, labels: np.ndarray, seed: int = 1, clients: int = 20, **kw):
    kw.setdefault("samples_per_client", 200)
    return build_partition(labels, 10, scheme, clients, seed, **kw)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_indices_are_disjoint_and_counts_match(scheme: str) -> None:
    labels = labels_for()
    part = make(scheme, labels)
    assert part.num_clients == 20
    flat = np.concatenate(part.indices)
    assert len(flat) == len(np.unique(flat)), "a sample was given to two clients"
    counts = part.counts(labels)
    assert counts.shape == (20, 10)
    assert counts.sum() == len(flat)
    np.testing.assert_array_equal(counts.sum(1), part.sizes)
    if scheme in ("iid", "dirichlet", "quantity"):
        assert len(flat) == len(labels), "these schemes use every sample"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition_other_seed_differs(scheme: str) -> None:
    labels = labels_for()
    a, b, c = make(scheme, labels, seed=3), make(scheme, labels, seed=3), make(scheme, labels, seed=4)
    for x, y in zip(a.indices, b.indices):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(z) or not np.array_equal(x, z) for x, z in zip(a.indices, c.indices))


def test_large_alpha_is_close_to_iid_and_small_alpha_is_skewed() -> None:
    labels = labels_for(20000)
    near_iid = summary(make("dirichlet", labels, alpha=1e4, clients=10).counts(labels))
    skewed = summary(make("dirichlet", labels, alpha=0.05, clients=10, min_partition_size=0).counts(labels))
    assert near_iid["tv_from_global_mean"] < 0.03
    assert skewed["tv_from_global_mean"] > 0.5
    assert skewed["classes_per_client_mean"] < near_iid["classes_per_client_mean"]
    per_client_iid = summary(make("dirichlet-per-client", labels, alpha=1e4, clients=10).counts(labels))
    per_client_skew = summary(make("dirichlet-per-client", labels, alpha=0.05, clients=10).counts(labels))
    assert per_client_iid["tv_from_global_mean"] < 0.1
    assert per_client_skew["tv_from_global_mean"] > 0.5


def test_min_partition_size_is_respected_or_refused() -> None:
    labels = labels_for(2000)
    part = make("dirichlet", labels, alpha=0.3, clients=20, min_partition_size=30)
    assert part.sizes.min() >= 30
    with pytest.raises(PartitionError, match="min_partition_size = 500"):
        make("dirichlet", labels, alpha=0.1, clients=20, min_partition_size=500)


def test_per_client_convention_gives_fixed_n() -> None:
    labels = labels_for(5000)
    part = make("dirichlet-per-client", labels, alpha=0.1, clients=10, samples_per_client=400)
    assert (part.sizes == 400).all()
    with pytest.raises(PartitionError, match="exceeds"):
        make("dirichlet-per-client", labels, clients=10, samples_per_client=501)


def test_shards_give_each_client_c_classes() -> None:
    labels = labels_for(5000)
    part = make("shards", labels, clients=10, classes_per_client=2)
    per_client = (part.counts(labels) > 0).sum(1)
    assert (per_client == 2).all()
    with pytest.raises(PartitionError, match="classes_per_client = 11"):
        make("shards", labels, clients=10, classes_per_client=11)


def test_quantity_skew_keeps_labels_iid_but_sizes_vary() -> None:
    labels = labels_for(20000)
    part = make("quantity", labels, alpha=0.5, clients=10)
    stats = summary(part.counts(labels))
    assert stats["size_max"] > 2 * stats["size_min"]
    assert stats["tv_from_global_mean"] < 0.1


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(PartitionError, match="unknown partition scheme 'zipf'"):
        build_partition(labels_for(), 10, "zipf", 5, 0)


@pytest.mark.parametrize("balancing", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 5.0])
def test_dirichlet_matches_flwr_datasets(alpha: float, balancing: bool) -> None:
    hf_datasets = pytest.importorskip("datasets")
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = labels_for(3000, seed=7)
    reference = DirichletPartitioner(num_partitions=15, partition_by="label", alpha=alpha,
                                     min_partition_size=0, self_balancing=balancing, seed=42)
    reference.dataset = hf_datasets.Dataset.from_dict({"label": labels.tolist()})
    ours = dirichlet(labels, 15, alpha, seed=42, min_partition_size=0, self_balancing=balancing)
    for cid in range(15):
        theirs = np.asarray(reference.load_partition(cid)["label"])
        np.testing.assert_array_equal(labels[ours[cid]], theirs)
    assert reference._partition_id_to_indices is not None
    for cid in range(15):
        np.testing.assert_array_equal(ours[cid], np.asarray(reference._partition_id_to_indices[cid]))


def test_dirichlet_50k_into_1000_clients_is_fast() -> None:
    labels = labels_for(50000)
    start = time.perf_counter()
    part = make("dirichlet", labels, alpha=0.5, clients=1000, min_partition_size=0)
    elapsed = time.perf_counter() - start
    assert part.sizes.sum() == 50000
    # generous bound (noisy 2-core machine); the requirement is < 1 s
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


def test_train_val_split_is_seeded_and_disjoint() -> None:
    idx = np.arange(100, 200)
    train, val = split_train_val(idx, 0.2, seed=0, client_id=3)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val)
    again = split_train_val(idx, 0.2, seed=0, client_id=3)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_train_val(idx, 0.2, seed=0, client_id=4)[1])
