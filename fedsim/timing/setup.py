"""Building a run's simulated time from its config: the inputs it records, the scheduler it uses.

:func:`write_time_inputs` runs when a run is prepared: it draws (or reads) the device profiles
and computes each client's model cost, and writes them to the run directory as
``devices.csv``; with a trace, it copies the trace there as ``availability.csv``.
:func:`build_scheduler` builds the round loop's scheduler from those files, so a resumed run
uses exactly the devices and trace it started with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from flwr.serverapp.strategy import Strategy

from fedsim.config import ExperimentConfig
from fedsim.methods import Method
from fedsim.models import build_model
from fedsim.core.protocol import ARRAYS, ClientTask
from fedsim.core.sampling import sample_size
from fedsim.strategies import AsynchronousStrategy

from .availability import TRACE_FILE, AlwaysOnline, Availability, Daily, PerRound, Trace, read_trace
from .clock import SimulatedClock
from .cost import model_cost
from .devices import DeviceProfiles, file_profiles, lognormal_profiles, read_device_file, tier_profiles
from .scheduler import AsynchronousScheduler, Scheduler, SynchronousScheduler


def draw_profiles(config: ExperimentConfig) -> DeviceProfiles:
    """The population's device profiles for ``config`` (``time.devices`` != ``"none"``)."""
    t, n = config.time, config.partition.num_clients
    if t.devices == "lognormal":
        return lognormal_profiles(n, config.seed, t.seconds_per_sample, t.download_mbps, t.upload_mbps, t.latency,
                                  t.compute_sigma, t.network_sigma)
    if t.devices == "tiers":
        return tier_profiles(n, config.seed, list(t.tiers), list(t.tier_weights), t.compute_sigma, t.network_sigma)
    return file_profiles(read_device_file(Path(t.devices_file).expanduser()), n, config.seed, t.compute_sigma,
                         t.network_sigma)


def architectures(config: ExperimentConfig) -> list[str]:
    """Each client's architecture (round-robin over ``model.architectures``, as the clients do)."""
    names = [entry.partition("@")[0] for entry in config.model.architectures] or [config.model.name]
    return [names[c % len(names)] for c in range(config.partition.num_clients)]


def write_time_inputs(config: ExperimentConfig, folder: Path, num_classes: int, channels: int) -> None:
    """``devices.csv`` (profiles and model cost per client) and the trace's copy, when time is simulated."""
    if config.time.devices == "none":
        return
    arch = architectures(config)
    costs = {name: model_cost(name, num_classes, config.model.representation_dim, channels) for name in set(arch)}
    draw_profiles(config).save(folder, np.array([costs[a] for a in arch]))
    if config.time.availability == "trace":
        shutil.copyfile(Path(config.time.trace_file).expanduser(), Path(folder) / TRACE_FILE)


def availability_for(config: ExperimentConfig, folder: Path) -> Availability:
    """The availability model ``time.availability`` names (a trace read from the run's copy)."""
    t, n = config.time, config.partition.num_clients
    if t.availability == "bernoulli":
        return PerRound(n, t.availability_p, config.seed)
    if t.availability == "daily":
        return Daily(n, t.daily_on_hours, t.daily_period_hours, config.seed)
    if t.availability == "trace":
        return Trace(n, read_trace(Path(folder) / TRACE_FILE, t.trace_period), t.trace_period)
    return AlwaysOnline(n)


def _output_widths(config: ExperimentConfig, num_classes: int) -> list[int]:
    """Per client: the width of the representation its model outputs (r, or its feature width)."""
    r = config.model.representation_dim
    widths = {name: r or build_model(name, num_classes, 0).feature_dim for name in set(architectures(config))}
    return [widths[a] for a in architectures(config)]


def build_scheduler(config: ExperimentConfig, folder: Path, strategy: Strategy, method: Method,
                    train_sizes: np.ndarray, num_classes: int) -> Scheduler:
    """The round loop's scheduler for this run (plain synchronous rounds when time is off)."""
    t, n = config.time, config.partition.num_clients
    per_round = sample_size(n, config.train.fraction_train, config.train.clients_per_round)
    availability = availability_for(config, folder)
    if t.devices == "none":
        return SynchronousScheduler(config.seed, n, per_round, availability)
    profiles, cost = DeviceProfiles.load(folder)
    widths = _output_widths(config, num_classes)

    def upload_of(task: ClientTask) -> int:
        content = task.message.content
        model_bytes = content[ARRAYS].count_bytes() if ARRAYS in content.array_records else 0
        return method.upload_bytes(config, model_bytes, widths[task.client_id], num_classes)

    clock = SimulatedClock(profiles, cost, method.local_samples(config, train_sizes), config.seed, upload_of,
                           t.round_jitter)
    if isinstance(strategy, AsynchronousStrategy):
        return AsynchronousScheduler(config.seed, n, t.concurrency or per_round, strategy.buffer_size,
                                     availability, clock)
    return SynchronousScheduler(config.seed, n, per_round, availability, clock, t.deadline, t.over_selection,
                                t.train_dropped)
