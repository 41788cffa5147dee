"""Schedules: which clients train in a round (the scheduler) and which evaluate (the evaluation schedule).

A **scheduler** decides a round's training: which clients, when each finishes on a simulated
clock, and what reaches the strategy. The round loop asks it for a round and it answers with
*requests*, never by calling back into the loop: :meth:`Scheduler.train_round` is a generator
that yields

* :class:`Configure` -- "build the tasks of these clients from the current model" (the loop
  asks the strategy's ``configure_train`` and the extensions' ``on_configure``), and receives
  the tasks, in client-id order;
* :class:`Train` -- "run these tasks" (the loop hands them to the executor and screens the
  updates), and receives one reply per task, in task order;

and finally returns a :class:`TrainingRound`: the tasks sent, the replies the server received,
the clients that dropped out and the simulated-time columns. :func:`drive` is how the loop
answers the requests. A scheduler's state (a simulated clock's time, clients still training)
is checkpointed through its own :meth:`Scheduler.state` / :meth:`Scheduler.load_state`.

:class:`SampledRounds` is Flower's synchronous round: ``K`` clients sampled by (seed, round),
all waited for. The schedulers on a simulated clock (deadlines, over-selection, availability,
asynchronous buffers) are in :mod:`fedsim.timing.scheduler`.

The **evaluation schedule** (:class:`EvaluationSchedule`) says in which rounds federated
evaluation runs and on which clients, seeded like training but from a stream of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from .protocol import ClientReply, ClientTask
from .sampling import EVALUATE, TRAIN, due, sample_clients


@dataclass(frozen=True)
class Configure:
    """Request: the tasks of these clients (sorted ids) from the current model."""

    client_ids: list[int]


@dataclass(frozen=True)
class Train:
    """Request: run these tasks; one screened reply per task, in task order."""

    tasks: list[ClientTask]


Request = Configure | Train
RoundSchedule = Generator[Request, Any, "TrainingRound"]
"""What :meth:`Scheduler.train_round` returns: yields requests, returns the round's training."""


@dataclass
class Dropped:
    """A sampled client whose update does not reach the strategy (it is not a failure)."""

    client_id: int
    status: str  # straggler | offline | surplus
    reason: str
    reply: ClientReply | None = None  # its reply when it was trained anyway (time.policy.train_dropped)
    times: dict[str, float] = field(default_factory=dict)  # its clients.csv time columns


@dataclass
class TrainingRound:
    """A round's training as the scheduler ran it."""

    dispatched: list[ClientTask]  # tasks sent this round (their arrays count as bytes down)
    arrived: list[ClientReply]  # replies received this round (ok and failed), for rows and aggregation
    dropped: list[Dropped] = field(default_factory=list)
    times: dict[int, dict[str, float]] = field(default_factory=dict)  # arrived client id -> time columns
    row: dict[str, float] = field(default_factory=dict)  # the round's rounds.csv time columns
    notices: list[ClientReply] = field(default_factory=list)  # dropped clients' error replies for the strategy

    @property
    def to_strategy(self) -> list[ClientReply]:
        """What the strategy's ``aggregate_train`` receives: arrivals, then drop notices."""
        return self.arrived + self.notices


class Scheduler(ABC):
    """Decides each round's training (see the module); checkpointed through :meth:`state`."""

    @abstractmethod
    def train_round(self, server_round: int) -> RoundSchedule:
        """The round's training, as a generator of :class:`Configure` / :class:`Train` requests."""

    def state(self) -> dict[str, Any]:
        """Everything needed to resume this scheduler exactly (plain values, arrays, ArrayRecords)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


class SampledRounds(Scheduler):
    """Flower's synchronous round: ``per_round`` clients sampled by (seed, round), all waited for."""

    def __init__(self, seed: int, num_clients: int, per_round: int) -> None:
        self.seed, self.num_clients, self.per_round = seed, num_clients, per_round

    def train_round(self, server_round: int) -> RoundSchedule:
        tasks = yield Configure(sample_clients(self.seed, server_round, TRAIN, self.num_clients, self.per_round))
        replies = yield Train(tasks)
        return TrainingRound(tasks, replies)


def drive(schedule: RoundSchedule, configure: Callable[[list[int]], list[ClientTask]],
          train: Callable[[list[ClientTask]], list[ClientReply]]) -> TrainingRound:
    """Answer a scheduler's requests until it returns the round's training."""
    try:
        request = next(schedule)
        while True:
            answer = configure(request.client_ids) if isinstance(request, Configure) else train(request.tasks)
            request = schedule.send(answer)
    except StopIteration as done:
        return done.value


@dataclass(frozen=True)
class EvaluationSchedule:
    """Federated evaluation: every ``every`` rounds (and after the last; 0 = never) on ``per_round`` clients."""

    seed: int
    num_clients: int
    per_round: int
    every: int
    rounds: int

    def due(self, server_round: int) -> bool:
        return due(self.every, server_round, self.rounds)

    def sample(self, server_round: int) -> list[int]:
        """The clients that evaluate in ``server_round``, by (seed, round) alone."""
        return sample_clients(self.seed, server_round, EVALUATE, self.num_clients, self.per_round)
