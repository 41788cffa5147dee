"""The simulated clock's arithmetic: how long one client's round takes on its device.

A client's round time is what it receives, what it computes and what it sends (FedScale's
model, Lai et al. 2022)::

    download = bytes_down * 8 / (download_mbps * 1e6) + latency
    compute  = samples * seconds_per_sample * model_cost * jitter
    upload   = bytes_up * 8 / (upload_mbps * 1e6) + latency
    total    = download + compute + upload

``samples`` is the local work the run's recipe prescribes (``train.local_epochs`` times the
client's training samples; a method adds its own work, e.g. latent-distill's digest epochs on
the transfer set), known before the client trains -- which is what lets a deadline drop a
straggler without computing it. Client hooks that change the number of local samples (a
selection subset, augmented copies) do not change it. ``jitter`` is 1, or with
``time.devices.round_jitter = sigma > 0`` a lognormal factor drawn per (seed, round, client).
``bytes_down`` is the size of the arrays in the client's task message (peer models included),
``bytes_up`` the size of what it will send back (the method's
:meth:`~fedsim.methods.Method.upload_bytes`: for weight exchange the model itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsim.core.protocol import ClientTask, array_bytes

from .devices import DeviceProfiles

_JITTER_STREAM = 0x717E


@dataclass
class ClientTimes:
    """Seconds per phase for a list of clients (arrays in the order of ``client_ids``)."""

    client_ids: np.ndarray
    download: np.ndarray
    compute: np.ndarray
    upload: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.download + self.compute + self.upload

    def columns(self, i: int, start: float) -> dict[str, float]:
        """Client ``i``'s ``clients.csv`` time columns for a round that started at ``start``."""
        return {"sim_start": start, "sim_download": float(self.download[i]), "sim_compute": float(self.compute[i]),
                "sim_upload": float(self.upload[i]), "sim_finish": start + float(self.total[i])}


def transfer_seconds(num_bytes: np.ndarray, mbps: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Seconds to move ``num_bytes`` at ``mbps`` megabit/s, plus the latency."""
    return np.asarray(num_bytes, dtype=np.float64) * 8.0 / (np.asarray(mbps) * 1e6) + np.asarray(latency)


class SimulatedClock:
    """Round times of clients from their device profiles, model costs and planned local work.

    ``work[c]``: samples client ``c`` processes per round; ``cost[c]``: its model's cost factor
    (:func:`fedsim.timing.cost.model_cost`); ``upload_of(task)``: bytes the client will send.
    """

    def __init__(self, profiles: DeviceProfiles, cost: np.ndarray, work: np.ndarray, seed: int,
                 upload_of: Callable[[ClientTask], int], round_jitter: float = 0.0) -> None:
        self.profiles = profiles
        self.cost = np.asarray(cost, dtype=np.float64)
        self.work = np.asarray(work, dtype=np.float64)
        self.seed = seed
        self.upload_of = upload_of
        self.round_jitter = round_jitter

    def jitter(self, server_round: int, ids: np.ndarray) -> np.ndarray:
        """The per-round compute factor of clients ``ids`` (1 without ``round_jitter``)."""
        if self.round_jitter <= 0:
            return np.ones(len(ids))
        factors = np.empty(len(ids))
        for i, client_id in enumerate(ids):
            rng = np.random.default_rng([self.seed, server_round, int(client_id), _JITTER_STREAM])
            factors[i] = np.exp(rng.normal(0.0, self.round_jitter))
        return factors

    def times(self, server_round: int, ids: np.ndarray, bytes_down: np.ndarray, bytes_up: np.ndarray) -> ClientTimes:
        """Download, compute and upload seconds of clients ``ids`` in round ``server_round``."""
        ids = np.asarray(ids, dtype=np.int64)
        p = self.profiles
        compute = self.work[ids] * p.seconds_per_sample[ids] * self.cost[ids] * self.jitter(server_round, ids)
        return ClientTimes(ids, transfer_seconds(bytes_down, p.download_mbps[ids], p.latency[ids]), compute,
                           transfer_seconds(bytes_up, p.upload_mbps[ids], p.latency[ids]))

    def task_times(self, server_round: int, tasks: list[ClientTask]) -> ClientTimes:
        """:meth:`times` for the clients of ``tasks``, with each task's download and upload sizes."""
        ids = np.array([t.client_id for t in tasks], dtype=np.int64)
        down = np.array([array_bytes([t.message]) for t in tasks], dtype=np.float64)
        up = np.array([self.upload_of(t) for t in tasks], dtype=np.float64)
        return self.times(server_round, ids, down, up)
