"""The in-process executor: call the ClientApp directly, one client after another, no Ray.

Each client gets a Flower ``Context`` of its own (``node_config`` with its ``partition-id``
and ``num-partitions``, a ``state`` kept across rounds), exactly what a simulated SuperNode
would give it, and the ClientApp (with its mods) is called on the task's message in this
thread, with as many torch threads as a Ray worker of ``simulation.num_cpus_per_client`` CPUs
gets, so that results match the Flower executor's. An exception becomes an error reply, as
Flower's runtime would report it. There is no timeout: a client that hangs blocks the round.
Used by the fast tests, for debugging and for small runs (``simulation.executor =
"in-process"``).
"""

from __future__ import annotations

import torch
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedsim.protocol import PARTITION_ID, ClientReply, ClientTask, failed_reply

from .base import Executor


SERVER_NODE_ID = 1  # Flower's SUPERLINK_NODE_ID: messages from the server come from this node


def _claim_task_identity(run_id: int) -> None:
    """Give this process the task identity Flower's ``Message`` constructor reads.

    Flower's runtime sets it when it starts a ServerApp; outside a runtime nobody has, and
    strategies could not build messages. An identity that is already set is left alone.
    """
    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID


class InProcessExecutor(Executor):
    """Runs every task by calling ``client_app(message, context)`` in this process."""

    def __init__(self, client_app: ClientApp, num_clients: int, threads_per_client: int = 1, run_id: int = 0) -> None:
        self.client_app = client_app
        self.num_clients = num_clients
        self.threads_per_client = max(1, int(threads_per_client))
        self.run_id = run_id
        self._contexts: dict[int, Context] = {}
        _claim_task_identity(run_id)

    def context(self, client_id: int) -> Context:
        """The client's Flower context, created on first use and kept for the run."""
        if client_id not in self._contexts:
            self._contexts[client_id] = Context(
                run_id=self.run_id, node_id=client_id,
                node_config={PARTITION_ID: client_id, "num-partitions": self.num_clients},
                state=RecordDict(), run_config={},
            )
        return self._contexts[client_id]

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        replies = []
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_per_client)  # as a Ray worker with these CPUs
        try:
            for task in tasks:
                try:
                    message = self.client_app(task.message, self.context(task.client_id))
                except Exception as error:  # noqa: BLE001 - a client's failure is a reply, as in Flower
                    replies.append(failed_reply(task, f"{type(error).__name__}: {error}"))
                    continue
                replies.append(ClientReply(task.client_id, message))
        finally:
            torch.set_num_threads(threads)
        return replies
