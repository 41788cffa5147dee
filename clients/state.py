"""Per-client persistent state, disk-backed so memory stays flat as the population grows.

A client's own model (in federated distillation every client keeps its model across rounds)
is stored as ``<run dir>/client_state/<client id>.pt`` and loaded only when that client is
sampled. Writes go to a temporary file first and are renamed into place, so a crashed worker
never leaves a half-written state behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class ClientStateStore:
    """``save(client_id, state)`` / ``load(client_id)`` of ``state_dict``-like mappings."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
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
