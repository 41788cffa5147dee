"""Per-client persistent state, disk-backed so memory stays flat as the population grows.

State that a client keeps across rounds (in federated distillation every client keeps its
own model) is stored as ``<run dir>/client_state/<namespace>/<client id>.pt`` and loaded only
when that client is sampled. Every method has a namespace of its own (``latent_distill``
today; SCAFFOLD's control variates or a personal model would be others), so methods never
read each other's files. Writes go to a temporary file first and are renamed into place, so a
crashed worker never leaves a half-written state behind. A checkpoint keeps a snapshot of the
whole ``client_state/`` folder (:mod:`fedsim.core.checkpoint`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from fedsim.core.spec import CLIENT_STATE


class ClientStateStore:
    """``save(client_id, state)`` / ``load(client_id)`` of ``state_dict``-like mappings in one namespace."""

    def __init__(self, run_dir: str | Path, namespace: str) -> None:
        self.folder = Path(run_dir) / CLIENT_STATE / namespace
        self.loads = 0  # counters make "only sampled clients are loaded" observable
        self.saves = 0

    def path(self, client_id: int) -> Path:
        return self.folder / f"{int(client_id)}.pt"

    def exists(self, client_id: int) -> bool:
        return self.path(client_id).is_file()

    def load(self, client_id: int) -> dict[str, torch.Tensor] | None:
        """The stored state, or None for a client that has none yet."""
        path = self.path(client_id)
        if not path.is_file():
            return None
        self.loads += 1
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, client_id: int, state: dict[str, torch.Tensor]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{client_id}-", suffix=".tmp")
        os.close(handle)
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
        os.replace(tmp, self.path(client_id))
        self.saves += 1
        return self.path(client_id)

    def stored_clients(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.pt")) if self.folder.is_dir() else []


def adopt_unnamespaced(folder: str | Path, namespace: str) -> int:
    """Move state files written before namespaces (``client_state/<id>.pt``) into ``namespace``.

    Runs started by an earlier fedsim kept latent-distill's models directly in ``client_state/``
    (and their checkpoints' copy of it); resuming such a run moves them to where the method reads
    them now. Returns how many files moved.
    """
    root = Path(folder)
    moved = 0
    for path in sorted(root.glob("*.pt")) if root.is_dir() else []:
        (root / namespace).mkdir(exist_ok=True)
        path.rename(root / namespace / path.name)
        moved += 1
    return moved
