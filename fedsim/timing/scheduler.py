"""Schedulers on a simulated clock: which clients train, when each finishes, what reaches the strategy.

The round loop (:mod:`fedsim.core.loop`) asks its scheduler for a round's training
(:mod:`fedsim.core.schedule`): the scheduler picks client ids, requests their tasks
(:class:`~fedsim.core.schedule.Configure`) and their training
(:class:`~fedsim.core.schedule.Train`), and returns a :class:`TrainingRound`: the tasks sent,
the replies the server received, the clients that dropped out, and the simulated-time columns
of the round and of every client.

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
  of 1). It is an event simulation over an explicit queue of the clients in flight
  (:class:`EventQueue`), ordered by when each arrives or drops out. Clients that start from the
  same model version are executed together, normally in one batch per round, so a cohort
  worker trains them in one message. A client trains at most once per server round and
  contributes at most one update to a buffer.

All choices depend on (seed, round) and the simulated clock alone, never on which worker ran a
client, so results are the same for any executor and worker count.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from fedsim.core.protocol import INVALID_UPDATE, ClientReply, ClientTask, failed_reply, reply
from fedsim.core.sampling import TRAIN, sample_clients, sample_from
from fedsim.core.schedule import Configure, Dropped, RoundSchedule, Scheduler, Train, TrainingRound
from fedsim.errors import RunError

from .availability import AlwaysOnline, Availability
from .clock import ClientTimes, SimulatedClock

OK, FAILED = "ok", "failed"
STRAGGLER, OFFLINE, SURPLUS = "straggler", "offline", "surplus"  # clients.csv statuses of dropped clients
DROPPED = (STRAGGLER, OFFLINE, SURPLUS)
DROPPED_CODE = 102  # the error code of a dropped client's reply (fedsim's own range, see protocol)
_ASYNC_STREAM = 0xA5


class NoClientAvailable(RunError):
    """No client is online to train, and none will be: the run cannot go on."""


def _no_client_error(server_round: int, now: float, training: bool = False) -> NoClientAvailable:
    busy = ", none is training" if training else ""
    return NoClientAvailable(
        f"round {server_round}: no client is online at simulated time {now:.1f} s{busy} and none will come online "
        "again (time.availability; a trace that does not repeat has ended: set time.availability.period to "
        "repeat it)")


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
                raise _no_client_error(server_round, self.now)
            online = self.availability.online(start, server_round)
        candidates = np.flatnonzero(online)
        size = min(math.ceil((1 + self.over_selection) * self.per_round), len(candidates))
        return sample_from(self.seed, server_round, TRAIN, candidates, size), start

    def train_round(self, server_round: int) -> RoundSchedule:
        ids, start = self._sample(server_round, self.now)
        tasks = (yield Configure(ids)) if ids else []
        if self.clock is None:  # no clock: every sampled client is waited for
            return TrainingRound(tasks, (yield Train(tasks)) if tasks else [])
        waited = start - self.now
        if not tasks:
            return TrainingRound([], [], row=self._advance(start, 0.0, waited, 0))
        # on the clock: each client's finish time decides whether it is kept, late or offline
        times = self.clock.task_times(server_round, tasks)
        total = times.total
        until = self.availability.online_until(times.client_ids, start, server_round)
        limit = self.deadline if self.deadline > 0 else math.inf
        status = np.full(len(tasks), OK, dtype=object)
        status[until < start + np.minimum(total, limit)] = OFFLINE
        status[(status == OK) & (total > limit)] = STRAGGLER
        kept = np.flatnonzero(status == OK)
        target = min(self.per_round, len(ids))
        if self.over_selection and len(kept) > target:  # keep the first K to finish
            order = kept[np.lexsort((times.client_ids[kept], total[kept]))]
            status[order[target:]] = SURPLUS
            kept = np.sort(order[:target])
        # only the kept clients are trained, unless the dropped ones are trained too (and discarded)
        run = [i for i in range(len(tasks)) if status[i] == OK or self.train_dropped]
        replies = dict(zip(run, (yield Train([tasks[i] for i in run])))) if run else {}
        columns = {int(times.client_ids[i]): times.columns(i, start) for i in range(len(tasks))}
        dropped = []
        for i in np.flatnonzero(status != OK):
            cid = int(times.client_ids[i])
            if status[i] == OFFLINE:
                columns[cid]["sim_finish"] = float(until[i])
            dropped.append(Dropped(cid, str(status[i]), _dropped_reason(str(status[i]), times, int(i), start,
                                                                        float(until[i]), self.deadline, target),
                                   replies.get(int(i)), columns[cid]))
        # the round lasts until its last kept client (or the K-th finisher, or the deadline)
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


class EventQueue:
    """The clients in flight, ordered by their next event: arriving, or dropping out (ties: client id)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Flight]] = []

    def push(self, flight: _Flight) -> None:
        heapq.heappush(self._heap, (flight.event_time, flight.client_id, flight))

    def pop(self) -> _Flight:
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def client_ids(self) -> list[int]:
        return [entry[1] for entry in self._heap]

    def flights(self) -> list[_Flight]:
        """Every flight, in event order."""
        return [entry[2] for entry in sorted(self._heap, key=lambda e: e[:2])]


@dataclass
class _AsyncRound:
    """What happened so far in one server round of the asynchronous scheduler."""

    rng: np.random.Generator
    touched: np.ndarray  # clients dispatched, arrived or dropped this round (each trains at most once)
    dispatched: list[ClientTask] = field(default_factory=list)
    waiting: list[_Flight] = field(default_factory=list)  # dispatched this round, not computed yet
    arrived: list[_Flight] = field(default_factory=list)
    dropped: list[_Flight] = field(default_factory=list)
    unknown: list[_Flight] = field(default_factory=list)  # arrived, not computed yet: counted as successes
    ok: int = 0
    failed: int = 0


class AsynchronousScheduler(Scheduler):
    """Buffered asynchronous training on the simulated clock (FedBuff; FedAsync with a buffer of 1).

    ``concurrency`` clients train at once; a server round ends when ``buffer_size`` successful
    updates arrived (or, when no more client can arrive for this model version, with fewer;
    or after ``buffer_size`` failed arrivals, for the loop's failure check). The staleness of
    an update is the number of server rounds between the one whose model it started from and
    the one that aggregates it.

    The order of events does not depend on the outcomes (a failure frees its slot like a
    success); only where the round stops does. So training is requested once, in one batch,
    when the round would stop if every pending arrival succeeded.
    """

    def __init__(self, seed: int, num_clients: int, concurrency: int, buffer_size: int,
                 availability: Availability, clock: SimulatedClock) -> None:
        self.seed, self.num_clients = seed, num_clients
        self.concurrency = min(concurrency, num_clients)
        self.buffer_size = buffer_size
        self.availability = availability
        self.clock = clock
        self.now = 0.0
        self.in_flight = EventQueue()

    def train_round(self, server_round: int) -> RoundSchedule:
        started = self.now
        state = _AsyncRound(np.random.default_rng([self.seed, server_round, TRAIN, _ASYNC_STREAM]),
                            np.zeros(self.num_clients, dtype=bool))
        yield from self._fill(state, server_round)
        while state.ok < self.buffer_size and state.failed < self.buffer_size:
            if not len(self.in_flight):  # nobody training: wait until a client comes online
                t = self.availability.next_online(self.now, server_round)
                if not math.isfinite(t) or (t == self.now and not (self.availability.online(t, server_round)
                                                                   & ~state.touched).any()):
                    break  # nobody can train on this model version any more: flush what arrived
                self.now = max(self.now, t)
                yield from self._fill(state, server_round)
                if not len(self.in_flight):
                    break
                continue
            self._next_event(state)
            yield from self._fill(state, server_round)
            if state.unknown and (state.ok + len(state.unknown) >= self.buffer_size or not len(self.in_flight)):
                yield from self._resolve(state)
        if state.unknown:
            yield from self._resolve(state)
        yield from self._compute(state)  # the clients still training from this round's model
        if not state.arrived and not state.dropped and not state.dispatched and self.availability.time_based:
            raise _no_client_error(server_round, self.now, training=True)
        return self._training_round(state, server_round, started)

    def _next_event(self, state: _AsyncRound) -> None:
        """Advance the clock to the next arrival or drop-out and book it."""
        flight = self.in_flight.pop()
        self.now = max(self.now, flight.event_time)
        state.touched[flight.client_id] = True
        if flight.drop_at is not None:
            state.dropped.append(flight)
            return
        state.arrived.append(flight)
        if flight.reply is None:
            state.unknown.append(flight)
        else:
            state.ok, state.failed = state.ok + flight.reply.ok, state.failed + (not flight.reply.ok)

    def _fill(self, state: _AsyncRound, server_round: int) -> RoundSchedule:
        """Start clients on free slots: online, not yet touched this round, not training."""
        free = self.concurrency - len(self.in_flight)
        if free <= 0:
            return
        eligible = self.availability.online(self.now, server_round) & ~state.touched
        eligible[self.in_flight.client_ids] = False
        candidates = np.flatnonzero(eligible)
        if not len(candidates):
            return
        picked = sorted(candidates[state.rng.choice(len(candidates), size=min(free, len(candidates)),
                                                    replace=False)].tolist())
        tasks = yield Configure(picked)
        times = self.clock.task_times(server_round, tasks)
        until = self.availability.online_until(times.client_ids, self.now, server_round)
        for i, task in enumerate(tasks):
            columns = times.columns(i, self.now)
            drop_at = float(until[i]) if until[i] < columns["sim_finish"] else None
            flight = _Flight(task.client_id, server_round, columns, drop_at, task=task)
            self.in_flight.push(flight)
            state.touched[task.client_id] = True
            if drop_at is None:
                state.waiting.append(flight)
        state.dispatched.extend(tasks)

    def _compute(self, state: _AsyncRound) -> RoundSchedule:
        """Train the clients dispatched this round that will arrive (in one request)."""
        if state.waiting:
            for flight, result in zip(state.waiting, (yield Train([f.task for f in state.waiting]))):
                flight.reply = result
            state.waiting.clear()

    def _resolve(self, state: _AsyncRound) -> RoundSchedule:
        """Compute the pending arrivals and count their outcomes."""
        yield from self._compute(state)
        outcomes = [f.reply.ok for f in state.unknown]
        state.unknown.clear()
        state.ok, state.failed = state.ok + sum(outcomes), state.failed + len(outcomes) - sum(outcomes)

    def _training_round(self, state: _AsyncRound, server_round: int, started: float) -> TrainingRound:
        staleness = [server_round - f.dispatch_round for f in state.arrived if f.reply.ok]
        times = {f.client_id: {**f.times, "staleness": float(server_round - f.dispatch_round)} for f in state.arrived}
        drops, notices = [], []
        for f in state.dropped:
            reason = (f"offline: its availability ended at {f.drop_at:.1f} s, before it would finish at "
                      f"{f.times['sim_finish']:.1f} s (simulated)")
            drops.append(Dropped(f.client_id, OFFLINE, reason, None, {**f.times, "sim_finish": f.drop_at}))
            notices.append(failed_reply(f.task, reason, DROPPED_CODE))
        row = {"sim_round_seconds": self.now - started, "sim_time": self.now, "clients_dropped": len(drops),
               "staleness_mean": float(np.mean(staleness)) if staleness else float("nan"),
               "staleness_max": float(max(staleness)) if staleness else float("nan")}
        return TrainingRound(state.dispatched, [f.reply for f in state.arrived], drops, times, row, notices)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        return {"now": self.now, "in_flight": [_flight_state(f) for f in self.in_flight.flights()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.now = float(state["now"])
        self.in_flight = EventQueue()
        for entry in state["in_flight"]:
            self.in_flight.push(_flight_from_state(entry))


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
