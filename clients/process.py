"""The one owner of what a process that hosts clients keeps from one message to the next.

A process that hosts clients -- a Ray actor of Flower's simulation runtime, a SuperNode's
ClientApp process, or the server's own process under the in-process executor -- serves many
messages. Whatever it keeps between them is owned by one :class:`WorkerProcess` per process
(:func:`worker_process`), and by nothing else:

* the run it serves (:class:`~fedsim.clients.worker.WorkerRun`: data, models, hooks, state
  stores) and what was built for that run alone -- the vectorized engine's trainers -- held
  together as one :class:`OpenRun`. One run at a time: opening another run lets the previous
  one go first, its models and trainers with it, so a worker's memory holds one run;
* the node it handles the current message for (:class:`~fedsim.clients.node.NodeHosting`), set
  for one message by :meth:`WorkerProcess.hosting_node` (a node with its own data reads its
  copy of the run);
* the client runners of cohort messages (:class:`~fedsim.clients.runner.ClientRunner`), which
  keep each client's Flower context across rounds.

Results never pass through it: the vectorized engine's per-client outcomes are returned by
:func:`~fedsim.clients.lockstep.planner.train_in_lockstep` (and, for evaluate tasks,
:func:`~fedsim.clients.lockstep.evaluation.evaluate_in_lockstep`) and handed by the runner to each
client's handler call, so nothing of one call is left for the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .node import NodeHosting
from .worker import WorkerRun

if TYPE_CHECKING:
    import torch

    from .lockstep.engine import LockstepTrainer
    from .runner import ClientRunner


@dataclass
class OpenRun:
    """The run a process serves, and what was built for it alone; released together."""

    server_run_dir: str  # the run directory as the server names it (a message's ``fedsim.run-dir``)
    run: WorkerRun
    trainers: dict[tuple[str, torch.dtype], LockstepTrainer] = field(default_factory=dict)  # (architecture, dtype)


class WorkerProcess:
    """What one process keeps between messages: its open run, the node it hosts, its client runners."""

    def __init__(self) -> None:
        self._open: OpenRun | None = None
        self._hosting = NodeHosting()  # the default: the server's run directory is readable here
        self._runners: dict[tuple[int, int | None], ClientRunner] = {}

    @property
    def open_run(self) -> OpenRun | None:
        """The run this process serves now, if any."""
        return self._open

    @property
    def hosting(self) -> NodeHosting:
        """The node whose message this process is handling (the default outside :meth:`hosting_node`)."""
        return self._hosting

    @contextmanager
    def hosting_node(self, node_config: Mapping[str, object]) -> Iterator[NodeHosting]:
        """Handle one message as the node ``node_config`` describes (cohort messages and join queries).

        For the message's duration, then back to what it was: a process may serve several nodes
        (Flower's simulation runtime) or run clients directly (the in-process executor).
        """
        previous, self._hosting = self._hosting, NodeHosting.from_node_config(node_config)
        try:
            yield self._hosting
        finally:
            self._hosting = previous

    def run(self, server_run_dir: str) -> WorkerRun:
        """The run at ``server_run_dir``, opened on first use from the hosted node's copy of it.

        Opening a run releases the previous one first (one run at a time per process).
        """
        if self._open is not None and self._open.server_run_dir == server_run_dir:
            return self._open.run
        local_dir = self._hosting.local_run_dir(server_run_dir)
        self.release()  # before the new run loads: the old run's models and trainers are not kept alongside
        self._open = OpenRun(server_run_dir, WorkerRun.open(local_dir))
        return self._open.run

    def release(self) -> None:
        """Let the open run go, with everything built for it."""
        self._open = None

    def lockstep_trainer(self, run: WorkerRun, architecture: str, dtype: torch.dtype,
                         build: Callable[[], LockstepTrainer]) -> LockstepTrainer:
        """The open run's vectorized trainer for (architecture, dtype), built by ``build`` on first use."""
        if self._open is None or self._open.run is not run:
            raise RuntimeError("a lockstep trainer belongs to the run this process serves; that run is no longer open")
        trainers = self._open.trainers
        if (architecture, dtype) not in trainers:
            trainers[(architecture, dtype)] = build()
        return trainers[(architecture, dtype)]

    def client_runner(self, num_clients: int, threads: int | None,
                      build: Callable[[], ClientRunner]) -> ClientRunner:
        """The runner for cohort messages over ``num_clients`` clients with ``threads`` torch threads each."""
        if (num_clients, threads) not in self._runners:
            self._runners[(num_clients, threads)] = build()
        return self._runners[(num_clients, threads)]


_THIS_PROCESS = WorkerProcess()


def worker_process() -> WorkerProcess:
    """This process's owner of runs, trainers, runners and hosting (one per process)."""
    return _THIS_PROCESS
