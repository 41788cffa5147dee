"""The run specification shared by the server and the client workers.

The experiment runner writes two files into the run directory before the simulation
starts: ``spec.json`` (what a worker needs: dataset cache folder, normalisation, model,
the training recipe, seed, the behaviour configured per client) and ``partition.npz`` (each client's train/validation indices, flattened with
offsets). Worker processes read both once and cache them (:mod:`fedsim.clients.worker`);
messages then only carry the run directory's path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedsim.core.recipe import DistillRecipe, SGDRecipe

SPEC_FILE = "spec.json"
PARTITION_FILE = "partition.npz"
TRANSFER_FILE = "transfer.npz"  # latent-distill: transfer-set indices (train) and T_priv (test)
CONFIG_FILE = "config.toml"  # the resolved experiment config (fedsim.outputs.rundir.write_config)
CLIENT_STATE = "client_state"  # per-client state, one folder per method (fedsim.clients.state)
NODE_RUN_FILES = (SPEC_FILE, CONFIG_FILE, PARTITION_FILE, TRANSFER_FILE)  # what a node with its own data is sent
RANDOM_STREAMS = 2
"""How clients draw their randomness, recorded in every run's spec so a resume can tell.

1 (fedsim 0.1.0 and before): dropout masks from torch's global generator, seeded per client;
the ``augment`` hook one sample at a time after seeding it. 2 (fedsim 0.2.0): dropout masks and
augmentation parameters from per-client generators seeded by (seed, round, client), the
augmentation applied batched. Shuffles, sampling and everything else are the same in both.
"""


@dataclass(frozen=True)
class RunSpec:
    """Everything a client worker needs to train and evaluate, as typed plain values."""

    run_dir: str
    dataset_folder: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    model: str
    representation_dim: int
    seed: int
    recipe: SGDRecipe
    eval_batch_size: int
    device: str
    architectures: tuple[str, ...] = ()  # per-client architectures, round-robin by client id
    distill: DistillRecipe | None = None  # federated distillation's digest step
    hooks: tuple[dict, ...] = ()  # client hooks: [{"name": ..., **params}, ...]
    engine: str = "sequential"  # sequential | vectorized: how a worker trains its clients
    lockstep_clients: int = 0  # vectorized: chunk cap (0 = memory decides)
    lockstep_memory: float = 0.5  # vectorized: fraction of free device memory a chunk may use
    compile: bool = False  # vectorized: torch.compile the lockstep step
    behaviours: tuple[dict, ...] = ()  # per-client behaviour: [{"name", "clients", "params"}] (fedsim.clients.behaviours)
    fedsim_version: str = "0.1.0"  # the fedsim that wrote it (a spec without the field predates 0.2.0)
    random_streams: int = 1  # RANDOM_STREAMS of that fedsim

    def architecture_of(self, client_id: int) -> str:
        """The architecture client ``client_id`` trains (``model`` unless architectures are given)."""
        if not self.architectures:
            return self.model
        return self.architectures[client_id % len(self.architectures)].partition("@")[0]

    def save(self, folder: Path) -> Path:
        path = folder / SPEC_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "RunSpec":
        raw = json.loads((Path(folder) / SPEC_FILE).read_text())
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        raw["architectures"] = tuple(raw.get("architectures", ()))
        raw["hooks"] = tuple(raw.get("hooks", ()))
        raw["behaviours"] = tuple(raw.get("behaviours", ()))
        raw["recipe"] = SGDRecipe(**raw["recipe"])
        if raw.get("distill") is not None:
            distill = dict(raw["distill"])
            raw["distill"] = DistillRecipe(**{**distill, "digest": SGDRecipe(**distill["digest"])})
        return cls(**raw)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"runtime.device = {device!r} but this process sees no CUDA device; use 'auto' "
            "or 'cpu', or give clients GPUs with runtime.num_gpus_per_client > 0"
        )
    return torch.device(device)


@dataclass(frozen=True)
class PartitionIndex:
    """Per-client train and validation indices, flattened: client i owns idx[off[i]:off[i+1]]."""

    train_indices: np.ndarray
    train_offsets: np.ndarray
    val_indices: np.ndarray
    val_offsets: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.train_offsets) - 1

    def train_of(self, client_id: int) -> np.ndarray:
        return self.train_indices[self.train_offsets[client_id] : self.train_offsets[client_id + 1]]

    def val_of(self, client_id: int) -> np.ndarray:
        return self.val_indices[self.val_offsets[client_id] : self.val_offsets[client_id + 1]]

    @classmethod
    def from_lists(cls, train: list[np.ndarray], val: list[np.ndarray]) -> "PartitionIndex":
        def flat(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
            values = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            return values, offsets

        ti, to = flat(train)
        vi, vo = flat(val)
        return cls(ti, to, vi, vo)

    def save(self, folder: Path) -> Path:
        path = folder / PARTITION_FILE
        np.savez(path, train_indices=self.train_indices, train_offsets=self.train_offsets,
                 val_indices=self.val_indices, val_offsets=self.val_offsets)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PartitionIndex":
        with np.load(Path(folder) / PARTITION_FILE) as f:
            return cls(f["train_indices"], f["train_offsets"], f["val_indices"], f["val_offsets"])


@dataclass(frozen=True)
class TransferIndex:
    """latent-distill: transfer-set indices into the training set, T_priv indices into the test set."""

    transfer: np.ndarray
    tpriv_indices: np.ndarray
    tpriv_offsets: np.ndarray
    source: str = ""  # "" = indices into this run's training set, else another cached dataset's folder

    def tpriv_of(self, client_id: int) -> np.ndarray:
        return self.tpriv_indices[self.tpriv_offsets[client_id] : self.tpriv_offsets[client_id + 1]]

    def save(self, folder: Path) -> Path:
        path = folder / TRANSFER_FILE
        np.savez(path, transfer=self.transfer, tpriv_indices=self.tpriv_indices, tpriv_offsets=self.tpriv_offsets,
                 source=np.array(self.source))
        return path

    @classmethod
    def from_lists(cls, transfer: np.ndarray, tpriv: list[np.ndarray], source: str = "") -> "TransferIndex":
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in tpriv])]).astype(np.int64)
        values = np.concatenate(tpriv).astype(np.int64) if tpriv else np.zeros(0, np.int64)
        return cls(np.asarray(transfer, dtype=np.int64), values, offsets, source)

    @classmethod
    def load(cls, folder: str | Path) -> "TransferIndex":
        with np.load(Path(folder) / TRANSFER_FILE) as f:
            return cls(f["transfer"], f["tpriv_indices"], f["tpriv_offsets"], str(f["source"]))
