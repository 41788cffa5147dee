"""Server strategies (imported as ``fedsim.strategies``), selectable by name.

Every strategy is a ``flwr.serverapp.strategy`` class, so it also works in a plain Flower
``ServerApp``. fedsim's round loop samples clients itself (seeded, by partition id) and hands
the strategy a grid that exposes only the sampled nodes; strategies are therefore built with
``fraction_train = fraction_evaluate = 1`` and minimum node counts of 1.
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
}
STRATEGY_NAMES = tuple(STRATEGIES)

# Arguments fedsim sets itself: sampling happens in fedsim's round loop.
_SAMPLING_ARGS = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


class StrategyError(ValueError):
    """Unknown strategy name or keyword argument."""


def strategy_arguments(name: str) -> list[str]:
    """The keyword arguments a user may pass to strategy ``name``."""
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    return [p for p in params if p != "self" and p not in _SAMPLING_ARGS
            and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def build_strategy(name: str, kwargs: dict[str, Any] | None = None) -> Strategy:
    """Instantiate strategy ``name`` with ``kwargs``; errors list what exists."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGY_NAMES)}")
    kwargs = dict(kwargs or {})
    allowed = strategy_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise StrategyError(
            f"strategy {name!r} has no argument(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(allowed) or '(none)'} (sampling is set by train.fraction_train / "
            "train.clients_per_round)"
        )
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    sampling = {k: v for k, v in _SAMPLING_ARGS.items() if k in params}
    try:
        return STRATEGIES[name](**sampling, **kwargs)
    except (TypeError, ValueError) as err:
        raise StrategyError(f"strategy {name!r} rejected its arguments {kwargs}: {err}") from err


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "StrategyError", "build_strategy", "strategy_arguments"]
