"""The ``[data]`` and ``[partition]`` settings and their rules, owned by the datasets package.

The experiment config (:mod:`fedsim.config`) uses these dataclasses as its ``[data]`` and
``[partition]`` sections; their :meth:`check` methods (and, once the dataset is loaded,
:func:`check_partition_for_dataset`) return the problems, each naming the key, the value and
what is allowed. Dataset names and partition schemes are registered here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedsim.settings import Section, problem, setting

DATASET_NAMES = ("synthetic", "cifar10", "cifar100", "npz")


@dataclass
class DataSettings(Section):
    """Where the images come from (``[data]``)."""

    dataset: str = setting("synthetic", "`synthetic`, `cifar10`, `cifar100` or `npz` (your own images)")
    data_dir: str = setting("", "dataset folder; `\"\"` = `$FEDSIM_DATA_DIR`, else `./data`")
    path: str = setting("", "`npz`: the `.npz` file with `x_train`, `y_train`, `x_test`, `y_test` "
                        "(relative to `data_dir`)")
    classes: list[int] = setting(help="keep only these class ids, relabelled 0..k-1 in the given order "
                                 "(`[]` = all)", factory=list)
    download: bool = setting(True, "let torchvision download CIFAR when its folder is absent")
    cache_dir: str = setting("", "where decoded datasets are cached as `.npy`; `\"\"` = `$FEDSIM_CACHE_DIR`, "
                             "else `~/.cache/fedsim`")
    synthetic_train: int = setting(2000, "`synthetic`: training images")
    synthetic_test: int = setting(500, "`synthetic`: test images")
    synthetic_classes: int = setting(10, "`synthetic`: classes")
    synthetic_noise: float = setting(0.6, "`synthetic`: noise around each class's pattern (higher is harder)")

    def check(self, prefix: str = "data") -> list[str]:
        return check_data(self, prefix)


def check_data(d: DataSettings, key: str = "data") -> list[str]:
    """Problems with ``[data]`` settings (``key`` prefixes the names in the messages)."""
    rules: list[tuple[bool, str, object, str]] = [
        (d.dataset in DATASET_NAMES, "dataset", d.dataset, f"allowed: {', '.join(DATASET_NAMES)}"),
        (d.dataset != "npz" or bool(d.path), "path", d.path,
         "dataset 'npz' needs data.path, the .npz file with x_train, y_train, x_test, y_test"),
        (all(k >= 0 for k in d.classes), "classes", d.classes, "class ids must be >= 0"),
        (len(set(d.classes)) == len(d.classes), "classes", d.classes, "class ids must be distinct"),
        (len(d.classes) != 1, "classes", d.classes, "keep at least 2 classes (or [] for all)"),
        (d.synthetic_train >= 1, "synthetic_train", d.synthetic_train, "must be >= 1"),
        (d.synthetic_test >= 1, "synthetic_test", d.synthetic_test, "must be >= 1"),
        (2 <= d.synthetic_classes <= 1000, "synthetic_classes", d.synthetic_classes, "must be between 2 and 1000"),
        (d.synthetic_noise >= 0, "synthetic_noise", d.synthetic_noise, "must be >= 0"),
    ]
    return [problem(f"{key}.{name}", value, allowed) for ok, name, value, allowed in rules if not ok]


@dataclass
class PartitionSettings(Section):
    """How training samples are split over clients (``[partition]``)."""

    scheme: str = setting("dirichlet", "`iid`, `dirichlet`, `dirichlet-per-client`, `shards` or `quantity`")
    num_clients: int = setting(10, "number of clients")
    alpha: float = setting(0.5, "Dirichlet concentration (`dirichlet`, `dirichlet-per-client`, `quantity`); "
                           "smaller is more skewed")
    min_partition_size: int = setting(10, "`dirichlet`, `quantity`: redraw until every client has this many "
                                      "samples")
    self_balancing: bool = setting(False, "`dirichlet`: flwr-datasets' self-balancing option")
    samples_per_client: int = setting(500, "`dirichlet-per-client`: samples per client")
    classes_per_client: int = setting(2, "`shards`: distinct classes per client")
    val_fraction: float = setting(0.1, "share of each client's samples held out for federated evaluation")

    def check(self, prefix: str = "partition") -> list[str]:
        return check_partition(self)


@dataclass(frozen=True)
class Scheme:
    """A partition scheme: its description and what it needs from the dataset."""

    summary: str
    dataset_rule: Callable[[PartitionSettings, int, int], list[str]] = lambda p, n, k: []


def _min_size_rule(p: PartitionSettings, num_train: int, num_classes: int) -> list[str]:
    if p.min_partition_size * p.num_clients <= num_train:
        return []
    return [problem("partition.min_partition_size", p.min_partition_size,
                    f"x {p.num_clients} clients exceeds the {num_train} training samples")]


def _per_client_rule(p: PartitionSettings, num_train: int, num_classes: int) -> list[str]:
    if p.samples_per_client * p.num_clients <= num_train:
        return []
    return [problem("partition.samples_per_client", p.samples_per_client,
                    f"x {p.num_clients} clients exceeds the {num_train} training samples")]


def _shards_rule(p: PartitionSettings, num_train: int, num_classes: int) -> list[str]:
    if p.classes_per_client <= num_classes:
        return []
    return [problem("partition.classes_per_client", p.classes_per_client,
                    f"must be <= the dataset's {num_classes} classes")]


SCHEMES: dict[str, Scheme] = {
    "iid": Scheme("a seeded shuffle cut into near-equal parts"),
    "dirichlet": Scheme("per class, proportions over clients ~ Dir(alpha)", _min_size_rule),
    "dirichlet-per-client": Scheme("per client, a class mix ~ Dir(alpha * prior), samples_per_client each",
                                   _per_client_rule),
    "shards": Scheme("classes_per_client distinct classes per client", _shards_rule),
    "quantity": Scheme("IID labels, client sizes ~ Dir(alpha)", _min_size_rule),
}
PARTITION_SCHEMES = tuple(SCHEMES)


def check_partition(p: PartitionSettings) -> list[str]:
    """Problems with ``[partition]`` settings that need no dataset."""
    rules: list[tuple[bool, str, object, str]] = [
        (p.scheme in SCHEMES, "scheme", p.scheme, f"allowed: {', '.join(PARTITION_SCHEMES)}"),
        (p.num_clients >= 1, "num_clients", p.num_clients, "must be >= 1"),
        (p.alpha > 0, "alpha", p.alpha, "must be > 0"),
        (p.min_partition_size >= 0, "min_partition_size", p.min_partition_size, "must be >= 0"),
        (p.samples_per_client >= 1, "samples_per_client", p.samples_per_client, "must be >= 1"),
        (p.classes_per_client >= 1, "classes_per_client", p.classes_per_client, "must be >= 1"),
        (0 <= p.val_fraction < 1, "val_fraction", p.val_fraction, "must be in [0, 1)"),
    ]
    return [problem(f"partition.{name}", value, allowed) for ok, name, value, allowed in rules if not ok]


def check_partition_for_dataset(p: PartitionSettings, num_train: int, num_classes: int) -> list[str]:
    """Problems that show only once the dataset's size and class count are known."""
    errors = [] if p.num_clients <= num_train else [
        problem("partition.num_clients", p.num_clients, f"must be <= the {num_train} training samples")]
    scheme = SCHEMES.get(p.scheme)
    return errors + (scheme.dataset_rule(p, num_train, num_classes) if scheme else [])
