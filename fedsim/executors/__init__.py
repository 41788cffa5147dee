"""Executors: where and how a round's client tasks run (see :mod:`fedsim.executors.base`).

``simulation.executor`` picks one by name:

* ``flower`` -- Flower's runtime: the simulation engine (Ray backend) that ``fedsim run``
  starts, or the federation ``flwr run`` connects to; one SuperNode per client.
* ``in-process`` -- the ClientApp called directly in the server's process, clients one after
  another; no Ray, no timeout. For tests, debugging and small experiments.
"""

from .base import Executor
from .flower import GridExecutor, map_partitions_to_nodes
from .inprocess import InProcessExecutor

EXECUTOR_NAMES = ("flower", "in-process")

__all__ = ["EXECUTOR_NAMES", "Executor", "GridExecutor", "InProcessExecutor", "map_partitions_to_nodes"]
