"""Seeded client sampling by partition id, and a Grid view that shows a strategy only the sample.

Flower's strategies sample nodes with Python's global ``random`` and node ids change every
run, so their choice cannot be reproduced. fedsim maps partition ids to node ids once per
run (one query message per node), draws the partition ids of each round from a generator
seeded by ``(seed, round, purpose)``, and passes the strategy a :class:`SampledGrid` whose
``get_node_ids()`` returns just those nodes. A strategy built with ``fraction = 1`` then
addresses exactly the sampled clients, whatever its own sampling code does.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

TRAIN, EVALUATE = 0, 1


def sample_size(num_clients: int, fraction: float, count: int) -> int:
    """``count`` when > 0, else ``max(1, floor(fraction * num_clients))`` (FedAvg's m = max(CK, 1))."""
    if count > 0:
        return min(count, num_clients)
    return max(1, int(fraction * num_clients))


def sample_clients(seed: int, server_round: int, purpose: int, num_clients: int, k: int) -> list[int]:
    """``k`` distinct partition ids, sorted, determined by ``(seed, round, purpose)`` alone."""
    rng = np.random.default_rng([seed, server_round, purpose, 0xC1])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


class SampledGrid(Grid):
    """Delegates to a real grid but reports only ``node_ids`` as connected."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid = grid
        self._node_ids = list(node_ids)

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's signature
        self._grid.set_run(run)

    @property
    def run(self):  # noqa: ANN201
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
