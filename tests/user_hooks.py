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


class Sleepy:
    """Every client sleeps ``seconds`` before training: rounds slow enough to interrupt."""

    name = "sleepy"

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def prepare(self, data, ctx):  # noqa: ANN001, ANN201, ARG002
        import time

        time.sleep(self.seconds)
        return data


class PoisonClient:
    """Client ``client``'s loss becomes NaN: its update is NaN (a diverging client)."""

    name = "poison"

    def __init__(self, client: int = 0) -> None:
        self.client = client

    def loss(self, xb, yb, logits, base_loss, ctx):  # noqa: ANN001, ANN201, ARG002
        return base_loss * float("nan") if ctx.client_id == self.client else base_loss


class KillWorker:
    """The process training client ``client`` dies (SIGKILL) the first ``times`` times: a worker killed mid-round.

    ``flag`` is a file counting the kills (written just before dying), so the replacement
    worker lives once the count is reached.
    """

    name = "kill_worker"

    def __init__(self, client: int = 0, flag: str = "", times: int = 1) -> None:
        self.client, self.flag, self.times = client, flag, times

    def prepare(self, data, ctx):  # noqa: ANN001, ANN201
        import os
        import signal
        from pathlib import Path

        flag = Path(self.flag)
        kills = len(flag.read_text()) if flag.exists() else 0
        if ctx.client_id == self.client and kills < self.times:
            flag.write_text("k" * (kills + 1))
            os.kill(os.getpid(), signal.SIGKILL)
        return data
