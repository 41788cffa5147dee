"""Executors: where and how a round's client tasks run (the interface is :mod:`fedsim.core.executor`).

``executor.kind`` picks one by name:

* ``flower`` -- Flower's runtime: the simulation runtime (Ray backend) that ``fedsim run``
  starts, or the federation ``flwr run`` connects to; one SuperNode per client.
* ``cohort`` -- Flower's runtime with ``executor.workers`` SuperNodes as workers (under
  ``flwr run``: every node of the federation), each running a share of every round's clients
  from one message (:mod:`fedsim.runs.executors.cohort`); nodes with their own data run their shard
  (:mod:`fedsim.runs.executors.nodes`).
* ``in-process`` -- the ClientApp called directly in the server's process, clients one after
  another; no Ray, no timeout. For tests, debugging and small experiments.
"""

from fedsim.core.executor import Executor
from fedsim.runs.settings import EXECUTOR_NAMES

from .cohort import CohortExecutor, balance
from .flower import GridExecutor, map_partitions_to_nodes
from .inprocess import InProcessExecutor
from .nodes import NodeError, NodePool

ON_FLOWER = ("flower", "cohort")  # executors that need Flower's runtime (and its nodes)

__all__ = ["EXECUTOR_NAMES", "ON_FLOWER", "CohortExecutor", "Executor", "GridExecutor", "InProcessExecutor", "NodeError",
           "NodePool", "balance", "map_partitions_to_nodes"]
