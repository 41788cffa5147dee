"""The weighted-averaging family (``docs/methods.md``, "Weight averaging").

* :class:`WeightedFedAvg` (``fedavg``) -- w' = sum_k n_k w_k / sum_k n_k, Flower's FedAvg with the
  weight read from any MetricRecord key (``weighted_by_key``, default ``num-examples``).
* :class:`UniformAvg` (``uniform``) -- the plain mean of the client models.
* :class:`SequentialEMA` (``ema``) -- Raj's "Polyak averaging" ("Building Decentralized
  Image Classifiers with Federated Learning"): starting from the first
  client's model, ``w <- beta * w_i + (1 - beta) * w`` for the others in turn. The order is by
  partition id (ascending), so the result is deterministic; the effective weights are
  :func:`ema_weights`: the last client gets beta, the first (1 - beta)^(K-1). It is
  order-dependent and kept to reproduce that paper, not as a default.

All three differ from Flower's ``aggregate_arrayrecords`` in one respect: every array keeps its
dtype. Floating arrays are averaged in float64 and cast back; integer buffers (BatchNorm's
``num_batches_tracked``) are averaged and rounded, so an integer buffer stays an integer.
BatchNorm running means and variances are averaged like any other array.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsim.core.arrays import aggregate_arrays
from fedsim.core.protocol import ClientReply, reply_client_id
from fedsim.core.stack import weighted_mean


def ema_weights(num_models: int, beta: float) -> np.ndarray:
    """Effective weights of ``w <- beta * w_i + (1 - beta) * w`` over models 0..K-1 in order.

    Model 0 gets (1 - beta)^(K-1); model i >= 1 gets beta * (1 - beta)^(K-1-i). For K = 10 and
    beta = 0.5 that is [1/512, 1/512, 1/256, ..., 1/4, 1/2]. The weights sum to 1.
    """
    if num_models < 1:
        raise ValueError("need at least one model")
    k = num_models
    weights = np.array([beta * (1 - beta) ** (k - 1 - i) for i in range(k)], dtype=np.float64)
    weights[0] = (1 - beta) ** (k - 1)
    return weights


def reply_order_key(msg: Message) -> tuple[int, int]:
    """Sort replies by the partition id the client reports (node id as a fallback)."""
    client_id = reply_client_id(msg)
    return (0, client_id) if client_id is not None else (1, int(msg.metadata.src_node_id))


class WeightedFedAvg(FedAvg):
    """FedAvg (McMahan et al. 2017): mean weighted by ``weighted_by_key``; dtypes preserved."""

    def _weights(self, contents: list[RecordDict]) -> np.ndarray:
        """Each reply's weight, from its records (in the order given)."""
        return np.array([float(next(iter(c.metric_records.values()))[self.weighted_by_key])
                         for c in contents])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        valid = sorted(valid, key=reply_order_key)
        records = [next(iter(m.content.array_records.values())) for m in valid]
        contents = [m.content for m in valid]
        arrays = aggregate_arrays(records, self._weights(contents))
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays, metrics

    def aggregate_stacked(
        self, server_round: int, replies: Sequence[ClientReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:meth:`aggregate_train` on stacked updates, read in place: the same arithmetic and order
        (:func:`fedsim.core.stack.weighted_mean`, by partition id), so the same bits."""
        if not replies:
            return None, None
        valid = sorted(replies, key=lambda r: r.client_id)
        contents = [r.content for r in valid]  # no per-client Message is made on this path
        arrays = weighted_mean([r.update for r in valid], self._weights(contents))
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays, metrics


class UniformAvg(WeightedFedAvg):
    """Plain (unweighted) mean of the client models."""

    def _weights(self, contents: list[RecordDict]) -> np.ndarray:
        return np.ones(len(contents))


class SequentialEMA(WeightedFedAvg):
    """Raj's sequential exponential moving average, clients ordered by partition id.

    Parameters
    ----------
    beta : float (default: 0.5)
        Weight of each newly folded-in client model, in (0, 1].
    """

    def __init__(self, beta: float = 0.5, **kwargs) -> None:  # noqa: ANN003 - FedAvg's arguments
        if not 0 < beta <= 1:
            raise ValueError(f"beta = {beta}: must be in (0, 1]")
        super().__init__(**kwargs)
        self.beta = beta

    def _weights(self, contents: list[RecordDict]) -> np.ndarray:
        return ema_weights(len(contents), self.beta)
