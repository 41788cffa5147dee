"""User hooks used by the tests (named by import path, e.g. ``user_hooks:KeepEvenLabels``)."""

from __future__ import annotations

import numpy as np


class KeepEvenLabels:
    """Train only on samples with an even label; report how many were kept (two stages only)."""

    name = "keep_even"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def prepare(self, data, ctx):  # noqa: ANN001, ANN201
        keep = np.nonzero(data.labels.cpu().numpy() % 2 == 0)[0]
        ctx.stats[self.name] = {"kept": float(len(keep))}
        return data.subset(keep)

    def report(self, ctx):  # noqa: ANN001, ANN201
        return ctx.stats[self.name]


class SlowClient:
    """Hangs (sleeps ``seconds``) while preparing client ``client``'s data: a stuck client."""

    name = "slow_client"

    def __init__(self, client: int = 0, seconds: float = 60.0) -> None:
        self.client, self.seconds = client, seconds

    def prepare(self, data, ctx):  # noqa: ANN001, ANN201
        if ctx.client_id == self.client:
            import time

            time.sleep(self.seconds)
        return data
