"""Checks of strategy keyword arguments: type and range, before anything starts.

Flower's strategy constructors accept almost anything (a negative learning rate, a string
where a float belongs) and fail later, mid-run, or not at all. :func:`check_arguments` refuses
such values with a message naming the strategy, the parameter, the value and what is allowed.

Types come from the constructor's signature (``float`` accepts integers, ``int`` and ``float``
never accept booleans); parameters that take Python objects (``accountant``,
``selection_rule``) cannot come from a TOML config and are refused. Ranges come from
:data:`RANGES` (by parameter name, with per-strategy exceptions in :data:`RANGES_BY_STRATEGY`),
the one place each rule lives.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedsim.errors import InputError


@dataclass(frozen=True)
class Rule:
    """A range a numeric argument must lie in, and how to say it."""

    holds: Callable[[float], bool]
    text: str


def _positive() -> Rule:
    return Rule(lambda v: v > 0, "must be a number > 0")


def _non_negative() -> Rule:
    return Rule(lambda v: v >= 0, "must be >= 0")


def _fraction_open() -> Rule:
    return Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")


RANGES: dict[str, Rule] = {
    # server optimisers (FedAdam, FedYogi, FedAdagrad: Reddi et al. 2021; FedAvgM: Hsu et al. 2019)
    "eta": _positive(),
    "eta_l": _positive(),
    "tau": _positive(),
    "beta_1": _fraction_open(),
    "beta_2": _fraction_open(),
    "server_learning_rate": _positive(),
    "server_momentum": _fraction_open(),
    # FedProx, q-FedAvg
    "proximal_mu": _non_negative(),
    "q": _non_negative(),
    "client_learning_rate": _positive(),
    # Byzantine-robust aggregation
    "num_malicious_nodes": _non_negative(),
    "num_nodes_to_select": _non_negative(),
    # central differential privacy
    "noise_multiplier": _non_negative(),
    "clipping_norm": _positive(),
    "initial_clipping_norm": _positive(),
    "target_clipped_quantile": Rule(lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "clip_norm_lr": _positive(),
    "clipped_count_stddev": _non_negative(),
    "num_sampled_clients": Rule(lambda v: v >= 1, "must be >= 1"),
    # asynchronous aggregation (FedBuff: Nguyen et al. 2022; FedAsync: Xie et al. 2019)
    "buffer_size": Rule(lambda v: v >= 1, "must be >= 1 (updates per aggregation)"),
    "mixing": Rule(lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "staleness_exponent": _non_negative(),
    "hinge_a": _positive(),
    "hinge_b": _non_negative(),
}
RANGES_BY_STRATEGY: dict[str, dict[str, Rule]] = {
    "fedtrimmedavg": {"beta": Rule(lambda v: 0 <= v < 0.5, "must be in [0, 0.5) (the share cut at each end)")},
    "ema": {"beta": Rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")},
    "moon": {"mu": _non_negative(), "temperature": _positive()},
    "feddyn": {"alpha": _positive(), "max_grad_norm": Rule(lambda v: v >= 0, "must be >= 0 (0: no clipping)")},
}
_WORDS = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false"}
_PYTHON_ONLY = "takes a Python object; it cannot be set from a config"


def _kinds(annotation: Any) -> set[str]:
    """``float``, ``int``, ``str``, ``bool``, ``None`` or ``object`` for each alternative of an annotation."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds = set()
    for part in (p.strip() for p in text.split("|")):
        kinds.add(part if part in ("float", "int", "str", "bool", "None") else "object")
    return kinds


def _type_ok(value: Any, kinds: set[str]) -> bool:
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    return value is None and "None" in kinds


def rule_for(strategy: str, name: str) -> Rule | None:
    return RANGES_BY_STRATEGY.get(strategy, {}).get(name) or RANGES.get(name)


def check_arguments(strategy: str, kwargs: dict[str, Any], parameters: dict[str, inspect.Parameter],
                    error: type[InputError] = InputError) -> None:
    """Refuse a wrongly typed or out-of-range keyword argument of ``strategy`` (names are checked before)."""
    problems = []
    for name, value in kwargs.items():
        if name not in parameters:
            continue  # e.g. `base` of the DP wrappers, checked by the registry
        kinds = _kinds(parameters[name].annotation)
        if kinds == {"object"} or kinds == {"object", "None"}:
            problems.append(f"{name} {_PYTHON_ONLY}")
            continue
        if not _type_ok(value, kinds):
            wanted = " or ".join(_WORDS[k] for k in sorted(kinds) if k in _WORDS)
            problems.append(f"{name} = {value!r} must be {wanted}")
            continue
        rule = rule_for(strategy, name)
        if rule is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or not rule.holds(value):
                problems.append(f"{name} = {value!r} {rule.text}")
    if problems:
        raise error(f"strategy {strategy!r}: " + "; ".join(problems))
