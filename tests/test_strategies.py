"""Aggregation arithmetic of the averaging family, the strategy registry and FedProx's client term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim.clients.training import proximal_term
from fedsim.strategies import (
    STRATEGY_NAMES,
    StrategyError,
    aggregate_arrays,
    build_strategy,
    ema_weights,
    parse_strategy_spec,
)


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Messages need a task identity; the simulation runtime sets one the same way."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0


def reply(partition_id: int, weights: dict[str, np.ndarray], examples: int) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
        "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0}),
        "client": ConfigRecord({"partition-id": partition_id}),
    })
    return Message(content=content, dst_node_id=100 + partition_id, message_type=MessageType.TRAIN)


def models() -> list[dict[str, np.ndarray]]:
    return [{"w": np.full((2, 2), float(v), dtype=np.float32),
             "bn.running_mean": np.array([v, 2 * v], dtype=np.float32),
             "bn.num_batches_tracked": np.array(n, dtype=np.int64)}
            for v, n in ((1.0, 10), (2.0, 20), (4.0, 31))]


def aggregate(name: str, examples=(10, 30, 60), order=(0, 1, 2), **kwargs) -> dict[str, np.ndarray]:
    strategy = build_strategy(name, kwargs)
    replies = [reply(pid, models()[pid], examples[pid]) for pid in order]
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: arrays[k].numpy() for k in arrays.keys()}


def test_fedavg_weights_by_examples_and_keeps_integer_buffers() -> None:
    out = aggregate("fedavg")
    expected = (1 * 10 + 2 * 30 + 4 * 60) / 100
    np.testing.assert_allclose(out["w"], expected)
    np.testing.assert_allclose(out["bn.running_mean"], [expected, 2 * expected], rtol=1e-6)
    assert out["w"].dtype == np.float32
    assert out["bn.num_batches_tracked"].dtype == np.int64
    assert int(out["bn.num_batches_tracked"]) == round((10 * 10 + 20 * 30 + 31 * 60) / 100)


def test_uniform_is_the_plain_mean() -> None:
    out = aggregate("uniform")
    np.testing.assert_allclose(out["w"], (1 + 2 + 4) / 3, rtol=1e-6)
    assert int(out["bn.num_batches_tracked"]) == round((10 + 20 + 31) / 3)


def test_ema_matches_the_sequential_loop_and_its_effective_weights() -> None:
    beta = 0.5
    out = aggregate("ema", beta=beta, order=(2, 0, 1))  # arrival order must not matter
    w = 1.0  # partition 0 first, then w <- beta * w_i + (1 - beta) * w
    for value in (2.0, 4.0):
        w = beta * value + (1 - beta) * w
    np.testing.assert_allclose(out["w"], w, rtol=1e-6)
    np.testing.assert_allclose(ema_weights(3, beta), [0.25, 0.25, 0.5])
    ten = ema_weights(10, 0.5)
    np.testing.assert_allclose(ten, [1 / 512, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2])
    assert ten.sum() == pytest.approx(1.0)


def test_aggregate_arrays_rejects_bad_weights() -> None:
    record = ArrayRecord({"w": Array(np.ones(2, dtype=np.float32))})
    with pytest.raises(ValueError, match="one weight per record"):
        aggregate_arrays([record], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        aggregate_arrays([record], [0.0])


def test_registry_errors_list_what_exists() -> None:
    with pytest.raises(StrategyError, match="unknown strategy 'fedfoo'; allowed: fedavg, uniform, ema"):
        build_strategy("fedfoo")
    with pytest.raises(StrategyError, match="strategy 'ema' has no argument.s. gamma; allowed: beta, weighted_by_key"):
        build_strategy("ema", {"gamma": 1})
    with pytest.raises(StrategyError, match="'fedxgb-bagging' is not offered: it aggregates XGBoost trees"):
        build_strategy("fedxgb-bagging")
    with pytest.raises(StrategyError, match="needs argument.s. noise_multiplier"):
        build_strategy("dp-adaptive-server")
    with pytest.raises(StrategyError, match="base = 'dp-fixed-server' must be one of the synchronous"):
        build_strategy("dp-adaptive-server", {"noise_multiplier": 0.1, "base": "dp-fixed-server"})
    with pytest.raises(StrategyError, match="beta = 1.5 must be in"):
        build_strategy("ema", {"beta": 1.5})
    assert {"fedavg", "uniform", "ema", "fedprox", "fedadam", "fedmedian", "krum", "bulyan", "qfedavg"} <= set(STRATEGY_NAMES)


def test_parse_strategy_spec() -> None:
    assert parse_strategy_spec("ema:beta=0.25") == ("ema", {"beta": 0.25})
    assert parse_strategy_spec("fedadam:eta=0.01:tau=1e-3") == ("fedadam", {"eta": 0.01, "tau": 0.001})
    assert parse_strategy_spec("fedavg:weighted_by_key=num-examples") == ("fedavg", {"weighted_by_key": "num-examples"})
    with pytest.raises(StrategyError, match="'beta' must look like key=value"):
        parse_strategy_spec("ema:beta")


def test_fedprox_proximal_term_value() -> None:
    model = torch.nn.Linear(2, 1)
    anchor = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.weight += 1.0  # two weights moved by 1
        model.bias -= 2.0  # one bias moved by 2
    assert float(proximal_term(model, anchor, mu=0.1).detach()) == pytest.approx(0.5 * 0.1 * (1 + 1 + 4))
