"""Run client tasks through the ClientApp in this process, one client after another.

Shared by the in-process executor (the server's process runs every client) and a cohort
worker (a Flower node runs the clients of its shard): each client gets a Flower ``Context``
of its own, as a simulated SuperNode would give it (``node_config`` with its
``partition-id``, a ``state`` kept across rounds), the ClientApp (with its mods) is called on
the client's message, and an exception becomes that client's error reply -- the other
clients go on. A client that takes longer than ``executor.client_timeout`` is interrupted by
the client handler (:func:`fedsim.clients.limits.time_limit`) and fails alone.
"""

from __future__ import annotations

import torch
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedsim.ops.interrupt import check_stop
from fedsim.core.protocol import PARTITION_ID, ClientReply, ClientTask, failed_reply

from .lockstep.planner import OUTCOMES, train_in_lockstep


SERVER_NODE_ID = 1  # Flower's SUPERLINK_NODE_ID


def ensure_task_identity(run_id: int = 0) -> None:
    """Give this process the task identity Flower's ``Message`` constructor reads, if it has none.

    Flower's runtime sets it in the processes it starts a ServerApp or ClientApp in; a process
    that builds messages outside one (the in-process executor; a cohort worker unpacking its
    clients' tasks) needs one too. An identity that is already set is left alone.
    """
    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID


class ClientRunner:
    """Calls ``client_app(message, context)`` for each task, with a context per client.

    ``threads_per_client`` (None: leave torch's setting alone) is the number of torch threads a
    client trains with, so that float reductions match a Ray worker with that many CPUs.
    """

    def __init__(self, client_app: ClientApp, num_clients: int, threads_per_client: int | None = None,
                 run_id: int = 0) -> None:
        self.client_app = client_app
        self.num_clients = num_clients
        self.threads_per_client = None if threads_per_client is None else max(1, int(threads_per_client))
        self.run_id = run_id
        self._contexts: dict[int, Context] = {}

    def context(self, client_id: int) -> Context:
        """The client's Flower context, created on first use and kept."""
        if client_id not in self._contexts:
            self._contexts[client_id] = Context(
                run_id=self.run_id, node_id=client_id,
                node_config={PARTITION_ID: client_id, "num-partitions": self.num_clients},
                state=RecordDict(), run_config={},
            )
        return self._contexts[client_id]

    def run(self, tasks: list[ClientTask]) -> list[ClientReply]:
        """One reply per task, in task order; a client that raises gets an error reply."""
        threads = torch.get_num_threads()
        if self.threads_per_client is not None:
            torch.set_num_threads(self.threads_per_client)
        try:
            train_in_lockstep(tasks)  # the vectorized engine's clients, trained before the ClientApp replies
            replies = []
            for task in tasks:
                check_stop()  # Ctrl-C in this process: no further clients
                replies.append(self._run_one(task))
            return replies
        finally:
            OUTCOMES.clear()
            torch.set_num_threads(threads)

    def _run_one(self, task: ClientTask) -> ClientReply:
        try:
            return ClientReply(task.client_id, self.client_app(task.message, self.context(task.client_id)))
        except Exception as error:  # noqa: BLE001 - a client's failure is a reply, as in Flower
            return failed_reply(task, f"{type(error).__name__}: {error}")
