"""Decode a dataset once into uint8 ``.npy`` files that every process memory-maps.

Ray actors are separate processes. Handing them the dataset as memory-mapped ``.npy`` files
means one copy in the page cache shared by all workers, no pickling, and no per-round reads
(``docs/architecture.md``: data is read once per process). The cache directory is keyed by everything
that determines the arrays (source, file identity, class subset, synthetic parameters) and
is created atomically, so concurrent runs never see half-written files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .settings import DataSettings
from .sources import DatasetError, ImageArrays, load_cifar, load_npz, make_synthetic, select_classes

ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
SYNTHETIC_SEED = 0  # the synthetic dataset is fixed; the experiment seed drives everything else


def resolve_data_dir(data: DataSettings) -> Path:
    """``data.data_dir``, else ``$FEDSIM_DATA_DIR``, else ``./data``."""
    return Path(data.data_dir or os.environ.get("FEDSIM_DATA_DIR", "") or "data").expanduser()


def resolve_cache_dir(data: DataSettings) -> Path:
    """``data.cache_dir``, else ``$FEDSIM_CACHE_DIR``, else ``~/.cache/fedsim``."""
    default = Path.home() / ".cache" / "fedsim"
    return Path(data.cache_dir or os.environ.get("FEDSIM_CACHE_DIR", "") or default).expanduser()


def resolve_npz_path(data: DataSettings) -> Path:
    path = Path(data.path).expanduser()
    return path if path.is_absolute() else resolve_data_dir(data) / path


@dataclass(frozen=True)
class CachedDataset:
    """A dataset materialised in the cache: the folder and the statistics workers need."""

    folder: Path
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    mean: tuple[float, ...]  # per channel, on [0, 1]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the images (read from the cached array's header)."""
        return tuple(int(n) for n in np.load(self.folder / "x_train.npy", mmap_mode="r").shape[1:])  # type: ignore[return-value]

    def load(self, mmap: bool = True) -> dict[str, np.ndarray]:
        """The four arrays, memory-mapped read-only by default."""
        return {
            name: np.load(self.folder / f"{name}.npy", mmap_mode="r" if mmap else None)
            for name in ARRAY_NAMES
        }

    @classmethod
    def open(cls, folder: str | Path) -> "CachedDataset":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            folder=folder,
            class_names=tuple(meta["class_names"]),
            num_train=meta["num_train"],
            num_test=meta["num_test"],
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
        )


def _cache_key(data: DataSettings) -> tuple[str, dict[str, object]]:
    identity: dict[str, object] = {"dataset": data.dataset, "classes": list(data.classes)}
    if data.dataset == "synthetic":
        identity.update(
            train=data.synthetic_train, test=data.synthetic_test,
            num_classes=data.synthetic_classes, noise=data.synthetic_noise, seed=SYNTHETIC_SEED,
        )
    elif data.dataset == "npz":
        path = resolve_npz_path(data).resolve()
        if not path.is_file():
            load_npz(path)  # raises the explanatory DatasetError
        stat = path.stat()
        identity.update(path=str(path), size=stat.st_size, mtime=int(stat.st_mtime))
    else:
        identity.update(root=str(resolve_data_dir(data).resolve()))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{data.dataset}-{digest}", identity


def _read_source(data: DataSettings) -> ImageArrays:
    if data.dataset == "synthetic":
        arrays = make_synthetic(
            data.synthetic_train, data.synthetic_test, data.synthetic_classes,
            data.synthetic_noise, seed=SYNTHETIC_SEED,
        )
    elif data.dataset == "npz":
        arrays = load_npz(resolve_npz_path(data))
    elif data.dataset in ("cifar10", "cifar100"):
        arrays = load_cifar(data.dataset, resolve_data_dir(data), data.download)
    else:
        raise DatasetError(f"unknown dataset {data.dataset!r}")
    return select_classes(arrays, list(data.classes))


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    mean = np.zeros(channels)
    sq = np.zeros(channels)
    for start in range(0, len(flat), 1 << 22):  # chunked: no float copy of the whole set
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255.0
        mean += chunk.sum(0)
        sq += (chunk**2).sum(0)
    mean /= len(flat)
    std = np.sqrt(np.maximum(sq / len(flat) - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def _damage(folder: Path) -> str:
    """What is wrong with a cache folder ("" if nothing): unreadable files or sizes unlike its meta."""
    try:
        dataset = CachedDataset.open(folder)
        arrays = dataset.load()
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        return f"{type(error).__name__}: {error}"
    expected = {"x_train": dataset.num_train, "y_train": dataset.num_train,
                "x_test": dataset.num_test, "y_test": dataset.num_test}
    for name, length in expected.items():
        if len(arrays[name]) != length:
            return f"{name}.npy holds {len(arrays[name])} items, meta.json says {length}"
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        return "train and test images differ in shape"
    return ""


def materialize(data: DataSettings) -> CachedDataset:
    """Return the cached dataset, decoding the source into the cache on first use."""
    key, identity = _cache_key(data)
    cache_root = resolve_cache_dir(data)
    folder = cache_root / key
    if (folder / "meta.json").is_file():
        problem = _damage(folder)
        if not problem:
            return CachedDataset.open(folder)
        # a damaged cache (a truncated copy, a disk error, an edit) is decoded again, not trusted
        warnings.warn(f"dataset cache {folder} is damaged ({problem}); decoding the dataset again", stacklevel=2)
        aside = cache_root / f".{key}-damaged-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    arrays = _read_source(data)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    try:
        for name in ARRAY_NAMES:
            np.save(staging / f"{name}.npy", getattr(arrays, name))
        mean, std = _channel_stats(arrays.x_train)
        meta = {
            "identity": identity,
            "class_names": arrays.class_names,
            "num_train": len(arrays.y_train),
            "num_test": len(arrays.y_test),
            "mean": mean,
            "std": std,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CachedDataset.open(folder)


def dataset_digest(dataset: CachedDataset) -> str:
    """A fingerprint of a cached dataset's content: shapes, channel statistics and every label.

    Two processes with the same digest index the same samples with the same indices (the
    channel statistics depend on every pixel), so a node that prepared the dataset itself
    can be checked against the server's copy without sending the images.
    """
    arrays = dataset.load(mmap=True)
    digest = hashlib.sha256(json.dumps({
        "shapes": {name: list(arrays[name].shape) for name in ARRAY_NAMES},
        "mean": list(dataset.mean), "std": list(dataset.std),
    }, sort_keys=True).encode())
    for name in ("y_train", "y_test"):
        digest.update(np.ascontiguousarray(arrays[name], dtype=np.int64).tobytes())
    return digest.hexdigest()
