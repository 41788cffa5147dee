"""Per-process worker state: the run's data, partition and models, loaded once and cached.

A Ray actor serves many messages over a run. The first message of a run makes this module
open the run's ``spec.json``, memory-map the cached dataset and read ``partition.npz``;
every later message reuses them. Models are built once per (architecture, classes, r) and
receive new weights in place (DESIGN.md: "models are built once per worker").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.datasets import CachedDataset
from fedsim.models import FedsimNet, build_model
from fedsim.spec import PartitionIndex, RunSpec, resolve_device

from .training import SGDRecipe


@dataclass
class WorkerRun:
    """One run's resources inside one worker process."""

    spec: RunSpec
    x_train: np.ndarray  # memory-mapped uint8 (N, H, W, C)
    y_train: np.ndarray
    partition: PartitionIndex
    device: torch.device
    models: dict[tuple[str, int, int], FedsimNet] = field(default_factory=dict)

    @property
    def recipe(self) -> SGDRecipe:
        s = self.spec
        return SGDRecipe(s.local_epochs, s.batch_size, s.lr, s.momentum, s.weight_decay)

    def model(self, name: str | None = None) -> FedsimNet:
        """The cached model instance for ``name`` (default: the run's model)."""
        key = (name or self.spec.model, self.spec.num_classes, self.spec.representation_dim)
        if key not in self.models:
            in_channels = int(self.x_train.shape[-1])
            self.models[key] = build_model(key[0], key[1], key[2], in_channels).to(self.device)
        return self.models[key]


_RUNS: dict[str, WorkerRun] = {}


def worker_run(run_dir: str) -> WorkerRun:
    """Return this process's cached :class:`WorkerRun` for ``run_dir``, opening it on first use."""
    cached = _RUNS.get(run_dir)
    if cached is not None:
        return cached
    spec = RunSpec.load(run_dir)
    arrays = CachedDataset.open(spec.dataset_folder).load(mmap=True)
    run = WorkerRun(
        spec=spec,
        x_train=arrays["x_train"],
        y_train=np.asarray(arrays["y_train"]),
        partition=PartitionIndex.load(run_dir),
        device=resolve_device(spec.device),
    )
    _RUNS.clear()  # one run at a time per worker: free the previous run's models
    _RUNS[run_dir] = run
    return run
