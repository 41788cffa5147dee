"""The executor on Flower's runtime: one simulated SuperNode per client, one message per task.

Behind this executor live the things the round loop must not know: Flower node ids, the
partition query that maps partition ids to nodes (one ``QUERY`` message per node, once per
run) and the ``Grid``. Tasks are addressed by client id; this executor rewrites each task's
destination to the node hosting that client, sends all tasks with ``send_and_receive`` and
maps the replies back. A client that does not answer within ``timeout`` seconds gets an error
reply ("no reply before simulation.round_timeout").
"""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.protocol import CLIENT, NO_REPLY, PARTITION_ID, ClientReply, ClientTask, failed_reply

from .base import Executor


REPLY_POLL_SECONDS = 0.01  # how often the grid looks for replies (Flower's default: every 0.1 s)


def poll_replies_often(grid: Grid) -> None:
    """Let ``grid.send_and_receive`` look for replies every 10 ms instead of every 100 ms.

    Flower's in-memory grid sleeps ``pull_interval`` seconds between looks; with few, fat
    messages per round (cohorts) the default adds up to 0.1 s to every phase. Grids without the
    attribute are left alone.
    """
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = min(float(grid.pull_interval), REPLY_POLL_SECONDS)


def map_partitions_to_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node which partition it hosts (one query message each): partition id -> node id."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {num_clients} simulated nodes came up "
                               f"within {timeout:.0f} s")
        time.sleep(0.05)
    queries = [Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
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

    def __init__(self, grid: Grid, num_clients: int, timeout: float) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = timeout
        self._node_of: dict[int, int] | None = None
        poll_replies_often(grid)

    def node_of(self) -> dict[int, int]:
        """Partition id -> node id, queried on first use."""
        if self._node_of is None:
            self._node_of = map_partitions_to_nodes(self.grid, self.num_clients, min(self.timeout, 600.0))
        return self._node_of

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        node_of = self.node_of()
        client_of = {node: client for client, node in node_of.items()}
        for task in tasks:
            task.message.metadata.dst_node_id = node_of[task.client_id]
        answers: dict[int, Message] = {}
        for reply in self.grid.send_and_receive([t.message for t in tasks], timeout=self.timeout):
            answers[client_of[reply.metadata.src_node_id]] = reply
        return [ClientReply(t.client_id, answers[t.client_id]) if t.client_id in answers
                else failed_reply(t, "no reply before simulation.round_timeout", NO_REPLY) for t in tasks]
