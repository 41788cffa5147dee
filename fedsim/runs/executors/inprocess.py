"""The in-process executor: call the ClientApp directly, one client after another, no Ray.

Each client gets a Flower ``Context`` of its own and the ClientApp (with its mods) is called on
the task's message in this thread (:class:`fedsim.clients.runner.ClientRunner`), with as many
torch threads as a Ray worker of ``runtime.num_cpus_per_client`` CPUs gets, so that results
match the Flower executors' bit for bit on CPU. With fedsim's own ClientApp, training tasks no
mod acts on skip it (:class:`~fedsim.clients.runner.ClientRunner`): the clients' weights stay
one stacked tensor per dtype, read in place by the screen and the aggregate, never serialized
per client unless a strategy asks for Flower ``ArrayRecord`` objects. An exception becomes an error reply, as
Flower's runtime would report it. There is no timeout: a client that hangs blocks the round.
Used by the fast tests, for debugging and for small runs (``executor.kind =
"in-process"``).
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from fedsim.clients.app import client_app as fedsim_client_app
from fedsim.clients.runner import ClientRunner, ensure_task_identity
from fedsim.core.protocol import ClientReply, ClientTask

from fedsim.core.executor import Executor

class InProcessExecutor(Executor):
    """Runs every task by calling ``client_app(message, context)`` in this process."""

    def __init__(self, client_app: ClientApp, num_clients: int, threads_per_client: int = 1, run_id: int = 0) -> None:
        # fedsim's own ClientApp: plain training tasks skip it and their weights stay stacked tensors
        self.runner = ClientRunner(client_app, num_clients, threads_per_client, run_id,
                                   direct=client_app is fedsim_client_app)
        ensure_task_identity(run_id)

    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        return self.runner.run(tasks)
