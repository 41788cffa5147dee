"""Simulated time: device profiles, availability, a clock, and the schedulers that act on it.

* :mod:`.settings` -- the ``[time.devices]``, ``[time.availability]`` and ``[time.policy]``
  settings: each device or availability kind a small dataclass with its rules and its builder;
* :mod:`.devices` -- per-client device profiles (lognormal, named tiers, or a CSV file);
* :mod:`.cost` -- each architecture's cost per sample relative to LeNet-5;
* :mod:`.availability` -- who is online when (always, per round, daily cycles, a trace);
* :mod:`.clock` -- a client's round time: download + compute + upload;
* :mod:`.scheduler` -- the round loop's schedulers on the clock: synchronous rounds (deadline,
  over-selection) or asynchronous buffered aggregation over an event queue;
* :mod:`.setup` -- building all of it for a run from its plan.

``docs/simulated_time.md`` is the user's reference.
"""

from fedsim.core.schedule import Dropped, Scheduler, TrainingRound

from .availability import AlwaysOnline, Availability, Daily, PerRound, Trace, read_trace
from .clock import ClientTimes, SimulatedClock, transfer_seconds
from .devices import TIERS, DeviceProfiles
from .scheduler import DROPPED, AsynchronousScheduler, EventQueue, NoClientAvailable, SynchronousScheduler

__all__ = [
    "DROPPED", "TIERS", "AlwaysOnline", "AsynchronousScheduler", "Availability", "ClientTimes", "Daily",
    "DeviceProfiles", "Dropped", "EventQueue", "NoClientAvailable", "PerRound", "Scheduler", "SimulatedClock",
    "SynchronousScheduler", "Trace", "TrainingRound", "read_trace", "transfer_seconds",
]
