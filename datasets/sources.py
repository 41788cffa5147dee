"""Dataset sources: CIFAR-10/100 (torchvision folders), a generic ``.npz`` file, synthetic data.

Every source returns an :class:`ImageArrays`: uint8 HWC images and int64 labels for the
train and test splits. Sources are read once; :mod:`fedsim.datasets.cache` then stores them
as ``.npy`` files that worker processes memory-map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import InputError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class DatasetError(InputError, RuntimeError):
    """The dataset is missing or unreadable; the message says where we looked and what to do."""


@dataclass
class ImageArrays:
    """Images as uint8 (N, H, W, C) arrays and labels as int64 (N,) arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _as_hwc_uint8(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:  # grayscale (N, H, W)
        x = x[..., None]
    if x.ndim != 4:
        raise DatasetError(f"{where}: images must have shape (N, H, W, C), got {x.shape}")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):  # NCHW -> NHWC
        x = np.transpose(x, (0, 2, 3, 1))
    if x.dtype != np.uint8:
        raise DatasetError(f"{where}: images must be uint8 in 0..255, got dtype {x.dtype}")
    return np.ascontiguousarray(x)


def load_npz(path: Path) -> ImageArrays:
    """Read ``x_train, y_train, x_test, y_test`` (HWC uint8 images) from an ``.npz`` file."""
    if not path.is_file():
        raise DatasetError(
            f"npz dataset not found at {path}. Set data.path to a .npz file holding "
            "x_train, y_train, x_test, y_test (e.g. the real CIFAR-10 copy cifar10.npz) and "
            "data.data_dir / $FEDSIM_DATA_DIR to its folder."
        )
    try:
        with np.load(path) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise DatasetError(
                    f"{path} lacks the arrays {sorted(missing)}; it must hold "
                    "x_train, y_train, x_test, y_test"
                )
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else None
    except DatasetError:
        raise
    except Exception as err:  # zip/pickle errors of a corrupt file
        raise DatasetError(f"{path} is not a readable .npz archive ({err}); re-create or re-copy it") from err
    x_train = _as_hwc_uint8(arrays["x_train"], f"{path}:x_train")
    x_test = _as_hwc_uint8(arrays["x_test"], f"{path}:x_test")
    y_train = arrays["y_train"].astype(np.int64).reshape(-1)
    y_test = arrays["y_test"].astype(np.int64).reshape(-1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{path}: image and label counts differ")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if names is None:
        names = list(CIFAR10_CLASSES) if num_classes == 10 else [str(i) for i in range(num_classes)]
    return ImageArrays(x_train, y_train, x_test, y_test, names)


def load_cifar(name: str, root: Path, download: bool) -> ImageArrays:
    """CIFAR-10/100 through torchvision's loaders (``cifar-10-batches-py``, ``cifar-100-python``)."""
    from torchvision import datasets as tv_datasets  # heavy import, only when needed

    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(
            f"{name} not found or corrupt under {root / folder} ({err}). Either put the "
            f"extracted '{folder}' folder there, set data.data_dir / $FEDSIM_DATA_DIR to its "
            "parent, allow data.download = true with a network connection, or use "
            "dataset = 'npz' with a local .npz copy."
        ) from err
    except OSError as err:  # network failures while downloading
        raise DatasetError(
            f"{name} is not under {root / folder} and downloading it failed ({err}). Without a "
            f"network, copy the '{folder}' folder there or use dataset = 'npz'."
        ) from err
    return ImageArrays(
        x_train=np.ascontiguousarray(train.data, dtype=np.uint8),
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.ascontiguousarray(test.data, dtype=np.uint8),
        y_test=np.asarray(test.targets, dtype=np.int64),
        class_names=list(train.classes),
    )


def make_synthetic(
    num_train: int, num_test: int, num_classes: int, noise: float, seed: int, size: int = 32
) -> ImageArrays:
    """A learnable CIFAR-shaped dataset: one smooth random colour pattern per class plus noise.

    Each class prototype is a low-frequency pattern (a 4x4 random grid upsampled to
    ``size`` x ``size``); a sample is its class prototype scaled by a random contrast, shifted by
    a random brightness and blurred by Gaussian pixel noise of std ``noise`` (relative to the
    prototype's range). Small CNNs separate the classes within a few epochs, so tests can
    check that accuracy rises above chance.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, size=(num_classes, 4, 4, 3))
    reps = size // 4
    prototypes = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        contrast = rng.uniform(0.7, 1.3, size=(n, 1, 1, 1))
        brightness = rng.uniform(-0.2, 0.2, size=(n, 1, 1, 1))
        pixels = prototypes[labels] * contrast + brightness
        pixels += rng.normal(0.0, noise, size=pixels.shape)
        images = np.clip((pixels + 1.5) / 3.0 * 255.0, 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return ImageArrays(x_train, y_train, x_test, y_test, [f"class{i}" for i in range(num_classes)])


def select_classes(arrays: ImageArrays, classes: list[int]) -> ImageArrays:
    """Keep only ``classes`` (original ids), relabelled 0..k-1 in the order given."""
    if not classes:
        return arrays
    bad = [c for c in classes if c >= arrays.num_classes]
    if bad:
        raise DatasetError(
            f"data.classes = {classes}: ids {bad} do not exist; this dataset has classes "
            f"0..{arrays.num_classes - 1}"
        )
    lookup = np.full(arrays.num_classes, -1, dtype=np.int64)
    lookup[np.asarray(classes)] = np.arange(len(classes))

    def keep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = lookup[y] >= 0
        return np.ascontiguousarray(x[mask]), lookup[y[mask]]

    x_train, y_train = keep(arrays.x_train, arrays.y_train)
    x_test, y_test = keep(arrays.x_test, arrays.y_test)
    return ImageArrays(x_train, y_train, x_test, y_test, [arrays.class_names[c] for c in classes])
