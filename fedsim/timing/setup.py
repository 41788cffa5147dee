"""Building a run's simulated time from its plan: the inputs it records, the scheduler it uses.

:func:`write_time_inputs` runs when a run is prepared: it draws (or reads) the device profiles
(the ``[time.devices]`` kind's :meth:`draw`) and computes each client's model cost, and writes
them to the run directory as ``devices.csv``; with a trace, it copies the trace there as
``availability.csv``. :func:`build_scheduler` builds the round loop's scheduler from those files,
so a resumed run uses exactly the devices and trace it started with.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.core.protocol import ARRAYS, ClientTask
from fedsim.core.schedule import SampledRounds, Scheduler
from fedsim.models import build_model

from .availability import TRACE_FILE
from .clock import SimulatedClock
from .cost import model_cost
from .devices import DeviceProfiles
from .scheduler import AsynchronousScheduler, SynchronousScheduler

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.runs.plan import RunPlan


def architectures(plan: RunPlan) -> list[str]:
    """Each client's architecture (round-robin over ``model.architectures``, as the clients do)."""
    model = plan.config.model
    names = [entry.partition("@")[0] for entry in model.architectures] or [model.name]
    return [names[c % len(names)] for c in range(plan.num_clients)]


def write_time_inputs(plan: RunPlan, channels: int) -> None:
    """``devices.csv`` (profiles and model cost per client) and the trace's copy, when time is simulated."""
    time, folder = plan.config.time, plan.staging
    if not time.clocked:
        return
    arch = architectures(plan)
    r, num_classes = plan.config.model.representation_dim, plan.dataset.num_classes
    costs = {name: model_cost(name, num_classes, r, channels) for name in set(arch)}
    time.devices.draw(plan.num_clients, plan.config.seed).save(folder, np.array([costs[a] for a in arch]))
    if time.availability.kind == "trace":
        shutil.copyfile(Path(time.availability.path).expanduser(), Path(folder) / TRACE_FILE)


def _output_widths(plan: RunPlan) -> list[int]:
    """Per client: the width of the representation its model outputs (r, or its feature width)."""
    r, num_classes = plan.config.model.representation_dim, plan.dataset.num_classes
    arch = architectures(plan)
    widths = {name: r or build_model(name, num_classes, 0).feature_dim for name in set(arch)}
    return [widths[a] for a in arch]


def build_scheduler(plan: RunPlan) -> Scheduler:
    """The round loop's scheduler for this run (Flower's plain synchronous rounds when time is off)."""
    config, n, seed = plan.config, plan.num_clients, plan.config.seed
    time = config.time
    if not time.clocked and time.availability.kind == "always":
        return SampledRounds(seed, n, plan.clients_per_round)
    availability = time.availability.model(n, seed, plan.staging)
    if not time.clocked:  # availability per round without a clock (bernoulli)
        return SynchronousScheduler(seed, n, plan.clients_per_round, availability)
    profiles, cost = DeviceProfiles.load(plan.staging)
    widths, num_classes, method = _output_widths(plan), plan.dataset.num_classes, plan.method

    def upload_of(task: ClientTask) -> int:
        content = task.message.content
        model_bytes = content[ARRAYS].count_bytes() if ARRAYS in content.array_records else 0
        return method.upload_bytes(config, model_bytes, widths[task.client_id], num_classes)

    clock = SimulatedClock(profiles, cost, method.local_samples(config, plan.train_sizes), seed, upload_of,
                           time.devices.round_jitter)
    if plan.strategy.asynchronous:
        return AsynchronousScheduler(seed, n, plan.concurrency, plan.strategy.buffer_size, availability, clock)
    policy = time.policy
    return SynchronousScheduler(seed, n, plan.clients_per_round, availability, clock, policy.deadline,
                                policy.over_selection, policy.train_dropped)
