"""Asynchronous aggregation: FedBuff and FedAsync, strategies that aggregate stale updates.

Both are Flower strategies (subclasses of ``flwr.serverapp.strategy.FedAvg``, whose
evaluation they keep). What makes them asynchronous is how fedsim drives them: its
asynchronous scheduler (:mod:`fedsim.timing.scheduler`) keeps ``concurrency`` clients training
on the simulated clock, each from the model it downloaded, and hands ``aggregate_train`` the
``buffer_size`` updates that arrived first. Each strategy remembers which model version (the
server round that configured it) every client started from, so it knows every update's
**staleness** tau = (aggregating round) - (round it started from) and its delta.

* :class:`FedBuff` (Nguyen et al., "Federated Learning with Buffered Asynchronous
  Aggregation", AISTATS 2022): ``x <- x + server_learning_rate * (1/K) * sum_i s(tau_i) *
  (x_i - x_(t_i))`` over the K buffered updates, with ``x_(t_i)`` the model client i
  started from. Defaults: K = 10, server learning rate 1, s(tau) = 1/sqrt(1 + tau).
* :class:`FedAsync` (Xie, Koyejo and Gupta, "Asynchronous Federated Optimization", 2019): on
  every arrival ``x <- (1 - a_tau) x + a_tau x_i`` with ``a_tau = mixing * s(tau)``; a buffer
  of one update. Defaults: mixing 0.6, s(tau) = (1 + tau)^(-0.5).

Staleness functions (``staleness``): ``polynomial`` s(tau) = (1 + tau)^(-staleness_exponent);
``constant`` s = 1; ``hinge`` s = 1 for tau <= hinge_b, else 1 / (hinge_a (tau - hinge_b) + 1)
(FedAsync's hinge form). In a plain Flower ``ServerApp`` (synchronous rounds) every update has
staleness 0: FedBuff is then FedAvg's unweighted mean applied with a server learning rate.
Integer arrays (BatchNorm's ``num_batches_tracked``) are updated in float64 and rounded.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

STALENESS_FUNCTIONS = ("polynomial", "constant", "hinge")


def staleness_weight(tau: np.ndarray | float, function: str = "polynomial", exponent: float = 0.5,
                     hinge_a: float = 10.0, hinge_b: float = 4.0) -> np.ndarray:
    """s(tau) for the named staleness function (see the module docstring)."""
    tau = np.asarray(tau, dtype=np.float64)
    if function == "polynomial":
        return (1.0 + tau) ** (-exponent)
    if function == "constant":
        return np.ones_like(tau)
    if function == "hinge":
        return np.where(tau <= hinge_b, 1.0, 1.0 / (hinge_a * (tau - hinge_b) + 1.0))
    raise ValueError(f"staleness = {function!r}; allowed: {', '.join(STALENESS_FUNCTIONS)}")


class AsynchronousStrategy(FedAvg):
    """Base of the asynchronous strategies: tracks each client's starting model version.

    ``buffer_size`` is how many successful updates the scheduler collects before it calls
    :meth:`aggregate_train`. ``_start_round[client]`` is the round whose model the client
    started from; ``_models[round]`` that model, kept while some client trains from it.
    """

    buffer_size: int = 1

    def __init__(self, *, staleness: str = "polynomial", staleness_exponent: float = 0.5,
                 hinge_a: float = 10.0, hinge_b: float = 4.0, **kwargs) -> None:  # noqa: ANN003 - FedAvg's
        super().__init__(**kwargs)
        if staleness not in STALENESS_FUNCTIONS:
            raise ValueError(f"staleness = {staleness!r}; allowed: {', '.join(STALENESS_FUNCTIONS)}")
        self.staleness = staleness
        self.staleness_exponent = staleness_exponent
        self.hinge_a = hinge_a
        self.hinge_b = hinge_b
        self._start_round: dict[int, int] = {}
        self._models: dict[int, ArrayRecord] = {}
        self._current: ArrayRecord | None = None

    def weight(self, tau: np.ndarray | float) -> np.ndarray:
        return staleness_weight(tau, self.staleness, self.staleness_exponent, self.hinge_a, self.hinge_b)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._models[server_round] = arrays
        self._current = arrays
        for message in messages:
            self._start_round[int(message.metadata.dst_node_id)] = server_round
        return messages

    def _arrivals(self, server_round: int, replies: Iterable[Message]) -> list[tuple[Message, int]]:
        """The successful replies with the round each started from (in client-id order)."""
        arrived = []
        for message in sorted(replies, key=lambda m: int(m.metadata.src_node_id)):
            start = self._start_round.pop(int(message.metadata.src_node_id), None)
            if start is not None and not message.has_error():
                arrived.append((message, start))
        return arrived

    def _forget_unused(self) -> None:
        used = set(self._start_round.values())
        self._models = {r: m for r, m in self._models.items() if r in used}

    def _metrics(self, messages: list[Message], staleness: list[int]) -> MetricRecord:
        metrics = self.train_metrics_aggr_fn([m.content for m in messages], self.weighted_by_key)
        metrics["staleness-mean"] = float(np.mean(staleness))
        return metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrived = self._arrivals(server_round, replies)
        if not arrived or self._current is None:
            self._forget_unused()
            return None, None
        new = self.combine(server_round, self._current, arrived)
        self._current = new
        self._forget_unused()
        return new, self._metrics([m for m, _ in arrived], [server_round - s for _, s in arrived])

    def combine(self, server_round: int, current: ArrayRecord, arrived: list[tuple[Message, int]]) -> ArrayRecord:
        raise NotImplementedError


def _as_record(values: dict[str, np.ndarray], like: ArrayRecord) -> ArrayRecord:
    out = {}
    for key in like.keys():
        dtype = like[key].numpy().dtype
        value = np.rint(values[key]) if np.issubdtype(dtype, np.integer) else values[key]
        out[key] = Array(np.asarray(value.astype(dtype)))
    return ArrayRecord(out)


class FedBuff(AsynchronousStrategy):
    """Buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

    Parameters
    ----------
    buffer_size : int
        K, the updates collected before the global model changes (default 10).
    server_learning_rate : float
        eta_g, the step applied to the mean staleness-weighted delta (default 1).
    staleness, staleness_exponent, hinge_a, hinge_b
        The staleness function s(tau) (default 1/sqrt(1 + tau)).
    """

    def __init__(self, buffer_size: int = 10, server_learning_rate: float = 1.0, *,
                 staleness: str = "polynomial", staleness_exponent: float = 0.5, hinge_a: float = 10.0,
                 hinge_b: float = 4.0, **kwargs) -> None:  # noqa: ANN003 - FedAvg's
        super().__init__(staleness=staleness, staleness_exponent=staleness_exponent, hinge_a=hinge_a,
                         hinge_b=hinge_b, **kwargs)
        self.buffer_size = buffer_size
        self.server_learning_rate = server_learning_rate

    def combine(self, server_round: int, current: ArrayRecord, arrived: list[tuple[Message, int]]) -> ArrayRecord:
        weights = self.weight([server_round - start for _, start in arrived])
        values = {key: current[key].numpy().astype(np.float64) for key in current.keys()}
        step = self.server_learning_rate / len(arrived)
        for (message, start), weight in zip(arrived, weights):
            update, base = message.content[self.arrayrecord_key], self._models[start]
            for key in values:
                delta = update[key].numpy().astype(np.float64) - base[key].numpy().astype(np.float64)
                values[key] += step * weight * delta
        return _as_record(values, current)


class FedAsync(AsynchronousStrategy):
    """Asynchronous federated optimization (Xie, Koyejo and Gupta, 2019): one update at a time.

    Parameters
    ----------
    mixing : float
        alpha in (0, 1]: x <- (1 - alpha s(tau)) x + alpha s(tau) x_i (default 0.6).
    staleness, staleness_exponent, hinge_a, hinge_b
        The staleness function s(tau) (default (1 + tau)^-0.5).
    """

    buffer_size = 1

    def __init__(self, mixing: float = 0.6, *, staleness: str = "polynomial", staleness_exponent: float = 0.5,
                 hinge_a: float = 10.0, hinge_b: float = 4.0, **kwargs) -> None:  # noqa: ANN003 - FedAvg's
        super().__init__(staleness=staleness, staleness_exponent=staleness_exponent, hinge_a=hinge_a,
                         hinge_b=hinge_b, **kwargs)
        self.mixing = mixing

    def combine(self, server_round: int, current: ArrayRecord, arrived: list[tuple[Message, int]]) -> ArrayRecord:
        values = {key: current[key].numpy().astype(np.float64) for key in current.keys()}
        for message, start in arrived:  # more than one only outside fedsim's scheduler: in turn
            alpha = float(self.mixing * self.weight(server_round - start))
            update = message.content[self.arrayrecord_key]
            for key in values:
                values[key] = (1 - alpha) * values[key] + alpha * update[key].numpy().astype(np.float64)
        return _as_record(values, current)
