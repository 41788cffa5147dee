"""Schedulers: which clients train in a round, when each finishes, and what reaches the strategy.

The round loop (:mod:`fedsim.core.loop`) asks its scheduler for a round's training: the scheduler
picks client ids, has the loop configure them (the strategy's ``configure_train`` and the
extensions' ``on_configure``) and run them (the executor), and returns a
:class:`TrainingRound`: the tasks sent, the replies the server received, the clients that
dropped out, and the simulated-time columns of the round and of every client.

* :class:`SynchronousScheduler` -- rounds as in Flower: sample ``K`` clients (only among those
  online), wait for them, aggregate. Without a clock this is fedsim's plain round (sampling by
  (seed, round) exactly as :func:`fedsim.core.sampling.sample_clients`). With a clock
  (:class:`~fedsim.timing.clock.SimulatedClock`), every client gets a round time, the round
  lasts until its last kept client finishes, and two policies act on that clock: a
  **deadline** (clients that would finish after it are stragglers) and **over-selection**
  (Bonawitz et al., "Towards Federated Learning at Scale: System Design", MLSys 2019: sample
  ``ceil((1 + x) K)`` and keep the first ``K`` to finish). A client whose availability ends
  before it finishes drops out (offline). Dropped clients are not trained at all unless
  ``time.policy.train_dropped`` (then trained and discarded), which also saves simulation time.
* :class:`AsynchronousScheduler` -- no rounds on the clients' side: up to ``concurrency``
  clients train at once, each from the model version it downloaded; as soon as one finishes
  (in simulated time) another starts from the current model. A server round ends when the
  strategy's buffer holds ``buffer_size`` successful updates (FedBuff: Nguyen et al.,
  "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022; FedAsync: buffer
  of 1). Clients that start from the same model version are executed together, normally in one
  batch per round, so a cohort worker trains them in one message. A client trains at most once per server round
  and contributes at most one update to a buffer.

All choices depend on (seed, round) and the simulated clock alone, never on which worker ran a
client, so results are the same for any executor and worker count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from fedsim.errors import RunError
from fedsim.core.extension import RoundExtension
from fedsim.core.protocol import INVALID_UPDATE, ClientReply, ClientTask, failed_reply, reply
from fedsim.core.sampling import TRAIN, sample_clients, sample_from

from .availability import AlwaysOnline, Availability
from .clock import ClientTimes, SimulatedClock

OK, FAILED = "ok", "failed"
STRAGGLER, OFFLINE, SURPLUS = "straggler", "offline", "surplus"  # clients.csv statuses of dropped clients
DROPPED = (STRAGGLER, OFFLINE, SURPLUS)
DROPPED_CODE = 102  # the error code of a dropped client's reply (fedsim's own range, see protocol)
_ASYNC_STREAM = 0xA5


class NoClientAvailable(RunError):
    """No client is online to train, and none will be: the run cannot go on."""


@dataclass
class Dispatch:
    """What a scheduler may ask of the loop in a round.

    ``configure(round, ids)``: the strategy's tasks for these client ids (extensions applied),
    in client-id order. ``run(tasks)``: one screened reply per task, in task order.
    """

    configure: Callable[[int, list[int]], list[ClientTask]]
    run: Callable[[list[ClientTask]], list[ClientReply]]


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


class Scheduler(RoundExtension):
    """Base class: a round extension (for its checkpointed state) that runs rounds' training."""

    def train_round(self, server_round: int, dispatch: Dispatch) -> TrainingRound:
        raise NotImplementedError


def _dropped_reason(status: str, times: ClientTimes, i: int, start: float, until: float,
                    deadline: float, kept: int) -> str:
    total = float(times.total[i])
    if status == STRAGGLER:
        return f"straggler: needs {total:.1f} s of simulated time, more than the deadline of {deadline:g} s"
    if status == OFFLINE:
        return (f"offline: its availability ended at {until:.1f} s, before it would finish at "
                f"{start + total:.1f} s (simulated)")
    return f"surplus: over-selected; {kept} clients finished before it ({total:.1f} s)"


class SynchronousScheduler(Scheduler):
    """Synchronous rounds, optionally on a simulated clock with a deadline and over-selection.

    ``per_round`` is K. ``over_selection`` x samples ``ceil((1 + x) K)``; ``deadline`` (seconds,
    0 = none) drops clients whose round time exceeds it. The round's simulated duration is the
    time until the last kept client finishes; with over-selection and K kept clients, the K-th
    finisher's time; when a deadline is set and some client did not make it (straggler or
    offline), the deadline. Without a deadline a server notices an offline client when it goes
    offline. If no client is online when a round starts, the round first waits until one is.
    """

    def __init__(self, seed: int, num_clients: int, per_round: int, availability: Availability | None = None,
                 clock: SimulatedClock | None = None, deadline: float = 0.0, over_selection: float = 0.0,
                 train_dropped: bool = False) -> None:
        self.seed, self.num_clients, self.per_round = seed, num_clients, per_round
        self.availability = availability or AlwaysOnline(num_clients)
        self.clock = clock
        self.deadline = deadline
        self.over_selection = over_selection
        self.train_dropped = train_dropped
        self.now = 0.0

    def _sample(self, server_round: int, start: float) -> tuple[list[int], float]:
        """The round's sampled ids (only online clients) and the time the round really starts."""
        if type(self.availability) is AlwaysOnline and not self.over_selection:  # the plain loop's draw
            return sample_clients(self.seed, server_round, TRAIN, self.num_clients, self.per_round), start
        online = self.availability.online(start, server_round)
        if not online.any():
            if not self.availability.time_based:
                return [], start  # nobody drew "online" this round: a round without clients
            start = self.availability.next_online(start, server_round)
            if not math.isfinite(start):
                raise NoClientAvailable(
                    f"round {server_round}: no client is online at simulated time {self.now:.1f} s and none "
                    "will come online again (time.availability; a trace that does not repeat has ended: set "
                    "time.availability.period to repeat it)")
            online = self.availability.online(start, server_round)
        candidates = np.flatnonzero(online)
        size = min(math.ceil((1 + self.over_selection) * self.per_round), len(candidates))
        return sample_from(self.seed, server_round, TRAIN, candidates, size), start

    def train_round(self, server_round: int, dispatch: Dispatch) -> TrainingRound:
        ids, start = self._sample(server_round, self.now)
        tasks = dispatch.configure(server_round, ids) if ids else []
        if self.clock is None:
            return TrainingRound(tasks, dispatch.run(tasks) if tasks else [])
        waited = start - self.now
        if not tasks:
            return TrainingRound([], [], row=self._advance(start, 0.0, waited, 0))
        times = self.clock.task_times(server_round, tasks)
        total = times.total
        until = self.availability.online_until(times.client_ids, start, server_round)
        limit = self.deadline if self.deadline > 0 else math.inf
        status = np.full(len(tasks), OK, dtype=object)
        status[until < start + np.minimum(total, limit)] = OFFLINE
        status[(status == OK) & (total > limit)] = STRAGGLER
        kept = np.flatnonzero(status == OK)
        target = min(self.per_round, len(ids))
        if self.over_selection and len(kept) > target:
            order = kept[np.lexsort((times.client_ids[kept], total[kept]))]
            status[order[target:]] = SURPLUS
            kept = np.sort(order[:target])
        run = [i for i in range(len(tasks)) if status[i] == OK or self.train_dropped]
        replies = dict(zip(run, dispatch.run([tasks[i] for i in run]))) if run else {}
        columns = {int(times.client_ids[i]): times.columns(i, start) for i in range(len(tasks))}
        dropped = []
        for i in np.flatnonzero(status != OK):
            cid = int(times.client_ids[i])
            if status[i] == OFFLINE:
                columns[cid]["sim_finish"] = float(until[i])
            dropped.append(Dropped(cid, str(status[i]), _dropped_reason(str(status[i]), times, int(i), start,
                                                                        float(until[i]), self.deadline, target),
                                   replies.get(int(i)), columns[cid]))
        if self.over_selection and len(kept) == target and target:
            duration = float(total[kept].max())
        elif self.deadline > 0 and dropped and any(d.status != SURPLUS for d in dropped):
            duration = self.deadline
        else:
            ends = list(total[kept]) + [until[i] - start for i in np.flatnonzero(status == OFFLINE)]
            duration = float(max(ends)) if ends else 0.0
        arrived = [replies[int(i)] for i in kept]
        return TrainingRound(tasks, arrived, dropped, {r.client_id: columns[r.client_id] for r in arrived},
                             self._advance(start, duration, waited, len(dropped)))

    def _advance(self, start: float, duration: float, waited: float, dropped: int) -> dict[str, float]:
        self.now = start + duration
        return {"sim_round_seconds": waited + duration, "sim_time": self.now, "clients_dropped": dropped}

    def state(self) -> dict[str, Any]:
        return {"now": self.now}

    def load_state(self, state: dict[str, Any]) -> None:
        self.now = float(state["now"])


@dataclass
class _Flight:
    """A client training asynchronously: when it started and ends, from which round's model."""

    client_id: int
    dispatch_round: int
    times: dict[str, float]  # clients.csv time columns (sim_finish: when it arrives or drops)
    drop_at: float | None  # it goes offline at this time, before finishing (never arrives)
    reply: ClientReply | None = None  # computed when needed (all clients of one round together)
    task: ClientTask | None = None

    @property
    def event_time(self) -> float:
        return self.drop_at if self.drop_at is not None else self.times["sim_finish"]


class AsynchronousScheduler(Scheduler):
    """Buffered asynchronous training on the simulated clock (FedBuff; FedAsync with a buffer of 1).

    ``concurrency`` clients train at once; a server round ends when ``buffer_size`` successful
    updates arrived (or, when no more client can arrive for this model version, with fewer;
    or after ``buffer_size`` failed arrivals, for the loop's failure check). The staleness of
    an update is the number of server rounds between the one whose model it started from and
    the one that aggregates it.
    """

    def __init__(self, seed: int, num_clients: int, concurrency: int, buffer_size: int,
                 availability: Availability, clock: SimulatedClock) -> None:
        self.seed, self.num_clients = seed, num_clients
        self.concurrency = min(concurrency, num_clients)
        self.buffer_size = buffer_size
        self.availability = availability
        self.clock = clock
        self.now = 0.0
        self.in_flight: dict[int, _Flight] = {}

    def train_round(self, server_round: int, dispatch: Dispatch) -> TrainingRound:
        rng = np.random.default_rng([self.seed, server_round, TRAIN, _ASYNC_STREAM])
        started = self.now
        touched = np.zeros(self.num_clients, dtype=bool)  # dispatched, arrived or dropped this round
        dispatched: list[ClientTask] = []
        waiting: list[_Flight] = []  # dispatched this round, not computed yet

        def fill(t: float) -> None:
            free = self.concurrency - len(self.in_flight)
            if free <= 0:
                return
            eligible = self.availability.online(t, server_round) & ~touched
            eligible[list(self.in_flight)] = False
            candidates = np.flatnonzero(eligible)
            if not len(candidates):
                return
            picked = sorted(candidates[rng.choice(len(candidates), size=min(free, len(candidates)),
                                                  replace=False)].tolist())
            tasks = dispatch.configure(server_round, picked)
            times = self.clock.task_times(server_round, tasks)
            until = self.availability.online_until(times.client_ids, t, server_round)
            for i, task in enumerate(tasks):
                columns = times.columns(i, t)
                drop_at = float(until[i]) if until[i] < columns["sim_finish"] else None
                flight = _Flight(task.client_id, server_round, columns, drop_at, task=task)
                self.in_flight[task.client_id] = flight
                touched[task.client_id] = True
                if drop_at is None:
                    waiting.append(flight)
            dispatched.extend(tasks)

        def compute() -> None:
            if waiting:
                for flight, result in zip(waiting, dispatch.run([f.task for f in waiting])):
                    flight.reply = result
                waiting.clear()

        arrived: list[_Flight] = []
        dropped: list[_Flight] = []
        unknown: list[_Flight] = []  # arrived, but not computed yet: counted as successes until they are
        ok = failed = 0

        def resolve() -> tuple[int, int]:
            compute()
            outcomes = [f.reply.ok for f in unknown]
            unknown.clear()
            return sum(outcomes), len(outcomes) - sum(outcomes)

        fill(self.now)
        while ok < self.buffer_size and failed < self.buffer_size:
            if not self.in_flight:
                t = self.availability.next_online(self.now, server_round)
                if not math.isfinite(t) or (t == self.now and not (self.availability.online(t, server_round)
                                                                   & ~touched).any()):
                    break  # nobody can train on this model version any more: flush what arrived
                self.now = max(self.now, t)
                fill(self.now)
                if not self.in_flight:
                    break
                continue
            flight = min(self.in_flight.values(), key=lambda f: (f.event_time, f.client_id))
            del self.in_flight[flight.client_id]
            self.now = max(self.now, flight.event_time)
            touched[flight.client_id] = True
            if flight.drop_at is not None:
                dropped.append(flight)
            else:
                arrived.append(flight)
                if flight.reply is None:
                    unknown.append(flight)
                else:
                    ok, failed = ok + flight.reply.ok, failed + (not flight.reply.ok)
            fill(self.now)
            # The order of events does not depend on the outcomes (a failure frees its slot like a
            # success), only where the round stops does: so training is computed once, in one
            # batch, when the round would stop if every pending arrival succeeded.
            if unknown and (ok + len(unknown) >= self.buffer_size or not self.in_flight):
                good, bad = resolve()
                ok, failed = ok + good, failed + bad
        if unknown:
            good, bad = resolve()
            ok, failed = ok + good, failed + bad
        compute()  # the clients still training from this round's model: computed while it exists
        if not arrived and not dropped and not dispatched and self.availability.time_based:
            raise NoClientAvailable(
                f"round {server_round}: no client is online at simulated time {self.now:.1f} s, none is training "
                "and none will come online again (time.availability; a trace that does not repeat has ended: set "
                "time.availability.period to repeat it)")
        staleness = [server_round - f.dispatch_round for f in arrived if f.reply.ok]
        times = {f.client_id: {**f.times, "staleness": float(server_round - f.dispatch_round)} for f in arrived}
        drops = []
        notices = []
        for f in dropped:
            reason = (f"offline: its availability ended at {f.drop_at:.1f} s, before it would finish at "
                      f"{f.times['sim_finish']:.1f} s (simulated)")
            drops.append(Dropped(f.client_id, OFFLINE, reason, None, {**f.times, "sim_finish": f.drop_at}))
            notices.append(failed_reply(f.task, reason, DROPPED_CODE))
        row = {"sim_round_seconds": self.now - started, "sim_time": self.now, "clients_dropped": len(drops),
               "staleness_mean": float(np.mean(staleness)) if staleness else float("nan"),
               "staleness_max": float(max(staleness)) if staleness else float("nan")}
        return TrainingRound(dispatched, [f.reply for f in arrived], drops, times, row, notices)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        return {"now": self.now, "in_flight": [_flight_state(f) for f in self.in_flight.values()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.now = float(state["now"])
        self.in_flight = {}
        for entry in state["in_flight"]:
            flight = _flight_from_state(entry)
            self.in_flight[flight.client_id] = flight


def _task_for(client_id: int) -> ClientTask:
    """A stand-in train task for a restored flight (replies are built as answers to it)."""
    return ClientTask(client_id, Message(RecordDict(), dst_node_id=client_id, message_type=MessageType.TRAIN))


def _flight_state(flight: _Flight) -> dict[str, Any]:
    result: dict[str, Any] = {"client": flight.client_id, "round": flight.dispatch_round, "times": flight.times,
                              "drop_at": flight.drop_at}
    answer = flight.reply
    if answer is not None and answer.ok:
        result["arrays"] = answer.arrays
        result["metrics"] = {k: v for k, v in answer.metrics.items()}
    elif answer is not None:
        result["error"] = answer.error
        result["code"] = int(answer.message.error.code)
    return result


def _flight_from_state(entry: dict[str, Any]) -> _Flight:
    task = _task_for(int(entry["client"]))
    answer = None
    if "arrays" in entry:
        arrays = entry["arrays"]
        answer = ClientReply(task.client_id, reply(task.message, task.client_id, entry["metrics"],
                                                   arrays if isinstance(arrays, ArrayRecord) else ArrayRecord(arrays)))
    elif "error" in entry:
        answer = failed_reply(task, str(entry["error"]), int(entry.get("code", INVALID_UPDATE)))
    return _Flight(task.client_id, int(entry["round"]), dict(entry["times"]), entry["drop_at"], answer, task)
