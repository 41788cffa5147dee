"""The executor seam: per-client tasks in, per-client replies out.

The round loop never sees Flower nodes, node ids or a ``Grid``: it hands an :class:`Executor`
the round's :class:`~fedsim.core.protocol.ClientTask` list (client id + the message a strategy
built) and gets exactly one :class:`~fedsim.core.protocol.ClientReply` per task back, in task
order. A client that raised, or did not answer in time, comes back as a reply whose message
carries an ``Error``; the loop's failure accounting treats both alike.

Where a client runs, how many clients share a process and how messages travel is the
executor's business: :class:`~fedsim.runs.executors.flower.GridExecutor` sends one message per
client through Flower's runtime (a simulated SuperNode per client), and
:class:`~fedsim.runs.executors.inprocess.InProcessExecutor` calls the ClientApp directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from flwr.app import Message

from fedsim.core.extension import RoundExtension
from fedsim.core.protocol import ClientReply, ClientTask


class Executor(ABC):
    """Runs a round's client tasks somewhere and returns one reply per task, in task order."""

    @abstractmethod
    def execute(self, tasks: list[ClientTask]) -> list[ClientReply]:
        """Run ``tasks``; never raise for a client's failure (return an error reply instead)."""

    def aggregation_inputs(self, replies: list[ClientReply]) -> list[Message]:
        """What the strategy aggregates for these training replies: the replies themselves.

        A stacked update is serialized into its reply here (Flower's strategies read per-client
        ``ArrayRecord`` objects); a strategy that aggregates stacks is not handed these
        (:meth:`fedsim.core.loop.RoundLoop.run_round`). An executor whose workers pre-aggregate
        (streaming) returns their partial aggregates.
        """
        return [r.materialized() for r in replies]

    def round_extensions(self) -> list[RoundExtension]:
        """Round extensions the executor brings along (e.g. to record its workers' load)."""
        return []
