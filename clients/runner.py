"""Run client tasks through the ClientApp in this process, one client after another.

Shared by the in-process executor (the server's process runs every client) and a cohort
worker (a Flower node runs the clients of its shard): each client gets a Flower ``Context``
of its own, as a simulated SuperNode would give it (``node_config`` with its
``partition-id``, a ``state`` kept across rounds), the ClientApp (with its mods) is called on
the client's message, and an exception becomes that client's error reply -- the other
clients go on. A client that takes longer than ``executor.client_timeout`` is interrupted by
the client handler (:func:`fedsim.clients.limits.time_limit`) and fails alone.

The fast path: with fedsim's own ClientApp, a training task whose reply is weights
(:func:`fedsim.clients.handler.trains_direct`) is trained without the ClientApp and without a
Flower ``Message`` per client (the reply's records, :class:`~fedsim.core.protocol.ClientReply`);
the ClientApp's one mod, client-side DP clipping, is applied by the worker to the client's
weights as the mod would (:class:`~fedsim.clients.clipping.ClientClipping`). The weights of the worker's clients are stacked per layout
(:mod:`fedsim.core.stack`) and each reply carries metrics and a view of its client's row; the
worker sends its stacks once (cohort) or the server reads them in place (in-process).

The vectorized engine: before any client runs, :func:`~fedsim.clients.lockstep.planner.train_in_lockstep`
trains the call's vectorizable tasks together, and :func:`~fedsim.clients.lockstep.evaluation.evaluate_in_lockstep`
scores its evaluate tasks that received the same weights together; one outcome per task. The runner hands
each to its own client's call -- an argument of :func:`~fedsim.clients.handler.train_update` on
the fast path, the client's :class:`ClientContext` for the duration of its ClientApp call
(:func:`lockstep_outcome`) otherwise -- and keeps none of them after the call.
"""

from __future__ import annotations

import torch
from flwr.app import Context, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedsim.core.arrays import nonfinite_update
from fedsim.core.protocol import PARTITION_ID, ClientReply, ClientTask, failed_reply, reply_content
from fedsim.core.stack import Layout, UpdateStack
from fedsim.ops.interrupt import check_stop

from .clipping import ClientClipping
from .handler import train_update, trains_direct
from .lockstep.evaluation import evaluate_in_lockstep
from .lockstep.planner import LockstepOutcome, train_in_lockstep


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


class ClientContext(Context):
    """A client's Flower context as a :class:`ClientRunner` keeps it across rounds.

    ``lockstep`` is the vectorized engine's outcome for the task the ClientApp is being called
    on, set by the runner for that one call (None otherwise): the context is the argument
    Flower passes through the ClientApp's mods to its handler, so the outcome reaches
    :func:`fedsim.clients.handler.handle_train` (or ``handle_evaluate``) with the call and with nothing else.
    """

    def __init__(self, run_id: int, node_id: int, node_config: UserConfig, state: RecordDict,
                 run_config: UserConfig) -> None:
        super().__init__(run_id=run_id, node_id=node_id, node_config=node_config, state=state, run_config=run_config)
        self.lockstep: LockstepOutcome | None = None


def lockstep_outcome(context: Context) -> LockstepOutcome | None:
    """The vectorized engine's outcome for the ClientApp call ``context`` came with (None: train as usual)."""
    return context.lockstep if isinstance(context, ClientContext) else None


class ClientRunner:
    """Calls ``client_app(message, context)`` for each task, with a context per client.

    ``threads_per_client`` (None: leave torch's setting alone) is the number of torch threads a
    client trains with, so that float reductions match a Ray worker with that many CPUs.
    ``direct`` says that ``client_app`` is fedsim's own (:mod:`fedsim.clients.app`), whose plain
    training tasks may be trained without it (:func:`fedsim.clients.handler.trains_direct`);
    another ClientApp is always called.
    """

    def __init__(self, client_app: ClientApp, num_clients: int, threads_per_client: int | None = None,
                 run_id: int = 0, direct: bool = False) -> None:
        self.client_app = client_app
        self.direct = direct  # fedsim's own ClientApp: its plain training tasks may skip it (see run)
        self.num_clients = num_clients
        self.threads_per_client = None if threads_per_client is None else max(1, int(threads_per_client))
        self.run_id = run_id
        self._contexts: dict[int, ClientContext] = {}

    def context(self, client_id: int) -> ClientContext:
        """The client's Flower context, created on first use and kept."""
        if client_id not in self._contexts:
            self._contexts[client_id] = ClientContext(
                run_id=self.run_id, node_id=client_id,
                node_config={PARTITION_ID: client_id, "num-partitions": self.num_clients},
                state=RecordDict(), run_config={},
            )
        return self._contexts[client_id]

    def run(self, tasks: list[ClientTask]) -> list[ClientReply]:
        """One reply per task, in task order; a client that raises gets an error reply.

        With ``direct`` set, training tasks no mod acts on skip the ClientApp: their weights
        are kept and stacked (:func:`stack_updates`), and each reply holds a view of its row.
        The vectorized engine's outcomes live for this call only, each handed to its client.
        """
        threads = torch.get_num_threads()
        if self.threads_per_client is not None:
            torch.set_num_threads(self.threads_per_client)
        try:
            # the vectorized engine's clients, trained (or evaluated) before any replies; a task is one or the other
            outcomes = [t or e for t, e in zip(train_in_lockstep(tasks), evaluate_in_lockstep(tasks))]
            replies, states, extras = [], {}, {}
            for position, (task, outcome) in enumerate(zip(tasks, outcomes)):
                check_stop()  # Ctrl-C in this process: no further clients
                if self.direct and trains_direct(task.message):
                    reply_, state, extra = self._train_direct(task, outcome)
                    if state is not None:
                        states[position] = state
                        extras[position] = extra
                    replies.append(reply_)
                else:
                    replies.append(self._run_one(task, outcome))
            return stack_updates(tasks, replies, states, extras)
        finally:
            torch.set_num_threads(threads)

    def _run_one(self, task: ClientTask, outcome: LockstepOutcome | None) -> ClientReply:
        """The client's task through the ClientApp, with its lockstep outcome in its context for the call."""
        context = self.context(task.client_id)
        context.lockstep = outcome
        try:
            return ClientReply(task.client_id, self.client_app(task.message, context))
        except Exception as error:  # noqa: BLE001 - a client's failure is a reply, as in Flower
            return failed_reply(task, f"{type(error).__name__}: {error}")
        finally:
            context.lockstep = None

    def _train_direct(self, task: ClientTask, outcome: LockstepOutcome | None
                      ) -> tuple[ClientReply, dict[str, torch.Tensor] | None, dict[str, dict[str, torch.Tensor]]]:
        """The client trained without its ClientApp: a metrics-only reply, its weights and its extras apart."""
        try:
            update = train_update(task.message, task.client_id, outcome)
            state, metrics = update.state, dict(update.metrics)
            clipping = ClientClipping.asked_by(task.message)  # the ClientApp's DP clipping mod, on its weights
            if clipping is not None and state is not None:
                state = clipping.apply(task.message, state, metrics)
        except Exception as error:  # noqa: BLE001 - a client's failure is a reply, as in Flower
            return failed_reply(task, f"{type(error).__name__}: {error}"), None, {}
        content = reply_content(task.client_id, metrics)  # no Message: made only if a strategy asks
        return ClientReply(task.client_id, content=content, reply_to=task.message), state, update.extras


def stack_updates(tasks: list[ClientTask], replies: list[ClientReply], states: dict[int, dict[str, torch.Tensor]],
                  extras: dict[int, dict[str, dict[str, torch.Tensor]]] | None = None) -> list[ClientReply]:
    """Stack the weights in ``states`` (by task position) per layout and give each reply its row.

    A client whose weights hold NaN or Inf fails alone, with the reason the ClientApp path
    gives (``DivergedUpdate``): the stack is checked once, in one pass. ``extras`` (by task
    position: record name -> arrays, e.g. SCAFFOLD's control delta) are stacked per name and
    layout the same way and become each reply's :attr:`~fedsim.core.protocol.ClientReply.extras`.
    """
    by_extra: dict[tuple[str, Layout], list[int]] = {}
    for position, named in (extras or {}).items():
        for name, arrays in named.items():
            by_extra.setdefault((name, Layout.of(arrays)), []).append(position)
    replies = list(replies)
    for (name, _), positions in by_extra.items():
        stack = UpdateStack.of([tasks[p].client_id for p in positions], [extras[p][name] for p in positions])
        for index, position in enumerate(positions):
            replies[position].extras[name] = stack.view(index)
    by_layout: dict[Layout, list[int]] = {}
    for position, state in states.items():
        by_layout.setdefault(Layout.of(state), []).append(position)
    for positions in by_layout.values():
        stack = UpdateStack.of([tasks[p].client_id for p in positions], [states[p] for p in positions])
        for index, position in enumerate(positions):
            bad = stack.nonfinite(index)
            if bad:
                replies[position] = failed_reply(tasks[position], f"DivergedUpdate: {nonfinite_update(bad)}")
            else:
                replies[position].update = stack.view(index)
    return replies
