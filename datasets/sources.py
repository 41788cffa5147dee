"""Dataset sources: CIFAR-10/100 (torchvision folders), a generic ``.npz`` file, synthetic data.

Every source returns an :class:`ImageArrays`: uint8 HWC images and int64 labels for the
train and test splits. Sources are read once; :mod:`fedsim.datasets.cache` then stores them
as ``.npy`` files that worker processes memory-map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.inputs import ArraySpec, InputFileError, read_archive

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class DatasetError(InputFileError, RuntimeError):
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


NPZ_ARRAYS = (
    ArraySpec("x_train", "uifb"),  # the layout and dtype: _as_hwc_uint8
    ArraySpec("y_train", "uif"),  # integer class ids: _as_labels, check_labels
    ArraySpec("x_test", "uifb"),
    ArraySpec("y_test", "uif"),
    ArraySpec("class_names", ndims=(1,), required=False),
)


def load_npz(path: Path) -> ImageArrays:
    """Read ``x_train, y_train, x_test, y_test`` (HWC uint8 images) from an ``.npz`` file.

    :func:`fedsim.inputs.read_archive` opens it (never with pickle) and names the file and the array of
    a problem; the image layout and the labels are checked here.
    """
    if not path.exists():
        raise DatasetError(
            f"npz dataset not found at {path}. Set data.path to a .npz file holding "
            "x_train, y_train, x_test, y_test (e.g. the real CIFAR-10 copy cifar10.npz) and "
            "data.data_dir / $FEDSIM_DATA_DIR to its folder.", path=path
        )
    arrays = read_archive(path, NPZ_ARRAYS, "npz dataset", DatasetError)
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    x_train = _as_hwc_uint8(arrays["x_train"], f"{path}:x_train")
    x_test = _as_hwc_uint8(arrays["x_test"], f"{path}:x_test")
    y_train = _as_labels(arrays["y_train"], f"{path}:y_train")
    y_test = _as_labels(arrays["y_test"], f"{path}:y_test")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{path}: image and label counts differ (x_train {len(x_train)}, y_train {len(y_train)}, "
                           f"x_test {len(x_test)}, y_test {len(y_test)})", path=path)
    num_classes = check_labels(y_train, y_test, names, str(path))
    if names is None:
        names = list(CIFAR10_CLASSES) if num_classes == 10 else [str(i) for i in range(num_classes)]
    return ImageArrays(x_train, y_train, x_test, y_test, names)


def _as_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64, refusing non-integer values (e.g. 1.5, or one-hot rows)."""
    y = np.asarray(y)
    if y.ndim > 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DatasetError(f"{where}: labels must be one class id per image, got shape {y.shape} "
                           "(one-hot labels? store their argmax)")
    y = y.reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DatasetError(f"{where}: labels must be integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


def check_labels(y_train: np.ndarray, y_test: np.ndarray, names: list[str] | None, where: str) -> int:
    """The number of classes C, after checking every label is a class id in 0..C-1.

    With ``class_names`` stored in the file, C is their number. Without, C is the largest label
    + 1 and every id in 0..C-1 must occur in the training labels: a label such as 255 (an
    "ignore" marker) or -1 would otherwise silently create classes that do not exist.
    """
    labels = np.concatenate([y_train, y_test])
    if len(labels) == 0:
        raise DatasetError(f"{where}: no labels")
    if names is not None:
        allowed = len(names)
        bad = np.unique(labels[(labels < 0) | (labels >= allowed)])
        if len(bad):
            raise DatasetError(f"{where}: labels {bad[:5].tolist()} are outside 0..{allowed - 1} "
                               f"(the file names {allowed} classes)")
        return allowed
    negative = np.unique(labels[labels < 0])
    if len(negative):
        raise DatasetError(f"{where}: labels {negative[:5].tolist()} are negative; class ids are 0..C-1")
    count = int(labels.max()) + 1
    missing = np.setdiff1d(np.arange(count), np.unique(y_train))
    if len(missing):
        raise DatasetError(
            f"{where}: labels run up to {count - 1}, but ids {missing[:5].tolist()}"
            f"{' ...' if len(missing) > 5 else ''} never occur in y_train, so they are not classes "
            f"(e.g. 255 or -1 used as an 'ignore' marker?). Class ids must be 0..C-1; if the dataset "
            "really has classes without training samples, store their names as class_names in the .npz")
    return count


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
