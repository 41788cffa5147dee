"""Client availability: who is online at a simulated time, and until when.

``time.availability`` picks one model; each answers three questions for the schedulers
(:mod:`fedsim.timing.scheduler`):

* :meth:`Availability.online` -- which clients are online at time ``t`` in round ``r`` (the
  schedulers sample only among them);
* :meth:`Availability.online_until` -- when a client online at ``t`` goes offline (a client
  whose availability ends before it finishes drops out of the round);
* :meth:`Availability.next_online` -- the earliest time >= ``t`` at which some client is online
  (when nobody is, the round waits until then).

Models:

* ``always`` -- every client is online all the time;
* ``bernoulli`` -- in every round each client is online with probability ``availability_p``,
  drawn from (seed, round, client) and kept for the whole round (it never drops mid-round);
* ``daily`` -- a daily on/off cycle: each client is online ``daily_on_hours`` of every
  ``daily_period_hours``, starting at a phase drawn per client from (seed), so the population
  is online around the clock in shifts;
* ``trace`` -- online intervals read from a file (:func:`read_trace`): ``client_id, start, end``
  in seconds of simulated time. Client ``i`` follows the ``i mod M``-th of the ``M`` distinct
  ids in the file (sorted), so a trace of ``M`` devices serves a population of any size; with
  ``trace_period > 0`` the trace repeats with that period, otherwise a client is offline after
  its last interval.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.inputs import Column, InputFileError, read_table

TRACE_FILE = "availability.csv"  # the run directory's copy of the trace
_PHASE_STREAM = 0xDA117
_ROUND_STREAM = 0xB3A1
EPSILON = 1e-6  # seconds past a switch-on time, so that the client is online there despite rounding


class TraceError(InputFileError):
    """A trace file cannot be used; the message names the problem (and the file's cell)."""


class Availability(ABC):
    """Which of ``num_clients`` clients are online when.

    ``time_based``: whether being online depends on the simulated time (then waiting helps when
    nobody is online) or only on the round (then the round goes without clients).
    """

    time_based = True

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients

    @abstractmethod
    def online(self, t: float, server_round: int) -> np.ndarray:
        """A boolean mask over client ids: online at time ``t`` of round ``server_round``."""

    @abstractmethod
    def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
        """For clients ``ids`` online at ``t``: the time each goes offline (inf: not in this round)."""

    def next_online(self, t: float, server_round: int) -> float:
        """The earliest time >= ``t`` at which some client is online (inf: none will be)."""
        return t if self.online(t, server_round).any() else float("inf")


class AlwaysOnline(Availability):
    def online(self, t: float, server_round: int) -> np.ndarray:
        return np.ones(self.num_clients, dtype=bool)

    def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
        return np.full(len(ids), np.inf)


class PerRound(Availability):
    """Online with probability ``p`` in each round, independently per (seed, round, client)."""

    time_based = False

    def __init__(self, num_clients: int, p: float, seed: int) -> None:
        super().__init__(num_clients)
        self.p, self.seed = p, seed

    def online(self, t: float, server_round: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, server_round, _ROUND_STREAM])
        return rng.random(self.num_clients) < self.p

    def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
        return np.full(len(ids), np.inf)


class Daily(Availability):
    """Online ``on_hours`` of every ``period_hours``, from a per-client phase drawn from the seed."""

    def __init__(self, num_clients: int, on_hours: float, period_hours: float, seed: int) -> None:
        super().__init__(num_clients)
        self.on = on_hours * 3600.0
        self.period = period_hours * 3600.0
        rng = np.random.default_rng([seed, _PHASE_STREAM])
        self.phase = rng.uniform(0.0, self.period, size=num_clients)  # seconds into the cycle at t = 0

    def _position(self, t: float) -> np.ndarray:
        return np.mod(t + self.phase, self.period)

    def online(self, t: float, server_round: int) -> np.ndarray:
        return self._position(t) < self.on

    def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
        if self.on >= self.period:
            return np.full(len(ids), np.inf)
        return t + self.on - self._position(t)[ids]

    def next_online(self, t: float, server_round: int) -> float:
        position = self._position(t)
        wait = np.where(position < self.on, 0.0, self.period - position + EPSILON)
        return float(t + wait.min())


class Trace(Availability):
    """Online intervals per trace id; client ``i`` follows trace id ``ids[i mod M]``."""

    def __init__(self, num_clients: int, intervals: pd.DataFrame, period: float = 0.0) -> None:
        super().__init__(num_clients)
        self.period = float(period)
        trace_ids = np.unique(intervals["client_id"].to_numpy())
        owner, start, end = [], [], []
        for j, trace_id in enumerate(trace_ids):  # merge overlapping or touching intervals
            part = intervals[intervals["client_id"] == trace_id].sort_values("start")
            for s, e in zip(part["start"].to_numpy(np.float64), part["end"].to_numpy(np.float64)):
                if owner and owner[-1] == j and s <= end[-1]:
                    end[-1] = max(end[-1], e)
                else:
                    owner.append(j), start.append(s), end.append(e)
        self.owner = np.asarray(owner, dtype=np.int64)
        self.start = np.asarray(start, dtype=np.float64)
        self.end = np.asarray(end, dtype=np.float64)
        self.num_traces = len(trace_ids)
        self.trace_of = np.arange(num_clients) % self.num_traces  # client id -> trace position
        # a repeating trace: an interval ending at the period continues into the next period's
        # interval starting at 0 (if any); one that spans the whole period never ends
        self.wrap = np.zeros(self.num_traces)
        if self.period > 0:
            first = (self.start == 0.0)
            self.wrap[self.owner[first]] = self.end[first]

    def _local(self, t: float) -> tuple[float, float]:
        """``t`` within the trace and the start of its period (0 when the trace does not repeat)."""
        if self.period > 0:
            offset = float(np.floor(t / self.period) * self.period)
            return t - offset, offset
        return t, 0.0

    def _covering(self, t: float) -> np.ndarray:
        """Per trace: the end (absolute time) of the interval covering ``t``, NaN when offline."""
        local, offset = self._local(t)
        hit = (self.start <= local) & (local < self.end)
        until = np.full(self.num_traces, np.nan)
        until[self.owner[hit]] = self.end[hit] + offset
        if self.period > 0:
            wraps = hit & (self.end >= self.period)
            j = self.owner[wraps]
            until[j] = np.where(self.wrap[j] >= self.period, np.inf, until[j] + self.wrap[j])
        return until

    def online(self, t: float, server_round: int) -> np.ndarray:
        return ~np.isnan(self._covering(t))[self.trace_of]

    def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
        return self._covering(t)[self.trace_of[np.asarray(ids, dtype=np.int64)]]

    def next_online(self, t: float, server_round: int) -> float:
        used = np.isin(self.owner, np.unique(self.trace_of))
        starts, ends = self.start[used], self.end[used]
        local, offset = self._local(t)
        if ((starts <= local) & (local < ends)).any():
            return t
        later = starts[starts > local]
        if len(later):
            return float(later.min() + offset + EPSILON)
        if self.period > 0 and len(starts):
            return float(starts.min() + offset + self.period + EPSILON)
        return float("inf")


TRACE_COLUMNS = (Column("client_id", int, 0), Column("start", float, 0.0), Column("end", float, 0.0))


def read_trace(path: Path, period: float = 0.0) -> pd.DataFrame:
    """A trace CSV (``client_id, start, end`` in seconds), checked and sorted.

    Every cell is checked by :func:`fedsim.inputs.read_table`, so a bad one is named by file, line
    and column; a :class:`TraceError` says what is wrong.
    """
    table = read_table(path, TRACE_COLUMNS, "trace file", TraceError)
    frame = table.frame
    if not len(frame):
        raise table.error(None, None, "has no intervals")
    start, end = frame["start"].to_numpy(), frame["end"].to_numpy()
    backwards = np.flatnonzero(end <= start)
    if len(backwards):
        i = int(backwards[0])
        raise table.error(i, "end", f"start {start[i]:g}, end {end[i]:g}: every interval needs 0 <= start < end "
                          "(finite seconds)")
    late = np.flatnonzero(end > period) if period > 0 else []
    if len(late):
        raise table.error(int(late[0]), "end", f"{end[late[0]]:g}: intervals end after time.availability.period = "
                          f"{period:g} s; a repeating trace must fit in one period")
    return frame[["client_id", "start", "end"]].sort_values(["client_id", "start"]).reset_index(drop=True)


AVAILABILITY_NAMES = ("always", "bernoulli", "daily", "trace")
