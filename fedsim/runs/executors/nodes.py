"""The Flower nodes serving a run with the cohort executor: who they are and what each hosts.

Every node joins a run once, through a join query (:func:`fedsim.core.protocol.join_query`); its
answer says whether it reads the server's run directory (it can run any client) or has its
own data (it hosts one shard of the clients, ``partition-id`` of ``num-partitions``; it was
sent the run's small files to prepare its copy, :mod:`fedsim.clients.node`). All nodes of a
run are of one kind. Before every phase :meth:`NodePool.refresh` takes the nodes that joined
since (they serve from that phase on) and drops the nodes Flower no longer lists; a shard
without a node fails its clients for that phase, with the reason, through the round loop's
ordinary failure accounting.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedsim.ops.interrupt import check_stop
from fedsim.core.protocol import NodeAnswer, join_query, read_join_answer

from .flower import send_and_collect, wait_for_nodes

JOIN_SECONDS = 120.0  # how long a node may take to answer the join query (it may prepare a dataset)


class NodeError(RuntimeError):
    """A node cannot serve the run (its answer's reason), or the nodes disagree."""


@dataclass
class NodePool:
    """The run's nodes, kept current before every phase.

    ``files`` gives the run's files for nodes with their own data (called once, at the first join),
    ``digest`` the server dataset's fingerprint they must match. ``expected`` > 0 waits for
    that many nodes at the start (Flower's simulation runtime starts them all at once); 0 takes
    every node that is up, and, with nodes with their own data, waits for every shard.
    ``wait`` bounds the start-up wait in seconds; ``num_clients`` is the run's population.
    """

    grid: Grid
    run_dir: str
    files: Callable[[], Mapping[str, bytes]]
    digest: Callable[[], str]
    wait: float
    num_clients: int
    expected: int = 0
    answers: dict[int, NodeAnswer] = field(default_factory=dict)
    shards: int | None = None  # own data: the shard count every node agrees on; None: shared storage
    started: bool = False
    refused: set[int] = field(default_factory=set)  # late nodes that could not serve: not asked again
    _query: object = None  # the join query's RecordDict, built on first use

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Wait for the run's nodes (at most ``wait`` seconds) and have them join."""
        self.started = True
        if self.expected:
            self._join(wait_for_nodes(self.grid, self.expected, self.wait)[: self.expected])
            return
        deadline = time.monotonic() + self.wait
        while True:
            check_stop()
            up = sorted(self.grid.get_node_ids())
            if up:
                if new := [nid for nid in up if nid not in self.answers]:
                    self._join(new)
                if self.shards is None or len(self.hosted()) == self.shards:
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.answers:
            missing = sorted(set(range(self.shards or 0)) - set(self.hosted()))
            warnings.warn(f"starting without a node for shard(s) {missing} of {self.shards} after "
                          f"runtime.node_wait = {self.wait:g} s: their clients fail until their node joins",
                          stacklevel=2)
            return
        raise NodeError(f"no node came up within runtime.node_wait = {self.wait:g} s: check that the "
                        "SuperNodes reach the SuperLink")

    # ------------------------------------------------------------------ joining and leaving

    def refresh(self) -> None:
        """Before a phase: the first time, :meth:`start`; later, take the nodes that joined since
        the last phase and forget the ones that left."""
        if not self.started:
            self.start()
            return
        up = set(self.grid.get_node_ids())
        for gone in set(self.answers) - up:
            del self.answers[gone]
        new = sorted(up - set(self.answers) - self.refused)
        if new:
            self._join(new, late=True)

    def _join(self, node_ids: list[int], late: bool = False) -> None:
        """Send ``node_ids`` the join query; record their answers (a late node's problem is a warning)."""
        if self._query is None:  # built once: the run's files (small: spec, config, partition indices)
            self._query = join_query(self.run_dir, self.files(), self.digest())
        queries = [Message(self._query, dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
        replies = {r.metadata.src_node_id: r for r in send_and_collect(self.grid, queries, JOIN_SECONDS)}
        for nid in node_ids:
            if nid not in replies:
                self._problem(f"node {nid} did not answer the join query within {JOIN_SECONDS:.0f} s", late, nid)
                continue
            answer = read_join_answer(replies[nid])
            if answer.error:
                self._problem(f"node {nid} cannot serve the run: {answer.error}", late, nid)
                continue
            self._admit(answer, late)

    def _admit(self, answer: NodeAnswer, late: bool) -> None:
        kinds = {a.own_data for a in self.answers.values()} | {answer.own_data}
        if len(kinds) > 1:
            self._problem(f"node {answer.node_id} {'has its own data' if answer.own_data else 'reads the run directory'}"
                          " but the run's other nodes do not: give every node a data-dir, or none", late, answer.node_id)
            return
        if answer.own_data:
            if answer.shards > self.num_clients:  # type: ignore[operator]
                self._problem(f"node {answer.node_id} says num-partitions = {answer.shards} but the run has "
                              f"{self.num_clients} clients: some nodes would host none", late, answer.node_id)
                return
            if self.shards is not None and answer.shards != self.shards:
                self._problem(f"node {answer.node_id} says num-partitions = {answer.shards} but the run's other "
                              f"nodes say {self.shards}", late, answer.node_id)
                return
            holder = self.hosted().get(answer.shard)  # type: ignore[arg-type]
            if holder is not None and holder != answer.node_id:
                if not late:
                    raise NodeError(f"nodes {holder} and {answer.node_id} both say partition-id = {answer.shard}: "
                                    "give every node its own partition-id")
                # a node restarted (Flower gives it a new id) while its old id is still listed: the newcomer serves
                warnings.warn(f"node {answer.node_id} joins for shard {answer.shard}, which node {holder} hosted: "
                              f"node {answer.node_id} serves it from now on", stacklevel=3)
                del self.answers[holder]
                self.refused.add(holder)  # not asked to join again while the SuperLink still lists it
            self.shards = answer.shards
        self.answers[answer.node_id] = answer

    def _problem(self, message: str, late: bool, node_id: int) -> None:
        """At the start a node that cannot serve stops the run; later it is left out, with a warning."""
        if not late:
            raise NodeError(message)
        self.refused.add(node_id)
        warnings.warn(message + "; the run goes on without it", stacklevel=3)

    # ------------------------------------------------------------------ what serves which client

    def hosted(self) -> dict[int, int]:
        """Own data: shard -> node id of the nodes present."""
        return {a.shard: nid for nid, a in self.answers.items() if a.own_data and a.shard is not None}

    def shared_nodes(self) -> list[int]:
        """Shared storage: the nodes present, in node-id order."""
        return sorted(nid for nid, a in self.answers.items() if not a.own_data)
