"""``latent-distill``: federated distillation through logits and a latent representation layer.

Federated distillation through a latent representation layer, with FedMD's round structure
(Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", 2019). Clients may run
different architectures; they share the number of classes and the representation width r,
and exchange *outputs on a shared transfer set* instead of weights:

* ``configure_train`` sends the current targets -- the consensus of the previous round (mean
  logits |d| x C and mean representations |d| x r, FedMD) or, in Schmitt's latent-space distillation setting, the
  outputs of a server teacher trained on the labelled transfer set (:meth:`set_teacher`).
* Each sampled client digests (distils toward the targets on the transfer set), revisits
  (trains on its private data), then replies with its own logits and representations on the
  transfer set (``fedsim.clients.distill``). Its model persists across rounds in the run's
  client-state store.
* ``aggregate_train`` averages the replies into the next consensus (unweighted, as FedMD).
* ``configure_evaluate`` asks clients to evaluate their own models on T_priv (a test subset with
  their class mix) and T_uni (the full test set); ``aggregate_evaluate`` averages both.

There is no global model: the strategy's ``arrays`` are targets, not weights. fedsim's engine
support for the method (:mod:`fedsim.methods.latent_distill`: transfer set, server teacher,
per-client views, consensus accuracy) therefore evaluates the clients' own models instead.
The strategy also runs under Flower's own ``Strategy.start`` with fedsim's ClientApp.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from fedsim.core.protocol import ARRAYS, CONFIG, DISTILL, METRICS, SEND_OUTPUTS, SERVER_ROUND


class LatentDistillation(Strategy):
    """Consensus (FedMD) or server-teacher distillation of logits and representations.

    Parameters
    ----------
    fraction_train, fraction_evaluate : float
        Share of connected nodes sampled per round (fedsim passes 1 and samples itself).
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int
        As in Flower's FedAvg.
    """

    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0,
                 min_train_nodes: int = 1, min_evaluate_nodes: int = 1, min_available_nodes: int = 1) -> None:
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.teacher_targets: ArrayRecord | None = None

    def summary(self) -> None:
        mode = "server teacher" if self.teacher_targets is not None else "consensus of client outputs"
        log(INFO, "\t├──> Targets: %s", mode)
        log(INFO, "\t└──> Sampling: train %.2f | evaluate %.2f", self.fraction_train, self.fraction_evaluate)

    def set_teacher(self, targets: ArrayRecord) -> None:
        """Use fixed teacher outputs (``logits``, ``reps`` on the transfer set) as every round's targets."""
        self.teacher_targets = targets

    def initial_arrays(self) -> ArrayRecord:
        """Round 1's targets: the teacher's, or none (clients then only revisit and report)."""
        return self.teacher_targets if self.teacher_targets is not None else ArrayRecord()

    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        available = len(list(grid.get_node_ids()))
        size = max(int(available * fraction), minimum)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, size)
        return node_ids

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[DISTILL] = True
        config[SEND_OUTPUTS] = self.teacher_targets is None
        config[SERVER_ROUND] = server_round
        targets = self.teacher_targets if self.teacher_targets is not None else arrays
        record = RecordDict({ARRAYS: targets, CONFIG: config})
        return [Message(content=record, dst_node_id=node, message_type=MessageType.TRAIN)
                for node in self._sample(grid, self.fraction_train, self.min_train_nodes)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [m for m in replies if not m.has_error()]
        if not valid:
            return None, None
        metrics = _mean_metrics([m.content[METRICS] for m in valid])
        if self.teacher_targets is not None:
            return self.teacher_targets, metrics
        return consensus([m.content[ARRAYS] for m in valid]), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        config[DISTILL] = True
        config[SERVER_ROUND] = server_round
        record = RecordDict({ARRAYS: ArrayRecord(), CONFIG: config})
        return [Message(content=record, dst_node_id=node, message_type=MessageType.EVALUATE)
                for node in self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = [m for m in replies if not m.has_error()]
        return _mean_metrics([m.content[METRICS] for m in valid]) if valid else None


def consensus(records: list[ArrayRecord]) -> ArrayRecord:
    """Unweighted mean of the clients' transfer-set logits and representations (FedMD)."""
    out = {}
    for key in records[0].keys():
        stacked = np.stack([r[key].numpy().astype(np.float64) for r in records])
        out[key] = Array(stacked.mean(axis=0).astype(np.float32))
    return ArrayRecord(out)


def _mean_metrics(records: list[MetricRecord]) -> MetricRecord:
    keys = set(records[0].keys())
    return MetricRecord({k: float(np.mean([float(r[k]) for r in records])) for k in sorted(keys)
                         if all(k in r for r in records)})
