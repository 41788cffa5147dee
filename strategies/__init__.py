"""Server strategies (imported as ``fedsim.strategies``), selectable by name.

Every strategy is a ``flwr.serverapp.strategy`` class, so it also works in a plain Flower
``ServerApp``; see :mod:`fedsim.strategies.registry` for the names and
:mod:`fedsim.strategies.averaging` for the weighted-averaging family.
"""

from .asynchronous import AsynchronousStrategy, FedAsync, FedBuff, staleness_weight
from .averaging import SequentialEMA, UniformAvg, WeightedFedAvg, aggregate_arrays, ema_weights
from .contrastive import Moon
from .distillation import LatentDistillation, consensus
from .normalized import FedNova, effective_steps
from .streaming import STREAMABLE, stream_weight_key
from .registry import (
    STRATEGIES,
    STRATEGY_NAMES,
    StrategyError,
    build_strategy,
    parse_strategy_spec,
    strategy_arguments,
)

__all__ = [
    "STREAMABLE", "stream_weight_key", "AsynchronousStrategy", "FedAsync", "FedBuff", "staleness_weight",
    "FedNova", "Moon", "effective_steps", "LatentDistillation", "consensus", "STRATEGIES", "STRATEGY_NAMES", "SequentialEMA",
    "StrategyError", "UniformAvg", "WeightedFedAvg", "aggregate_arrays", "build_strategy",
    "ema_weights", "parse_strategy_spec", "strategy_arguments",
]
