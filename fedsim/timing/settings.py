"""The ``[time]`` settings: device models, availability models and the round policies.

Simulated time is three tables, each read by one part of :mod:`fedsim.timing`:

* ``[time.devices]`` -- how fast each client computes and communicates. A tagged table: its
  ``kind`` (``none``, ``lognormal``, ``tiers``, ``file``) chooses one of the dataclasses
  below, which takes only that model's keys and knows how to draw the population's
  :class:`~fedsim.timing.devices.DeviceProfiles`. ``none`` (the default) turns the clock off.
* ``[time.availability]`` -- who is online when. Tagged too: ``always``, ``bernoulli``,
  ``daily``, ``trace``; each kind builds its :class:`~fedsim.timing.availability.Availability`.
* ``[time.policy]`` -- what synchronous rounds do on the clock (a deadline, over-selection,
  training the dropped clients anyway) and how many clients train at once under an
  asynchronous strategy.

``docs/simulated_time.md`` is the user's reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fedsim.settings import Section, kinds, problem, problems, setting

from .availability import TRACE_FILE, AlwaysOnline, Availability, Daily, PerRound, Trace, TraceError, read_trace
from .devices import TIERS, DeviceError, DeviceProfiles, file_profiles, lognormal_profiles, read_device_file
from .devices import tier_profiles

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


def _file_problem(key: str, value: str, needed_for: str, read, errors: tuple[type[Exception], ...]) -> list[str]:  # noqa: ANN001
    """The problem with the file ``key = value`` (missing, a folder, unreadable, malformed), if any.

    ``read`` is the file's reader (:mod:`fedsim.inputs`): its error names the file and the bad cell.
    """
    if not value:
        return [problem(key, "", f"{needed_for} needs the file")]
    try:
        read(Path(value).expanduser())
    except errors as err:
        return [f"{key}: {err}"]
    return []


# ------------------------------------------------------------------------------------ devices


@dataclass
class NoDevices(Section):
    """No simulated clock: rounds take no simulated time (the default)."""

    kind: ClassVar[str] = "none"
    clocked: ClassVar[bool] = False


@dataclass
class ClockedDevices(Section):
    """What every device model shares: the spread around its values and the per-round jitter."""

    clocked: ClassVar[bool] = True

    compute_sigma: float = setting(0.5, "spread (sigma of the log) of compute speed around the median or the "
                                   "device type's value (0 = none)")
    network_sigma: float = setting(0.5, "spread (sigma of the log) of the bandwidths (0 = none)")
    round_jitter: float = setting(0.0, "sigma of a per-round lognormal factor on each client's compute time "
                                  "(0 = none)")

    def check(self, prefix: str) -> list[str]:
        return problems(prefix, [
            (self.compute_sigma >= 0, "compute_sigma", self.compute_sigma, "must be >= 0 (0 = no spread)"),
            (self.network_sigma >= 0, "network_sigma", self.network_sigma, "must be >= 0 (0 = no spread)"),
            (self.round_jitter >= 0, "round_jitter", self.round_jitter, "must be >= 0 (0 = none)"),
        ])

    def draw(self, num_clients: int, seed: int) -> DeviceProfiles:
        """The population's device profiles (seeded by the run's seed alone)."""
        raise NotImplementedError


@dataclass
class LognormalDevices(ClockedDevices):
    """Every client's profile drawn from lognormals around medians (as FedScale draws devices)."""

    kind: ClassVar[str] = "lognormal"

    seconds_per_sample: float = setting(0.002, "median training seconds per sample of a LeNet-5-sized model")
    download_mbps: float = setting(20.0, "median download bandwidth (megabit/s)")
    upload_mbps: float = setting(5.0, "median upload bandwidth (megabit/s)")
    latency: float = setting(0.05, "seconds added to every transfer")

    def check(self, prefix: str) -> list[str]:
        return super().check(prefix) + problems(prefix, [
            (self.seconds_per_sample > 0, "seconds_per_sample", self.seconds_per_sample, "must be > 0 seconds"),
            (self.download_mbps > 0, "download_mbps", self.download_mbps, "must be > 0 (megabit/s)"),
            (self.upload_mbps > 0, "upload_mbps", self.upload_mbps, "must be > 0 (megabit/s)"),
            (self.latency >= 0, "latency", self.latency, "must be >= 0 seconds"),
        ])

    def draw(self, num_clients: int, seed: int) -> DeviceProfiles:
        return lognormal_profiles(num_clients, seed, self.seconds_per_sample, self.download_mbps,
                                  self.upload_mbps, self.latency, self.compute_sigma, self.network_sigma)


@dataclass
class TierDevices(ClockedDevices):
    """Each client draws one of the named device presets (fast, medium, slow)."""

    kind: ClassVar[str] = "tiers"

    tiers: list[str] = setting(help="the presets clients draw from: `fast`, `medium`, `slow`",
                               factory=lambda: ["fast", "medium", "slow"])
    weights: list[float] = setting(help="the presets' probabilities (`[]` = equal)", factory=list)

    def check(self, prefix: str) -> list[str]:
        unknown = [name for name in self.tiers if name not in TIERS]
        return super().check(prefix) + problems(prefix, [
            (bool(self.tiers) and not unknown, "tiers", self.tiers, f"allowed tiers: {', '.join(TIERS)}"),
            (not self.weights or (len(self.weights) == len(self.tiers) and min(self.weights) >= 0
                                  and sum(self.weights) > 0), "weights", self.weights,
             f"one weight >= 0 per tier ({len(self.tiers)}), with a positive sum; [] = equal"),
        ])

    def draw(self, num_clients: int, seed: int) -> DeviceProfiles:
        return tier_profiles(num_clients, seed, list(self.tiers), list(self.weights), self.compute_sigma,
                             self.network_sigma)


@dataclass
class FileDevices(ClockedDevices):
    """Profiles from a CSV file: one row per client (``client_id``) or per device type (``device``)."""

    kind: ClassVar[str] = "file"

    path: str = setting("", "CSV of profiles per client (`client_id`) or per device type (`device`, "
                        "optional `weight`)")

    def draw(self, num_clients: int, seed: int) -> DeviceProfiles:
        return file_profiles(read_device_file(Path(self.path).expanduser()), num_clients, seed,
                             self.compute_sigma, self.network_sigma)

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        def read(path: Path) -> object:
            return file_profiles(read_device_file(path), config.partition.num_clients, config.seed, 0.0, 0.0,
                                 f"device file {str(path)!r}")

        return _file_problem("time.devices.path", self.path,
                             "time.devices.kind = 'file' (a CSV of device profiles)", read, (DeviceError,))


DEVICE_KINDS: dict[str, type[Section]] = {cls.kind: cls for cls in (NoDevices, LognormalDevices, TierDevices,
                                                                    FileDevices)}

# ------------------------------------------------------------------------------------ availability


@dataclass
class AlwaysAvailable(Section):
    """Every client is online all the time (the default)."""

    kind: ClassVar[str] = "always"
    time_based: ClassVar[bool] = False

    def model(self, num_clients: int, seed: int, folder: Path) -> Availability:
        return AlwaysOnline(num_clients)


@dataclass
class BernoulliAvailability(Section):
    """Every round, each client is online with probability ``p``, for the whole round."""

    kind: ClassVar[str] = "bernoulli"
    time_based: ClassVar[bool] = False

    p: float = setting(0.8, "probability that a client is online in a round")

    def check(self, prefix: str) -> list[str]:
        return problems(prefix, [(0 < self.p <= 1, "p", self.p, "must be in (0, 1]")])

    def model(self, num_clients: int, seed: int, folder: Path) -> Availability:
        return PerRound(num_clients, self.p, seed)


@dataclass
class DailyAvailability(Section):
    """A daily on/off cycle; each client's phase is drawn from the seed, so clients work in shifts."""

    kind: ClassVar[str] = "daily"
    time_based: ClassVar[bool] = True

    on_hours: float = setting(8.0, "hours online per period")
    period_hours: float = setting(24.0, "length of the on/off cycle in hours")

    def check(self, prefix: str) -> list[str]:
        return problems(prefix, [
            (self.period_hours > 0, "period_hours", self.period_hours, "must be > 0"),
            (0 < self.on_hours <= self.period_hours, "on_hours", self.on_hours,
             f"must be in (0, {prefix}.period_hours = {self.period_hours:g}]"),
        ])

    def model(self, num_clients: int, seed: int, folder: Path) -> Availability:
        return Daily(num_clients, self.on_hours, self.period_hours, seed)


@dataclass
class TraceAvailability(Section):
    """Online intervals from a CSV file (``client_id, start, end`` in seconds of simulated time)."""

    kind: ClassVar[str] = "trace"
    time_based: ClassVar[bool] = True

    path: str = setting("", "CSV of online intervals: `client_id, start, end` (seconds)")
    period: float = setting(0.0, "repeat the trace every this many seconds (0 = no repeat: a client is offline "
                            "after its last interval)")

    def check(self, prefix: str) -> list[str]:
        e = problems(prefix, [(self.period >= 0, "period", self.period,
                               "must be >= 0 seconds (0 = the trace does not repeat)")])
        return e + _file_problem(f"{prefix}.path", self.path,
                                 f"{prefix}.kind = 'trace' (a CSV of online intervals)",
                                 lambda path: read_trace(path, self.period), (TraceError,))

    def model(self, num_clients: int, seed: int, folder: Path) -> Availability:
        """The trace as the run directory recorded it (a resumed run reads its own copy)."""
        return Trace(num_clients, read_trace(Path(folder) / TRACE_FILE, self.period), self.period)


AVAILABILITY_KINDS: dict[str, type[Section]] = {cls.kind: cls for cls in (
    AlwaysAvailable, BernoulliAvailability, DailyAvailability, TraceAvailability)}

# ------------------------------------------------------------------------------------ policy


@dataclass
class PolicySettings(Section):
    """What rounds do on the simulated clock."""

    deadline: float = setting(0.0, "synchronous: seconds a round waits; clients that would finish later are "
                              "stragglers (0 = none)")
    over_selection: float = setting(0.0, "synchronous: sample ceil((1 + x) K) clients and keep the first K to "
                                    "finish")
    train_dropped: bool = setting(False, "also train stragglers, offline and surplus clients (then discard "
                                  "them)")
    concurrency: int = setting(0, "asynchronous strategies: clients training at once (0 = the round's sample "
                               "size)")

    def check(self, prefix: str = "time.policy") -> list[str]:
        return problems(prefix, [
            (self.deadline >= 0 and math.isfinite(self.deadline), "deadline", self.deadline,
             "must be >= 0 seconds (0 = none)"),
            (self.over_selection >= 0, "over_selection", self.over_selection,
             "must be >= 0 (e.g. 0.3 samples 30% more clients than the round's sample size)"),
            (self.concurrency >= 0, "concurrency", self.concurrency, "must be >= 0 (0 = the round's sample size)"),
        ])


# ------------------------------------------------------------------------------------ [time]


@dataclass
class TimeSettings(Section):
    """Simulated time (``[time]``): off unless ``[time.devices]`` names a device model."""

    devices: Section = kinds(DEVICE_KINDS, "none", "The device model: `none` (no simulated time), `lognormal`, "
                             "`tiers` or `file`")
    availability: Section = kinds(AVAILABILITY_KINDS, "always", "Who is online when: `always`, `bernoulli`, "
                                  "`daily` or `trace`")
    policy: PolicySettings = setting(help="deadlines, over-selection and asynchronous concurrency",
                                     factory=PolicySettings)

    @property
    def clocked(self) -> bool:
        """Whether rounds run on a simulated clock."""
        return bool(getattr(self.devices, "clocked", False))

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        """How the time settings combine with each other, the strategy and the executor."""
        policy = self.policy
        needs_clock = [(policy.deadline > 0, "time.policy.deadline", policy.deadline),
                       (policy.over_selection > 0, "time.policy.over_selection", policy.over_selection),
                       (getattr(self.availability, "time_based", False), "time.availability.kind",
                        self.availability.kind)]
        e = [problem(key, value, "needs a simulated clock: set time.devices.kind (lognormal, tiers or file)")
             for on, key, value in needs_clock if on and not self.clocked]
        strategy = config.strategy.name
        if plan.strategy.asynchronous:
            e += [problem(key, value, allowed) for ok, key, value, allowed in [
                (self.clocked, "strategy.name", strategy, "asynchronous aggregation is driven by the simulated "
                 "clock: set time.devices.kind (lognormal, tiers or file)"),
                (policy.deadline == 0, "time.policy.deadline", policy.deadline, f"{strategy} has no rounds to "
                 "close: a deadline is a synchronous policy (set 0)"),
                (policy.over_selection == 0, "time.policy.over_selection", policy.over_selection,
                 f"{strategy} keeps time.policy.concurrency clients training; over-selection is a synchronous "
                 "policy (set 0)"),
                (not config.executor.streaming, "executor.streaming", True, "asynchronous strategies aggregate "
                 "each client's delta from its own starting model: turn streaming off"),
            ] if not ok]
            if self.clocked:
                n = config.partition.num_clients
                e += problems("", [
                    (plan.strategy.buffer_size <= n, "strategy.kwargs.buffer_size", plan.strategy.buffer_size,
                     f"must be <= partition.num_clients ({n}): a client adds at most one update to a buffer"),
                    (plan.concurrency <= n, "time.policy.concurrency", policy.concurrency,
                     f"must be <= partition.num_clients ({n})")])
        if policy.train_dropped and config.executor.streaming:
            e.append(problem("time.policy.train_dropped", True, "dropped clients trained anyway would enter the "
                             "workers' partial sums: turn executor.streaming off"))
        return e
