"""One run's resources inside a worker process: the run's data, partition and models, loaded once.

A Ray actor serves many messages over a run. The first message of a run opens it
(:meth:`WorkerRun.open`: the run's ``spec.json``, the memory-mapped dataset cache,
``partition.npz``); every later message reuses it, and the behaviour configured per client
(:mod:`fedsim.clients.behaviours`) comes from the spec too. Models are built once per
(architecture, classes, r) and receive new weights in place. Which run a process holds, and
when it lets it go, is the process owner's business (:class:`fedsim.clients.process.WorkerProcess`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedsim.datasets import CachedDataset
from fedsim.models import FedsimNet, build_model
from fedsim.core.spec import TRANSFER_FILE, PartitionIndex, RunSpec, TransferIndex, resolve_device

from .behaviours import BehaviourSpec, ClientBehaviours
from .hooks import build_hooks
from .state import ClientStateStore
from .training import seeded_generator, seeded_init, to_tensor


@dataclass
class WorkerRun:
    """One run's resources inside one worker process."""

    spec: RunSpec
    run_dir: Path  # this process's copy of the run directory (a node with its own data has its own)
    x_train: np.ndarray  # memory-mapped uint8 (N, H, W, C)
    y_train: np.ndarray
    partition: PartitionIndex
    device: torch.device
    models: dict[tuple[str, int, int], FedsimNet] = field(default_factory=dict)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    transfer: TransferIndex | None = None
    stores: dict[str, ClientStateStore] = field(default_factory=dict)  # per-client state, one store per method
    hooks: list = field(default_factory=list)  # the run's client hooks, built once per worker
    behaviours: ClientBehaviours = field(default_factory=ClientBehaviours)  # configured per-client behaviour

    @classmethod
    def open(cls, run_dir: str | Path) -> WorkerRun:
        """Open the run whose files are in ``run_dir`` (this process's copy): spec, data, partition, hooks."""
        spec = RunSpec.load(run_dir)
        arrays = CachedDataset.open(spec.dataset_folder).load(mmap=True)
        return cls(
            spec=spec,
            x_train=arrays["x_train"],
            y_train=np.asarray(arrays["y_train"]),
            partition=PartitionIndex.load(run_dir),
            device=resolve_device(spec.device),
            transfer=TransferIndex.load(run_dir) if (Path(run_dir) / TRANSFER_FILE).is_file() else None,
            run_dir=Path(run_dir),
            hooks=build_hooks(list(spec.hooks)),
            behaviours=ClientBehaviours(BehaviourSpec.from_json(raw) for raw in spec.behaviours),
        )

    def model(self, name: str | None = None) -> FedsimNet:
        """The cached model instance for ``name`` (default: the run's model)."""
        key = (name or self.spec.model, self.spec.num_classes, self.spec.representation_dim)
        if key not in self.models:
            in_channels = int(self.x_train.shape[-1])
            self.models[key] = build_model(key[0], key[1], key[2], in_channels).to(self.device)
        return self.models[key]


    def normalized(self, name: str, load: Callable[[], tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images/labels as device tensors, read (``load()``) and built once per worker under ``name``."""
        if name not in self.tensors:
            images, labels = load()
            x = to_tensor(np.array(images), self.spec.mean, self.spec.std, self.device)
            y = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)
            self.tensors[name] = (x, y)
        return self.tensors[name]

    def transfer_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """latent-distill: the transfer set on the device (held-out training samples, or another
        dataset's images; their labels are only meaningful for a hold-out)."""
        idx = self.transfer.transfer

        def load() -> tuple[np.ndarray, np.ndarray]:
            if not self.transfer.source:
                return self.x_train[idx], self.y_train[idx]
            other = CachedDataset.open(self.transfer.source).load(mmap=True)
            return other["x_train"][idx], np.zeros(len(idx), dtype=np.int64)

        return self.normalized("transfer", load)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole test set on the device (T_uni)."""
        def load() -> tuple[np.ndarray, np.ndarray]:
            arrays = CachedDataset.open(self.spec.dataset_folder).load(mmap=True)
            return arrays["x_test"], arrays["y_test"]

        return self.normalized("test", load)

    def fresh_model(self, name: str) -> FedsimNet:
        """A newly initialised model (e.g. a hook's tiny committee member); seed it before calling."""
        return build_model(name, self.spec.num_classes, self.spec.representation_dim,
                           int(self.x_train.shape[-1])).to(self.device)

    def state_store(self, namespace: str) -> ClientStateStore:
        """The clients' persistent state of one method (``client_state/<namespace>/``), opened once."""
        if namespace not in self.stores:
            self.stores[namespace] = ClientStateStore(self.run_dir, namespace)
        return self.stores[namespace]

    def client_model(self, client_id: int, namespace: str) -> FedsimNet:
        """Client ``client_id``'s own persistent model, loaded from the method's store.

        A client seen for the first time starts from weights seeded by (seed, client id).
        """
        model = self.model(self.spec.architecture_of(client_id))
        state = self.state_store(namespace).load(client_id)
        if state is None:
            with seeded_init(seeded_generator(self.spec.seed, 0, client_id)):
                fresh = build_model(self.spec.architecture_of(client_id), self.spec.num_classes,
                                    self.spec.representation_dim, int(self.x_train.shape[-1]))
            state = fresh.state_dict()
        model.load_state_dict(state)
        return model
