"""Dataset sources and the .npy cache: npz files, synthetic data, class subsets, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.datasets.settings import DataSettings
from fedsim.datasets import DatasetError, make_synthetic, materialize


def write_npz(path: Path, n_train: int = 60, n_test: int = 20, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    np.savez_compressed(
        path,
        x_train=rng.integers(0, 256, size=(n_train, 32, 32, 3), dtype=np.uint8),
        y_train=(np.arange(n_train) % classes).astype(np.uint8),
        x_test=rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8),
        y_test=(np.arange(n_test) % classes).astype(np.uint8),
    )


def test_npz_is_cached_as_memory_mapped_npy(tmp_path: Path) -> None:
    write_npz(tmp_path / "mini.npz")
    data = DataSettings(dataset="npz", data_dir=str(tmp_path), path="mini.npz", cache_dir=str(tmp_path / "cache"))
    cached = materialize(data)
    assert cached.num_train == 60 and cached.num_test == 20 and cached.num_classes == 10
    assert cached.class_names[3] == "cat"
    arrays = cached.load()
    assert isinstance(arrays["x_train"], np.memmap) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_train"].dtype == np.int64
    assert len(cached.mean) == 3 and all(0 < s < 1 for s in cached.std)
    # second call reuses the cache folder
    assert materialize(data).folder == cached.folder


def test_class_subset_relabels(tmp_path: Path) -> None:
    write_npz(tmp_path / "mini.npz")
    data = DataSettings(dataset="npz", data_dir=str(tmp_path), path="mini.npz", classes=[5, 3],
                      cache_dir=str(tmp_path / "cache"))
    cached = materialize(data)
    arrays = cached.load()
    assert cached.class_names == ("dog", "cat")
    assert set(np.unique(arrays["y_train"])) == {0, 1}
    assert cached.num_train == 12  # 6 dogs + 6 cats among 60 round-robin labels
    bad = DataSettings(dataset="npz", data_dir=str(tmp_path), path="mini.npz", classes=[3, 12],
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match=r"ids \[12\] do not exist; this dataset has classes 0..9"):
        materialize(bad)


def test_missing_and_corrupt_npz_say_where_they_looked(tmp_path: Path) -> None:
    missing = DataSettings(dataset="npz", data_dir=str(tmp_path), path="nope.npz", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match=f"npz dataset not found at {tmp_path}/nope.npz"):
        materialize(missing)
    (tmp_path / "corrupt.npz").write_bytes(b"this is not a zip archive")
    corrupt = DataSettings(dataset="npz", data_dir=str(tmp_path), path="corrupt.npz", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match="not a readable .npz archive"):
        materialize(corrupt)
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    partial = DataSettings(dataset="npz", data_dir=str(tmp_path), path="partial.npz", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match=r"lacks the arrays \['x_test', 'y_test', 'y_train'\]"):
        materialize(partial)
    assert not any((tmp_path / "c").glob("npz-*")), "a failed load leaves no cache entry"


def test_missing_cifar_without_download_explains_how_to_get_it(tmp_path: Path) -> None:
    data = DataSettings(dataset="cifar10", data_dir=str(tmp_path), download=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError) as info:
        materialize(data)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.download = true" in message and "npz" in message


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    a = make_synthetic(500, 100, 5, noise=0.6, seed=0)
    b = make_synthetic(500, 100, 5, noise=0.6, seed=0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape == (500, 32, 32, 3) and a.x_train.dtype == np.uint8
    assert np.bincount(a.y_train).tolist() == [100] * 5
    # nearest class mean separates classes far above chance: the data carries label signal
    x = a.x_train.reshape(500, -1).astype(np.float64)
    means = np.stack([x[a.y_train == k].mean(0) for k in range(5)])
    xt = a.x_test.reshape(100, -1).astype(np.float64)
    predicted = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == a.y_test).mean() > 0.6
