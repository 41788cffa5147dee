"""The cohort executor: W Flower nodes act as workers; each round, one message per worker.

A worker is a Flower SuperNode that can run any client: every client's data is in the
memory-mapped dataset cache and its indices in the run directory, so no client is tied to a
node and no partition query is needed. Per phase, the executor assigns the round's tasks to the
workers by samples, not by count (greedy longest-processing-time first: the largest client to
the least-loaded worker), packs each worker's tasks into one message
(:func:`fedsim.protocol.pack_cohort`: records shared by several clients -- the global arrays --
travel once), sends all messages with ``send_and_receive`` and unpacks each worker's single
reply into per-client replies, in task order. Strategies aggregate unchanged.

Results do not depend on the number of workers or on which worker ran a client: each client's
randomness comes from (seed, round, client id) and replies come back in task order (tested).
A client that raises is that client's failure; a worker whose message fails or does not answer
within ``timeout`` fails its clients of that round.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.protocol import (
    NO_REPLY,
    ClientReply,
    ClientTask,
    cohort_message_type,
    cohort_seconds,
    failed_reply,
    pack_cohort,
    unpack_cohort_replies,
)

from .base import Executor


def balance(sizes: list[int], workers: int) -> list[list[int]]:
    """Task positions per worker: largest first to the least-loaded worker (ties: lowest index)."""
    loads = [0] * workers
    shards: list[list[int]] = [[] for _ in range(workers)]
    for position in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = min(range(workers), key=lambda w: (loads[w], w))
        shards[target].append(position)
        loads[target] += sizes[position]
    return [sorted(shard) for shard in shards]


class CohortExecutor(Executor):
    """Sends each worker node one message with its share of the round's client tasks.

    ``client_sizes[c]`` is client c's number of training samples (the balance weight).
    ``busy`` keeps, per ``execute`` call, each worker's reported seconds (NaN for a failure).
    """

    def __init__(self, grid: Grid, workers: int, client_sizes: np.ndarray, timeout: float) -> None:
        self.grid = grid
        self.workers = workers
        self.client_sizes = np.asarray(client_sizes)
        self.timeout = timeout
        self.busy: list[list[float]] = []
        self._node_ids: list[int] | None = None

    def node_ids(self) -> list[int]:
        """The worker nodes, waited for once (at most ``timeout`` or 600 s)."""
        if self._node_ids is None:
            deadline = time.monotonic() + min(self.timeout, 600.0)
            while len(ids := sorted(self.grid.get_node_ids())) < self.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(ids)} of {self.workers} worker nodes came up")
                time.sleep(0.05)
            self._node_ids = ids[: self.workers]
        return self._node_ids

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        if not tasks:
            return []
        nodes = self.node_ids()
        shards = [shard for shard in balance([int(self.client_sizes[t.client_id]) for t in tasks], len(nodes))
                  if shard]
        message_type = cohort_message_type(tasks[0].message.metadata.message_type)
        num_clients = len(self.client_sizes)
        messages = [Message(pack_cohort([tasks[i] for i in shard], num_clients), dst_node_id=node,
                            message_type=message_type) for node, shard in zip(nodes, shards)]
        answers = {reply.metadata.src_node_id: reply
                   for reply in self.grid.send_and_receive(messages, timeout=self.timeout)}
        replies: dict[int, ClientReply] = {}
        busy = []
        for node, shard in zip(nodes, shards):
            shard_tasks = [tasks[i] for i in shard]
            answer = answers.get(node)
            if answer is None:
                unpacked = [failed_reply(t, "no reply before simulation.round_timeout (its worker did not answer)",
                                         NO_REPLY) for t in shard_tasks]
                busy.append(float("nan"))
            else:
                unpacked = unpack_cohort_replies(answer, shard_tasks)
                busy.append(cohort_seconds(answer))
            replies.update(zip(shard, unpacked))
        self.busy.append(busy)
        return [replies[i] for i in range(len(tasks))]
