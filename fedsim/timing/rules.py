"""The ``[time]`` section's rules: ranges, allowed names, files, and how they combine.

Asked by :func:`fedsim.config.validation.validate`; every problem is worded ``key = value: what is
allowed``. The device and trace files are read here too, so a bad file stops the run before
anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from fedsim.config import ExperimentConfig, problem
from fedsim.core.sampling import sample_size
from fedsim.strategies import STRATEGIES, AsynchronousStrategy, StrategyContext, StrategyError, build_strategy

from .availability import AVAILABILITY_NAMES, TraceError, read_trace
from .devices import TIERS, DeviceError, file_profiles, read_device_file

DEVICE_SOURCES = ("none", "lognormal", "tiers", "file")


def is_asynchronous(strategy_name: str) -> bool:
    """Whether the named strategy aggregates asynchronously (driven by the simulated clock)."""
    entry = STRATEGIES.get(strategy_name)
    return entry is not None and issubclass(entry.cls, AsynchronousStrategy)


def _rules(checks: list[tuple[bool, str, object, str]]) -> list[str]:
    return [problem(key, value, allowed) for ok, key, value, allowed in checks if not ok]


def check_time(c: ExperimentConfig) -> list[str]:
    """Problems with ``[time]`` (none when simulated time is off and nothing asks for it)."""
    t = c.time
    e = _rules([
        (t.devices in DEVICE_SOURCES, "time.devices", t.devices, f"allowed: {', '.join(DEVICE_SOURCES)}"),
        (t.seconds_per_sample > 0, "time.seconds_per_sample", t.seconds_per_sample, "must be > 0 seconds"),
        (t.download_mbps > 0, "time.download_mbps", t.download_mbps, "must be > 0 (megabit/s)"),
        (t.upload_mbps > 0, "time.upload_mbps", t.upload_mbps, "must be > 0 (megabit/s)"),
        (t.latency >= 0, "time.latency", t.latency, "must be >= 0 seconds"),
        (t.compute_sigma >= 0, "time.compute_sigma", t.compute_sigma, "must be >= 0 (0 = no spread)"),
        (t.network_sigma >= 0, "time.network_sigma", t.network_sigma, "must be >= 0 (0 = no spread)"),
        (t.round_jitter >= 0, "time.round_jitter", t.round_jitter, "must be >= 0 (0 = none)"),
        (t.availability in AVAILABILITY_NAMES, "time.availability", t.availability,
         f"allowed: {', '.join(AVAILABILITY_NAMES)}"),
        (0 < t.availability_p <= 1, "time.availability_p", t.availability_p, "must be in (0, 1]"),
        (t.daily_period_hours > 0, "time.daily_period_hours", t.daily_period_hours, "must be > 0"),
        (0 < t.daily_on_hours <= t.daily_period_hours, "time.daily_on_hours", t.daily_on_hours,
         f"must be in (0, time.daily_period_hours = {t.daily_period_hours:g}]"),
        (t.trace_period >= 0, "time.trace_period", t.trace_period, "must be >= 0 seconds (0 = the trace does not repeat)"),
        (t.deadline >= 0 and math.isfinite(t.deadline), "time.deadline", t.deadline, "must be >= 0 seconds (0 = none)"),
        (t.over_selection >= 0, "time.over_selection", t.over_selection,
         "must be >= 0 (e.g. 0.3 samples 30% more clients than train.clients_per_round)"),
        (t.concurrency >= 0, "time.concurrency", t.concurrency, "must be >= 0 (0 = the round's sample size)"),
    ])
    if t.devices == "tiers":
        unknown = [name for name in t.tiers if name not in TIERS]
        e += _rules([
            (bool(t.tiers) and not unknown, "time.tiers", t.tiers, f"allowed tiers: {', '.join(TIERS)}"),
            (not t.tier_weights or (len(t.tier_weights) == len(t.tiers) and min(t.tier_weights) >= 0
                                    and sum(t.tier_weights) > 0), "time.tier_weights", t.tier_weights,
             f"one weight >= 0 per tier ({len(t.tiers)}), with a positive sum; [] = equal"),
        ])
    if t.devices == "file":
        e += _check_device_file(c)
    if t.availability == "trace":
        e += _check_trace_file(c)
    e += _check_combinations(c)
    return e


def _check_file(key: str, value: str, needed_for: str, read: Callable[[Path], object],
                errors: tuple[type[Exception], ...]) -> list[str]:
    """The problem with the file ``key = value`` (missing, unreadable, malformed), if any."""
    if not value:
        return [problem(key, "", f"{needed_for} needs the file")]
    path = Path(value).expanduser()
    if not path.is_file():
        return [problem(key, value, "no such file")]
    try:
        read(path)
    except errors as err:
        return [f"{key}: {err}"]
    return []


def _check_device_file(c: ExperimentConfig) -> list[str]:
    def read(path: Path) -> object:
        return file_profiles(read_device_file(path), c.partition.num_clients, c.seed, 0.0, 0.0,
                             f"device file {str(path)!r}")

    return _check_file("time.devices_file", c.time.devices_file, "time.devices = 'file' (a CSV of device profiles)",
                       read, (DeviceError,))


def _check_trace_file(c: ExperimentConfig) -> list[str]:
    return _check_file("time.trace_file", c.time.trace_file, "time.availability = 'trace' (a CSV of online intervals)",
                       lambda path: read_trace(path, c.time.trace_period), (TraceError,))


def _check_combinations(c: ExperimentConfig) -> list[str]:
    t = c.time
    timed = t.devices != "none"
    asynchronous = is_asynchronous(c.strategy.name)
    needs_clock = [(t.deadline > 0, "time.deadline", t.deadline), (t.over_selection > 0, "time.over_selection",
                                                                   t.over_selection),
                   (t.availability in ("daily", "trace"), "time.availability", t.availability)]
    e = [problem(key, value, "needs a simulated clock: set time.devices (lognormal, tiers or file)")
         for on, key, value in needs_clock if on and not timed]
    if asynchronous:
        e += _rules([
            (timed, "strategy.name", c.strategy.name, "asynchronous aggregation is driven by the simulated clock: "
             "set time.devices (lognormal, tiers or file)"),
            (t.deadline == 0, "time.deadline", t.deadline, f"{c.strategy.name} has no rounds to close: a deadline is "
             "a synchronous policy (set 0)"),
            (t.over_selection == 0, "time.over_selection", t.over_selection, f"{c.strategy.name} keeps "
             "time.concurrency clients training; over-selection is a synchronous policy (set 0)"),
            (not c.simulation.streaming, "simulation.streaming", True, "asynchronous strategies aggregate each "
             "client's delta from its own starting model: turn streaming off"),
        ])
    if asynchronous and timed:
        try:
            buffer = build_strategy(c.strategy.name, c.strategy.kwargs, StrategyContext(c.train.lr, 1)).buffer_size
        except StrategyError:
            buffer = 1  # reported with the strategy's arguments
        n = c.partition.num_clients
        concurrency = t.concurrency or sample_size(n, c.train.fraction_train, c.train.clients_per_round)
        e += _rules([(buffer <= n, "strategy.kwargs.buffer_size", buffer,
                      f"must be <= partition.num_clients ({n}): a client adds at most one update to a buffer"),
                     (concurrency <= n, "time.concurrency", t.concurrency, f"must be <= partition.num_clients ({n})")])
    if t.train_dropped and c.simulation.streaming:
        e.append(problem("time.train_dropped", True, "dropped clients trained anyway would enter the workers' partial "
                         "sums: turn simulation.streaming off"))
    return e
