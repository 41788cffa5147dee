"""Seeded client sampling by client (partition) id, and round schedules.

Flower's strategies sample nodes with Python's global ``random`` and node ids change every
run, so their choice cannot be reproduced. fedsim draws the client ids of each round from a
generator seeded by ``(seed, round, purpose)`` alone and shows the strategy only those
clients (:class:`fedsim.core.loop.ClientGrid`).
"""

from __future__ import annotations

import numpy as np

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


def sample_from(seed: int, server_round: int, purpose: int, candidates: np.ndarray, k: int) -> list[int]:
    """``k`` distinct ids among ``candidates`` (e.g. the clients online), sorted; seeded like
    :func:`sample_clients`, which it equals when ``candidates`` are all ids in order."""
    candidates = np.asarray(candidates)
    rng = np.random.default_rng([seed, server_round, purpose, 0xC1])
    return sorted(candidates[rng.choice(len(candidates), size=k, replace=False)].tolist())


def due(every: int, server_round: int, last: int) -> bool:
    """Whether a schedule "every N rounds (and after the last); 0 = never" fires this round."""
    return every > 0 and (server_round % every == 0 or server_round == last)
