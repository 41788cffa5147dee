"""Which strategies may aggregate partial sums (streaming aggregation in cohort workers).

A strategy qualifies when its ``aggregate_train`` is exactly the weighted mean of the replies'
arrays by one metric (``weighted_by_key``), possibly followed by a server-side step on that
mean: Flower's FedAvg and the FedAvg-based FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, and
fedsim's ``fedavg`` and ``moon`` (FedAvg's server; its contrastive term is the clients'). The
weighted mean of W workers' weighted means, each weighted by its workers' total weight, equals
the weighted mean over all clients up to floating-point summation order. Median, trimmed mean, Krum, Bulyan, q-FedAvg, the DP wrappers (per-client
clipping and noise on the server), ``uniform`` and ``ema`` do not qualify.
"""

from __future__ import annotations

from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Strategy

from . import stacked
from .averaging import WeightedFedAvg
from .contrastive import Moon

STREAMABLE: tuple[type, ...] = (
    flwr_strategy.FedAvg, flwr_strategy.FedProx, flwr_strategy.FedAvgM, flwr_strategy.FedAdam,
    flwr_strategy.FedYogi, flwr_strategy.FedAdagrad, WeightedFedAvg,
    stacked.FedProx, stacked.FedAvgM, stacked.FedAdam, stacked.FedYogi, stacked.FedAdagrad, Moon,
)


def stream_weight_key(strategy: Strategy) -> str | None:
    """The metric a streaming worker weights its clients by, or None when the strategy does not qualify."""
    if type(strategy) in STREAMABLE:  # exact types: subclasses may aggregate differently
        return str(strategy.weighted_by_key)  # type: ignore[attr-defined]
    return None
