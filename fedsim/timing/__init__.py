"""Simulated time: device profiles, availability, a clock, and the schedulers that act on it.

* :mod:`.devices` -- per-client device profiles (lognormal, named tiers, or a CSV file);
* :mod:`.cost` -- each architecture's cost per sample relative to LeNet-5;
* :mod:`.availability` -- who is online when (always, per round, daily cycles, a trace);
* :mod:`.clock` -- a client's round time: download + compute + upload;
* :mod:`.scheduler` -- the round loop's scheduler: synchronous rounds (deadline,
  over-selection) or asynchronous buffered aggregation;
* :mod:`.rules` and :mod:`.setup` -- the ``[time]`` config's rules, and building all of it for a run.

``docs/simulated_time.md`` is the user's reference.
"""

from .availability import AlwaysOnline, Availability, Daily, PerRound, Trace, read_trace
from .clock import ClientTimes, SimulatedClock, transfer_seconds
from .devices import TIERS, DeviceProfiles
from .scheduler import (
    DROPPED,
    AsynchronousScheduler,
    Dispatch,
    Dropped,
    NoClientAvailable,
    Scheduler,
    SynchronousScheduler,
    TrainingRound,
)

__all__ = [
    "DROPPED", "TIERS", "AlwaysOnline", "AsynchronousScheduler", "Availability", "ClientTimes", "Daily",
    "DeviceProfiles", "Dispatch", "Dropped", "NoClientAvailable", "PerRound", "Scheduler", "SimulatedClock",
    "SynchronousScheduler", "Trace", "TrainingRound", "read_trace", "transfer_seconds",
]
