"""The cohort executor: W Flower nodes act as workers; each round, one message per worker.

A worker is a Flower SuperNode that can run any client: every client's data is in the
memory-mapped dataset cache and its indices in the run directory, so no client is tied to a
node and no partition query is needed. Per phase, the executor assigns the round's tasks to the
workers by samples, not by count (greedy longest-processing-time first: the largest client to
the least-loaded worker), packs each worker's tasks into one message
(:func:`fedsim.protocol.pack_cohort`: records shared by several clients -- the global arrays --
travel once), sends all messages (:func:`~fedsim.executors.flower.send_and_collect`) and unpacks each worker's single
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
from flwr.serverapp import Grid

from fedsim.extension import RoundExtension, RoundRecord, RunContext
from fedsim.protocol import (
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

from .base import Executor
from .flower import send_and_collect, wait_for_nodes


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

    def __init__(self, grid: Grid, workers: int, client_sizes: np.ndarray, timeout: float,
                 stream_key: str = "") -> None:
        self.grid = grid
        self.stream_key = stream_key  # "" = every client's arrays travel back; else workers send partial means
        self._partials: list[Message] = []
        self.workers = workers
        self.client_sizes = np.asarray(client_sizes)
        self.timeout = timeout
        self.busy: list[list[float]] = []
        self.loads: list[dict] = []
        self._node_ids: list[int] | None = None

    def node_ids(self) -> list[int]:
        """The worker nodes, waited for once (:func:`~fedsim.executors.flower.wait_for_nodes`)."""
        if self._node_ids is None:
            self._node_ids = wait_for_nodes(self.grid, self.workers)[: self.workers]
        return self._node_ids

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        if not tasks:
            return []
        nodes = self.node_ids()
        shards = [shard for shard in balance([int(self.client_sizes[t.client_id]) for t in tasks], len(nodes))
                  if shard]
        phase = tasks[0].message.metadata.message_type
        stream_key = self.stream_key if phase == MessageType.TRAIN else ""
        num_clients = len(self.client_sizes)
        messages = [Message(pack_cohort([tasks[i] for i in shard], num_clients, stream_key), dst_node_id=node,
                            message_type=cohort_message_type(phase)) for node, shard in zip(nodes, shards)]
        answers = {reply.metadata.src_node_id: reply
                   for reply in send_and_collect(self.grid, messages, self.timeout)}
        replies: dict[int, ClientReply] = {}
        busy = []
        if stream_key:
            self._partials = []
        for worker, (node, shard) in enumerate(zip(nodes, shards)):
            shard_tasks = [tasks[i] for i in shard]
            answer = answers.get(node)
            if answer is None:
                unpacked = [failed_reply(t, "no reply before simulation.round_timeout (its worker did not answer)",
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
