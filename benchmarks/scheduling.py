"""The simulated clock's own cost: scheduler time per round, without any training.

A scheduler decides a round on the server before and after clients train: sampling among the
online clients, the clients' round times, deadline / over-selection, and for asynchronous
aggregation an event simulation with one dispatch per arrival. This benchmark drives the
schedulers with a stand-in loop (tasks are built, nothing trains: each "client" replies at once
with a LeNet-5-sized update) and prints the median scheduler time per round for populations
of 1,000 to 100,000 clients, side by side with the plain round (no clock) in the same run:

    python benchmarks/scheduling.py                          # 1k, 10k, 100k clients, 100 per round
    python benchmarks/scheduling.py --populations 1000 --per-round 50 --rounds 30

Columns: ``plain`` (``SynchronousScheduler`` without a clock, as every run without
``[time.devices]``), ``deadline`` (tiers, daily availability, a deadline and 30% over-selection),
``fedbuff`` (concurrency = 2 x per-round, buffer = per-round). The time of a real round is the
clients' training plus this; compare with the round times in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.clients.runner import ensure_task_identity
from fedsim.core.protocol import ARRAYS, NUM_EXAMPLES, ClientReply, ClientTask, reply
from fedsim.core.schedule import Scheduler, SampledRounds, drive
from fedsim.timing import AlwaysOnline, AsynchronousScheduler, Daily, SimulatedClock, SynchronousScheduler
from fedsim.timing.devices import tier_profiles

MODEL = ArrayRecord({"w": Array(np.zeros(62006, dtype=np.float32))})  # LeNet-5's size


CONTENT = RecordDict({ARRAYS: MODEL, "config": ConfigRecord({"server-round": 1})})


def configure(ids: list[int]) -> list[ClientTask]:
    return [ClientTask(c, Message(CONTENT, dst_node_id=c, message_type=MessageType.TRAIN)) for c in ids]


def train(tasks: list[ClientTask]) -> list[ClientReply]:
    return [ClientReply(t.client_id, reply(t.message, t.client_id, {NUM_EXAMPLES: 50}, MODEL)) for t in tasks]


def one_round(scheduler: Scheduler, server_round: int) -> None:
    """Answer the scheduler's requests for a round with ready-made tasks and replies (no training)."""
    drive(scheduler.train_round(server_round), configure, train)


def clock(n: int, seed: int) -> SimulatedClock:
    profiles = tier_profiles(n, seed, ["fast", "medium", "slow"], [], 0.5, 0.5)
    return SimulatedClock(profiles, np.ones(n), np.full(n, 50.0), seed, lambda task: MODEL.count_bytes())


def schedulers(n: int, k: int, seed: int) -> dict[str, object]:
    return {
        "plain": SampledRounds(seed, n, k),
        "deadline": SynchronousScheduler(seed, n, k, Daily(n, 16, 24, seed), clock(n, seed), deadline=2.0,
                                         over_selection=0.3),
        "fedbuff": AsynchronousScheduler(seed, n, 2 * k, k, AlwaysOnline(n), clock(n, seed)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", default="1000,10000,100000")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ensure_task_identity()
    print(f"median scheduler milliseconds per round ({args.per_round} clients per round, {args.rounds} rounds, "
          "interleaved; no training)")
    print(f"{'clients':>9} | {'plain':>8} | {'deadline':>9} | {'fedbuff':>8} | deadline/plain | fedbuff/plain")
    for n in (int(p) for p in args.populations.split(",")):
        timed = {name: [] for name in ("plain", "deadline", "fedbuff")}
        runs = schedulers(n, args.per_round, args.seed)
        for server_round in range(1, args.rounds + 1):
            for name, scheduler in runs.items():  # interleaved: the machine's noise hits all alike
                started = time.perf_counter()
                one_round(scheduler, server_round)
                timed[name].append(time.perf_counter() - started)
        median = {name: 1e3 * statistics.median(values) for name, values in timed.items()}
        print(f"{n:>9} | {median['plain']:>8.2f} | {median['deadline']:>9.2f} | {median['fedbuff']:>8.2f} | "
              f"{median['deadline'] / median['plain']:>14.1f} | {median['fedbuff'] / median['plain']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
