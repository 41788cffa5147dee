"""The cohort executor: W Flower nodes act as workers; each round, one message per worker.

A worker is a Flower SuperNode. The nodes join the run first (:class:`~fedsim.runs.executors.nodes.NodePool`).
A node that reads the run directory (Flower's simulation runtime, or SuperNodes on the
server's machine or a shared file system) can run any client: every client's data is in the
memory-mapped dataset cache and its indices in the run directory, so per phase the executor
assigns the round's tasks to those nodes by samples, not by count (greedy longest-processing-
time first: the largest client to the least-loaded worker). A node with its own data (a
deployment; :mod:`fedsim.clients.node`) takes the clients of its shard; a shard whose node
has not joined or has left fails its clients of that phase. Each worker's tasks go in one message
(:func:`fedsim.core.protocol.pack_cohort`: records shared by several clients -- the global arrays --
travel once), sends all messages (:func:`~fedsim.runs.executors.flower.send_and_collect`) and unpacks each worker's single
reply into per-client replies, in task order. Strategies aggregate unchanged.

Results do not depend on the number of workers or on which worker ran a client: each client's
randomness comes from (seed, round, client id) and replies come back in task order (tested).
A client that raises is that client's failure; a worker whose message fails or does not answer
within ``timeout`` fails its clients of that round. What every worker did per round and phase
(clients, training samples, busy seconds) goes to the run's ``workers.csv``
(:class:`WorkerLoad`), so imbalance is visible.
"""

from __future__ import annotations


import numpy as np
from flwr.app import Message, MessageType

from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.core.protocol import (
    NO_REPLY,
    ClientReply,
    ClientTask,
    cohort_message_type,
    cohort_partial,
    cohort_seconds,
    failed_reply,
    pack_cohort,
    unpack_cohort_replies,
)

from fedsim.core.executor import Executor
from .flower import send_and_collect
from .nodes import NodePool


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
    ``busy`` keeps, per ``execute`` call, each worker's reported seconds (NaN for a failure);
    ``loads`` the rows for ``workers.csv`` not yet written. With a ``stream_key`` (streaming
    aggregation), training workers reply with the weighted mean of their clients' arrays
    instead of every model, and :meth:`aggregation_inputs` hands those partial means to the
    strategy; the per-client replies keep their metrics and record their upload size.
    """

    def __init__(self, pool: NodePool, client_sizes: np.ndarray, timeout: float,
                 stream_key: str = "", threads: int = 0) -> None:
        self.pool = pool
        self.grid = pool.grid
        self.stream_key = stream_key  # "" = every client's arrays travel back; else workers send partial means
        self.threads = threads  # torch threads per client on the nodes (0: the node's default)
        self._partials: list[Message] = []
        self.client_sizes = np.asarray(client_sizes)
        self.timeout = timeout
        self.busy: list[list[float]] = []
        self.loads: list[dict] = []

    def plan(self, tasks: list[ClientTask]) -> tuple[list[tuple[int, int, list[int]]], list[int], str]:
        """(worker, node, task positions) per message, the positions no node can take, and why.

        Nodes reading the run directory share the tasks by samples (:func:`balance`); a node
        with its own data takes its shard's clients (client ``c`` -> shard ``c % shards``).
        """
        self.pool.refresh()
        if self.pool.shards is None:
            nodes = self.pool.shared_nodes()
            if not nodes:
                return [], list(range(len(tasks))), "no node serves the run (every node left)"
            shards = balance([int(self.client_sizes[t.client_id]) for t in tasks], len(nodes))
            return [(w, node, shard) for w, (node, shard) in enumerate(zip(nodes, shards)) if shard], [], ""
        hosted, by_shard, orphans = self.pool.hosted(), {}, []
        for position, task in enumerate(tasks):
            shard = task.client_id % self.pool.shards
            (by_shard.setdefault(shard, []) if shard in hosted else orphans).append(position)
        reason = (f"no node hosts its shard (client id mod {self.pool.shards}): that SuperNode has not joined or "
                  "has left")
        return [(shard, hosted[shard], positions) for shard, positions in sorted(by_shard.items())], orphans, reason

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        if not tasks:
            return []
        plan, orphans, orphan_reason = self.plan(tasks)
        phase = tasks[0].message.metadata.message_type
        stream_key = self.stream_key if phase == MessageType.TRAIN else ""
        num_clients = len(self.client_sizes)
        messages = [Message(pack_cohort([tasks[i] for i in shard], num_clients, stream_key, self.threads),
                            dst_node_id=node, message_type=cohort_message_type(phase)) for _, node, shard in plan]
        answers = {reply.metadata.src_node_id: reply
                   for reply in send_and_collect(self.grid, messages, self.timeout)} if messages else {}
        replies: dict[int, ClientReply] = {i: failed_reply(tasks[i], orphan_reason, NO_REPLY) for i in orphans}
        busy = []
        if stream_key:
            self._partials = []
        for worker, node, shard in plan:
            shard_tasks = [tasks[i] for i in shard]
            answer = answers.get(node)
            if answer is None:
                unpacked = [failed_reply(t, "no reply before executor.round_timeout (its worker did not answer)",
                                         NO_REPLY) for t in shard_tasks]
                busy.append(float("nan"))
            else:
                unpacked = unpack_cohort_replies(answer, shard_tasks)
                busy.append(cohort_seconds(answer))
                partial = cohort_partial(answer, shard_tasks[0]) if stream_key else None
                if partial is not None:
                    self._partials.append(partial)
            replies.update(zip(shard, unpacked))
            self.loads.append({"phase": phase, "worker": worker, "clients": len(shard),
                               "samples": int(sum(self.client_sizes[t.client_id] for t in shard_tasks)),
                               "failed": sum(not r.ok for r in unpacked), "seconds": busy[-1]})
        self.busy.append(busy)
        return [replies[i] for i in range(len(tasks))]

    def aggregation_inputs(self, replies: list[ClientReply]) -> list[Message]:
        return list(self._partials) if self.stream_key else super().aggregation_inputs(replies)

    def round_extensions(self) -> list[RoundExtension]:
        return [WorkerLoad(self)]


class WorkerLoad(RoundExtension):
    """Writes what each worker did in a round (per phase) to ``workers.csv``."""

    COLUMNS = ("round", "phase", "worker", "clients", "samples", "failed", "seconds")

    def __init__(self, executor: CohortExecutor) -> None:
        self.executor = executor
        self.path = None

    def on_run_start(self, run: RunContext, arrays) -> dict[str, float]:  # noqa: ANN001 - ArrayRecord
        self.path = run.recorder.folder / "workers.csv"
        if not run.resumed_after or not self.path.is_file():
            self.path.write_text(",".join(self.COLUMNS) + "\n")
        self.executor.loads.clear()
        return {}

    def on_round_end(self, record: RoundRecord, arrays) -> None:  # noqa: ANN001 - ArrayRecord
        assert self.path is not None, "on_run_start comes first"
        with self.path.open("a") as handle:
            for load in self.executor.loads:
                row = {"round": record.server_round, **load}
                handle.write(",".join("" if row[c] != row[c] else str(row[c]) for c in self.COLUMNS) + "\n")
        self.executor.loads.clear()
