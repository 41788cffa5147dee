"""Strategy keyword arguments are checked by type and range before anything starts."""

from __future__ import annotations

import pytest

from fedsim.config import ConfigError
from fedsim.strategies import STRATEGIES, StrategyError, build_strategy
from fedsim.strategies.arguments import RANGES, RANGES_BY_STRATEGY
from fedsim.strategies.registry import _parameters


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("fedtrimmedavg", {"beta": -0.3}, "beta = -0.3 must be in [0, 0.5)"),
    ("fedtrimmedavg", {"beta": 0.5}, "beta = 0.5 must be in [0, 0.5)"),
    ("fedadam", {"eta": -1}, "eta = -1 must be a number > 0"),
    ("fedyogi", {"beta_2": 1.0}, "beta_2 = 1.0 must be in [0, 1)"),
    ("fedavgm", {"server_momentum": -0.5}, "server_momentum = -0.5 must be in [0, 1)"),
    ("krum", {"num_malicious_nodes": -1}, "num_malicious_nodes = -1 must be >= 0"),
    ("qfedavg", {"q": -1}, "q = -1 must be >= 0"),
    ("fedprox", {"proximal_mu": -0.01}, "proximal_mu = -0.01 must be >= 0"),
    ("ema", {"beta": 1.5}, "beta = 1.5 must be in [0, 1]"),
    ("dp-fixed-server", {"noise_multiplier": -1, "clipping_norm": 0}, "clipping_norm = 0 must be a number > 0"),
    ("dp-adaptive-client", {"noise_multiplier": 0.0, "target_clipped_quantile": 2}, "target_clipped_quantile = 2"),
    ("fedadam", {"eta": "fast"}, "eta = 'fast' must be a number"),
    ("fedadam", {"eta": True}, "eta = True must be a number"),
    ("krum", {"num_malicious_nodes": 1.5}, "num_malicious_nodes = 1.5 must be an integer"),
    ("fedavg", {"weighted_by_key": 3}, "weighted_by_key = 3 must be a string"),
    ("fedadam", {"eta": float("inf")}, "eta = inf must be a number > 0"),
    ("bulyan", {"selection_rule": "krum"}, "selection_rule takes a Python object"),
])
def test_bad_types_and_ranges_are_refused_with_the_rule(name, kwargs, message) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy(name, kwargs)
    assert f"strategy {name!r}" in str(info.value) and message in str(info.value)


def test_good_values_pass_and_integers_count_as_numbers() -> None:
    assert build_strategy("fedadam", {"eta": 1, "beta_1": 0}).eta == 1
    assert build_strategy("fedtrimmedavg", {"beta": 0.1}).beta == 0.1
    assert build_strategy("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}).num_nodes_to_select == 3


def test_every_rule_names_a_real_parameter() -> None:
    """The range table cannot rot: each rule's parameter exists in some offered strategy's signature."""
    everything = {p for entry in STRATEGIES.values() for p in _parameters(entry.cls)}
    assert set(RANGES) <= everything, set(RANGES) - everything
    for strategy, rules in RANGES_BY_STRATEGY.items():
        assert set(rules) <= set(_parameters(STRATEGIES[strategy].cls)), strategy


def test_a_bad_argument_in_the_config_is_refused_before_anything_runs(small_config) -> None:
    with pytest.raises(ConfigError, match="eta = -1 must be a number > 0"):
        small_config(**{"strategy.name": "fedadam", "strategy.kwargs.eta": -1})
