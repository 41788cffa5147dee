"""Datasets, partitioners and partition statistics (imported as ``fedsim.datasets``)."""

from .cache import CachedDataset, dataset_digest, materialize, resolve_cache_dir, resolve_data_dir
from .partitioners import (
    Partition,
    PartitionError,
    build_partition,
    dirichlet,
    dirichlet_per_client,
    iid,
    quantity,
    shards,
    split_train_val,
)
from .settings import (
    DATASET_NAMES,
    PARTITION_SCHEMES,
    SCHEMES,
    DataSettings,
    PartitionSettings,
    check_data,
    check_partition,
    check_partition_for_dataset,
)
from .sources import DatasetError, ImageArrays, load_cifar, load_npz, make_synthetic, select_classes
from .transfer import check_disjoint, holdout_transfer, tpriv_indices
from .statistics import counts_frame, format_summary, heatmap_figure, plot_heatmap, summary

__all__ = [
    "DATASET_NAMES", "PARTITION_SCHEMES", "SCHEMES", "DataSettings", "PartitionSettings", "check_data",
    "check_partition", "check_partition_for_dataset",
    "CachedDataset", "DatasetError", "ImageArrays", "dataset_digest", "Partition", "PartitionError",
    "build_partition", "counts_frame", "dirichlet", "dirichlet_per_client", "format_summary",
    "heatmap_figure", "iid", "load_cifar", "load_npz", "make_synthetic", "materialize", "plot_heatmap",
    "quantity", "resolve_cache_dir", "resolve_data_dir", "select_classes", "shards",
    "split_train_val", "summary", "check_disjoint", "holdout_transfer", "tpriv_indices",
]
