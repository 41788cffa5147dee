"""The executor on Flower's runtime: one simulated SuperNode per client, one message per task.

Behind this executor live the things the round loop must not know: Flower node ids, the
partition query that maps partition ids to nodes (one ``QUERY`` message per node, once per
run) and the ``Grid``. Tasks are addressed by client id; this executor rewrites each task's
destination to the node hosting that client, sends all tasks (:func:`send_and_collect`) and
maps the replies back. A client that does not answer within ``timeout`` seconds gets an error
reply ("no reply before executor.round_timeout").
"""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.ops.interrupt import check_stop
from fedsim.core.protocol import CLIENT, NO_REPLY, PARTITION_ID, ClientReply, ClientTask, failed_reply

from fedsim.core.executor import Executor


REPLY_POLL_SECONDS = 0.01  # how often to look for replies (Flower's grid: every 0.1 s)


def send_and_collect(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Flower's ``grid.send_and_receive``, looking for replies every 10 ms and watching for Ctrl-C.

    Pushes ``messages`` and pulls replies until all arrived or ``timeout`` seconds passed (the
    missing ones are simply absent). With few, fat messages per round (cohorts) Flower's
    0.1 s interval would add up to 0.1 s to every phase; and a stop request
    (:mod:`fedsim.ops.interrupt`) ends the wait at once instead of after the round's timeout.
    """
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        check_stop()
        found = list(grid.pull_messages(pending))
        replies.extend(found)
        pending.difference_update(m.metadata.reply_to_message_id for m in found)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(REPLY_POLL_SECONDS)
    return replies


def wait_for_nodes(grid: Grid, count: int, wait: float) -> list[int]:
    """The grid's node ids once ``count`` nodes are up (at most ``wait`` seconds,
    ``runtime.node_wait``; starting Ray and its workers is not a round)."""
    deadline = time.monotonic() + wait
    while len(node_ids := sorted(grid.get_node_ids())) < count:
        check_stop()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(node_ids)} of {count} nodes came up within runtime.node_wait = {wait:g} s: "
                "Ray could not start them (check runtime.num_cpus_per_client, num_gpus_per_client and "
                "ray_num_cpus against this machine, and run with --verbose to see Ray's log)")
        time.sleep(0.05)
    return node_ids


def map_partitions_to_nodes(grid: Grid, num_clients: int, timeout: float, wait: float) -> dict[int, int]:
    """Ask every node which partition it hosts (one query message each): partition id -> node id."""
    node_ids = wait_for_nodes(grid, num_clients, wait)
    queries = [Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
    mapping: dict[int, int] = {}
    for reply in send_and_collect(grid, queries, max(timeout, wait)):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed the partition query: "
                               f"{reply.error.reason}")
        mapping[int(reply.content[CLIENT][PARTITION_ID])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(mapping))
    if missing:
        raise RuntimeError(f"no node reported partitions {missing[:10]}")
    return mapping


class GridExecutor(Executor):
    """Sends each task to the Flower node hosting its client through ``grid``."""

    def __init__(self, grid: Grid, num_clients: int, timeout: float, wait: float = 300.0) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = timeout
        self.wait = wait
        self._node_of: dict[int, int] | None = None

    def node_of(self) -> dict[int, int]:
        """Partition id -> node id, queried on first use."""
        if self._node_of is None:
            self._node_of = map_partitions_to_nodes(self.grid, self.num_clients, self.timeout, self.wait)
        return self._node_of

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        node_of = self.node_of()
        client_of = {node: client for client, node in node_of.items()}
        for task in tasks:
            task.message.metadata.dst_node_id = node_of[task.client_id]
        answers: dict[int, Message] = {}
        for reply in send_and_collect(self.grid, [t.message for t in tasks], self.timeout):
            answers[client_of[reply.metadata.src_node_id]] = reply
        return [ClientReply(t.client_id, answers[t.client_id]) if t.client_id in answers
                else failed_reply(t, "no reply before executor.round_timeout", NO_REPLY) for t in tasks]
