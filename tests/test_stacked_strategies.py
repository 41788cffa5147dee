"""Flower's strategies on stacked updates (fedsim.strategies.stacked) against Flower's own aggregate_train.

Every pair of runs uses two fresh instances with identical arguments: Flower's class, fed Flower
messages with per-client ``ArrayRecord``s, and fedsim's subclass, fed ``ClientReply``s whose
updates are rows of ``UpdateStack``s, as fedsim's workers build them. Three rounds each, so that
server-optimizer state and adaptive clipping carry over; each round's global model is Flower's
output (so a tolerance does not compound). Equal bit for bit where the module says so, else
within the stated tolerance.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy

from fedsim.core.loop import ClientGrid
from fedsim.core.protocol import ClientReply, reply
from fedsim.core.stack import StackAggregation, UpdateStack
from fedsim.strategies import stacked
from fedsim.strategies.averaging import UniformAvg
from fedsim.strategies.registry import (
    _INTERNAL_ARGS,
    SAMPLING_ARGS,
    STRATEGIES,
    _parameters,
    build_strategy,
    strategy_arguments,
)

SAMPLING = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1, "min_evaluate_nodes": 1,
            "min_available_nodes": 1}
EPS32 = float(np.finfo(np.float32).eps)

# name -> (Flower's class, fedsim's class, arguments)
PAIRS: dict[str, tuple[type, type, dict]] = {
    "fedprox": (flwr_strategy.FedProx, stacked.FedProx, {"proximal_mu": 0.1}),
    "fedavgm": (flwr_strategy.FedAvgM, stacked.FedAvgM, {"server_momentum": 0.9, "server_learning_rate": 0.7}),
    "fedadam": (flwr_strategy.FedAdam, stacked.FedAdam, {"eta": 0.05, "tau": 1e-3}),
    "fedyogi": (flwr_strategy.FedYogi, stacked.FedYogi, {"eta": 0.05}),
    "fedadagrad": (flwr_strategy.FedAdagrad, stacked.FedAdagrad, {"eta": 0.05}),
    "fedmedian": (flwr_strategy.FedMedian, stacked.FedMedian, {}),
    "fedtrimmedavg": (flwr_strategy.FedTrimmedAvg, stacked.FedTrimmedAvg, {"beta": 0.2}),
    "krum": (flwr_strategy.Krum, stacked.Krum, {"num_malicious_nodes": 1}),
    "multikrum": (flwr_strategy.MultiKrum, stacked.MultiKrum, {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),
    "bulyan": (flwr_strategy.Bulyan, stacked.Bulyan, {"num_malicious_nodes": 1}),
    "qfedavg": (flwr_strategy.QFedAvg, stacked.QFedAvg,
                {"client_learning_rate": 0.1, "q": 0.2, "train_loss_key": "train-loss"}),
}
DP_PAIRS: dict[str, tuple[type, type, dict]] = {
    "dp-fixed-server": (flwr_strategy.DifferentialPrivacyServerSideFixedClipping,
                        stacked.DifferentialPrivacyServerSideFixedClipping,
                        {"noise_multiplier": 0.5, "clipping_norm": 1.5}),
    "dp-adaptive-server": (flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping,
                           stacked.DifferentialPrivacyServerSideAdaptiveClipping,
                           {"noise_multiplier": 0.2, "initial_clipping_norm": 1.5}),
    "dp-fixed-client": (flwr_strategy.DifferentialPrivacyClientSideFixedClipping,
                        stacked.DifferentialPrivacyClientSideFixedClipping,
                        {"noise_multiplier": 0.5, "clipping_norm": 0.5}),
    "dp-adaptive-client": (flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping,
                           stacked.DifferentialPrivacyClientSideAdaptiveClipping,
                           {"noise_multiplier": 0.2, "initial_clipping_norm": 0.5}),
}


# ----------------------------------------------------------------------------- clients, replies, rounds


@pytest.fixture(autouse=True)
def _no_forced_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's ``to_numpy_ndarrays(keep_input=False)`` forces a full ``gc.collect()`` per client record
    (q-FedAvg, Bulyan): tens of milliseconds each here, and nothing to do with the values compared."""
    import flwr.app.message.arrayrecord as arrayrecord

    monkeypatch.setattr(arrayrecord, "gc", type("NoGC", (), {"collect": staticmethod(lambda: 0)}))



def initial(with_int: bool = True, int_shape: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """A global model: conv weight, bias, an int64 counter like BatchNorm's num_batches_tracked (0-d)."""
    generator = torch.Generator().manual_seed(99)
    state = {"conv.weight": torch.randn(4, 3, 3, 3, generator=generator) * 0.3,
             "conv.bias": torch.randn(4, generator=generator) * 0.1}
    if with_int:
        state["bn.num_batches_tracked"] = torch.zeros(int_shape, dtype=torch.int64)
    state["fc.weight"] = torch.randn(5, 16, generator=generator) * 0.2
    return state


def trained(glob: ArrayRecord, k: int, server_round: int, *, scale: float = 0.05) -> list[dict[str, torch.Tensor]]:
    """K clients' weights after "training" from ``glob``: float32 near it, the counter ahead of it by a distinct
    power of two (so that no two clients are equally far from a median: Bulyan's tie rule is then irrelevant)."""
    generator = torch.Generator().manual_seed(1000 * server_round + k)
    states = []
    for i in range(k):
        state = {}
        for name in glob.keys():
            value = torch.from_numpy(np.array(glob[name].numpy()))
            if name == "bn.num_batches_tracked":
                state[name] = (value.floor() + 2**i).to(torch.int64)
            else:
                spread = scale * (1 + i / 2)  # unequal update norms: some clients clipped, some not
                state[name] = (value + spread * torch.randn(value.shape, generator=generator)).to(torch.float32)
        states.append(state)
    return states


def task(client_id: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord()}), dst_node_id=client_id, message_type=MessageType.TRAIN)


def metrics(i: int, server_round: int) -> dict:
    return {"num-examples": [13, 50, 7, 31, 2, 99, 40, 8][i % 8], "train-loss": 0.3 + 0.2 * i + 0.05 * server_round,
            "norm_bit": int(i % 3 == 0)}


def flower_messages(states: list[dict[str, torch.Tensor]], ids: list[int], server_round: int) -> list[Message]:
    return [reply(task(c), c, metrics(i, server_round), ArrayRecord({n: t.clone() for n, t in s.items()}))
            for i, (c, s) in enumerate(zip(ids, states))]


def stacked_replies(states: list[dict[str, torch.Tensor]], ids: list[int], server_round: int,
                    split: list[int] | None = None, device: str = "cpu") -> list[ClientReply]:
    """Replies as fedsim's workers make them: one stack per worker (``split``: clients per worker)."""
    replies, first = [], 0
    for size in split or [len(states)]:
        stack = UpdateStack.of(ids[first : first + size], states[first : first + size])
        stack.rows = {dtype: rows.to(device) for dtype, rows in stack.rows.items()}
        replies += [ClientReply(c, reply(task(c), c, metrics(first + j, server_round)), update=stack.view(j))
                    for j, c in enumerate(ids[first : first + size])]
        first += size
    return replies


def as_dict(record: ArrayRecord | None) -> dict[str, np.ndarray] | None:
    return None if record is None else {key: record[key].numpy() for key in record.keys()}


def assert_bits(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def assert_within(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: Callable[[np.ndarray], float]) -> float:
    """Same names, dtypes and shapes; values within ``atol(expected)``; returns the largest difference."""
    assert list(a) == list(b)
    worst = 0.0
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol(b[key]), err_msg=key)
        worst = max(worst, float(np.max(np.abs(a[key].astype(np.float64) - b[key]))))
    return worst


def run_rounds(make: Callable[[type], object], pair: tuple[type, type], k: int, *, rounds: int = 3,
               with_int: bool = True, seed: int = 5, split: list[int] | None = None, device: str = "cpu",
               compare: Callable[[dict, dict], None] = assert_bits) -> tuple[object, object]:
    """``rounds`` rounds of Flower's class (per-client messages) and fedsim's (stacked replies), compared each round."""
    flower, ours = make(pair[0]), make(pair[1])
    ids = [3, 8, 1, 12, 5, 0, 7, 9][:k]  # replies arrive out of client-id order
    glob = ArrayRecord(initial(with_int))
    for server_round in range(1, rounds + 1):
        states = trained(glob, k, server_round)
        for strategy in (flower, ours):
            random.seed(seed)
            strategy.configure_train(server_round, glob, ConfigRecord(), ClientGrid(ids))
        order = sorted(range(k), key=lambda i: ids[i])  # the loop hands Flower replies in client-id order
        np.random.seed(seed + server_round)
        expected = flower.aggregate_train(server_round, [flower_messages(states, ids, server_round)[i] for i in order])
        np.random.seed(seed + server_round)
        got = ours.aggregate_stacked(server_round, stacked_replies(states, ids, server_round, split, device))
        compare(as_dict(got[0]), as_dict(expected[0]))
        assert (got[1] is None) == (expected[1] is None)
        if expected[1] is not None:
            assert dict(got[1]) == dict(expected[1])
        if expected[0] is not None:
            glob = expected[0]
    return flower, ours


def plain(arguments: dict) -> Callable[[type], object]:
    return lambda cls: cls(**SAMPLING, **arguments)


def magnitude_tolerance(ulps: float) -> Callable[[np.ndarray], float]:
    return lambda expected: ulps * EPS32 * max(1.0, float(np.max(np.abs(expected))))


# ----------------------------------------------------------------------------- the strategies, bit for bit


@pytest.mark.parametrize("name", ["fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
                                  "krum", "multikrum", "bulyan"])
def test_stacked_aggregate_equals_flowers_bit_for_bit(name: str) -> None:
    flower_cls, ours_cls, arguments = PAIRS[name]
    flower, ours = run_rounds(plain(arguments), (flower_cls, ours_cls), 7, split=[3, 4])
    for state in ("momentum_vector", "m_t", "v_t"):  # the server optimizer's state is the same too
        if getattr(flower, state, None) is not None:
            mine, theirs = getattr(ours, state), getattr(flower, state)
            pairs = zip(mine.values(), theirs.values()) if isinstance(theirs, dict) else zip(mine, theirs)
            assert all(a.tobytes() == b.tobytes() and a.dtype == b.dtype for a, b in pairs), state


@pytest.mark.parametrize("k", [4, 6, 8])
def test_median_of_an_even_and_odd_number_of_clients(k: int) -> None:
    run_rounds(plain({}), PAIRS["fedmedian"][:2], k, rounds=1)
    run_rounds(plain({}), PAIRS["fedmedian"][:2], k - 1, rounds=1)


def test_trimmed_mean_is_bitwise_with_few_kept_values_and_within_float32_rounding_otherwise() -> None:
    flower_cls, ours_cls, arguments = PAIRS["fedtrimmedavg"]
    run_rounds(plain(arguments), (flower_cls, ours_cls), 5)  # 3 kept of 5: NumPy's partition leaves them sorted
    worst: list[float] = []
    run_rounds(plain(arguments), (flower_cls, ours_cls), 8,  # 6 kept of 8: summed in another order
               compare=lambda a, b: worst.append(assert_within(a, b, magnitude_tolerance(4))))
    assert max(worst) > 0, "expected a float32 rounding difference somewhere"


def test_qfedavg_is_bit_for_bit_and_returns_float64() -> None:
    flower_cls, ours_cls, arguments = PAIRS["qfedavg"]

    def same(a: dict, b: dict) -> None:
        assert all(a[key].dtype == np.float64 for key in a)  # Flower's q-FedAvg returns float64
        assert_bits(a, b)

    run_rounds(plain(arguments), (flower_cls, ours_cls), 6, with_int=False, split=[2, 4], compare=same)


def first_round(strategy: object, k: int, stacked_path: bool, int_shape: tuple[int, ...] = ()) -> object:
    """Round 1 of ``strategy`` on the model with an int64 counter of ``int_shape``, on one path."""
    ids, glob = list(range(k)), ArrayRecord(initial(int_shape=int_shape))
    states = trained(glob, k, 1)
    strategy.configure_train(1, glob, ConfigRecord(), ClientGrid(ids))
    if stacked_path:
        return strategy.aggregate_stacked(1, stacked_replies(states, ids, 1))
    return strategy.aggregate_train(1, flower_messages(states, ids, 1))


def test_qfedavg_and_server_side_clipping_refuse_integer_arrays_on_both_paths() -> None:
    flower_cls, ours_cls, arguments = PAIRS["qfedavg"]
    with pytest.raises(TypeError):  # NumPy: cannot cast the float product back into the int64 array
        first_round(flower_cls(**SAMPLING, **arguments), 4, stacked_path=False)
    with pytest.raises(TypeError, match="q-FedAvg cannot aggregate integer arrays \\(bn.num_batches_tracked\\)"):
        first_round(ours_cls(**SAMPLING, **arguments), 4, stacked_path=True)
    # server-side clipping scales each update in place: an int64 array cannot take it, except a 0-d one,
    # which NumPy's subtraction turns into a scalar that Flower leaves unscaled (test_dp_wrappers_...)
    flower_dp, ours_dp, dp_arguments = DP_PAIRS["dp-fixed-server"]
    make = dp_maker(dp_arguments, "fedprox", 4)
    with pytest.raises(TypeError):
        first_round(make(flower_dp), 4, stacked_path=False, int_shape=(2,))
    with pytest.raises(TypeError, match="cannot clip integer array 'bn.num_batches_tracked'"):
        first_round(make(ours_dp), 4, stacked_path=True, int_shape=(2,))


def test_krum_picks_the_same_client_as_flower_and_not_the_outlier() -> None:
    ids = [4, 2, 9, 6, 1, 7]
    states = trained(ArrayRecord(initial()), len(ids), 1, scale=0.01)
    states[2] = {n: (t * 50 if t.is_floating_point() else t) for n, t in states[2].items()}  # client 9 attacks
    flower, ours = (cls(**SAMPLING, num_malicious_nodes=1) for cls in (flwr_strategy.Krum, stacked.Krum))
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    expected, _ = flower.aggregate_train(1, [flower_messages(states, ids, 1)[i] for i in order])
    got, _ = ours.aggregate_stacked(1, stacked_replies(states, ids, 1))
    assert_bits(as_dict(got), as_dict(expected))
    picked = [i for i, s in enumerate(states) if all(np.array_equal(expected[n].numpy(), t.numpy().astype(
        expected[n].numpy().dtype)) for n, t in s.items())]
    assert len(picked) == 1 and ids[picked[0]] != 9


def test_bulyan_with_too_few_clients_returns_nothing_on_both_paths() -> None:
    flower_cls, ours_cls, arguments = PAIRS["bulyan"]  # f = 1 needs 7 clients
    run_rounds(plain(arguments), (flower_cls, ours_cls), 6, rounds=1)
    assert ours_cls(**SAMPLING, **arguments).aggregate_stacked(1, []) == (None, None)


def test_a_user_selection_rule_keeps_bulyan_on_the_per_client_path() -> None:
    from flwr.serverapp.strategy.multikrum import select_multikrum

    def rule(contents, f, n):  # noqa: ANN001, ANN202 - Flower's selection-rule signature
        return select_multikrum(contents, f, n)

    run_rounds(plain({"num_malicious_nodes": 1, "selection_rule": rule}), PAIRS["bulyan"][:2], 7, rounds=1)


def test_the_result_does_not_depend_on_arrival_order_or_worker_split() -> None:
    ours = stacked.FedMedian(**SAMPLING)
    states = trained(ArrayRecord(initial()), 6, 1)
    ids = list(range(6))
    reference, _ = ours.aggregate_stacked(1, stacked_replies(states, ids, 1))
    shuffled = stacked_replies(states, ids, 1, split=[2, 1, 3])
    random.Random(0).shuffle(shuffled)
    again, _ = ours.aggregate_stacked(1, shuffled)
    assert_bits(as_dict(again), as_dict(reference))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["fedadam", "fedmedian", "fedtrimmedavg", "krum", "bulyan", "qfedavg",
                                  "dp-adaptive-server"])
def test_stacks_on_the_accelerator_aggregate_there_to_the_same_values(name: str) -> None:
    """Elementwise arithmetic, sums in an explicit order and sorting give the same bits on a GPU as on the CPU;
    the norms of q-FedAvg and DP clipping are float64 torch sums there (Flower's: float32), and the trimmed
    mean of 5 kept values sums in another order than NumPy's, so those are within float32 rounding."""
    if name.startswith("dp-"):
        flower_cls, ours_cls, arguments = DP_PAIRS[name]
        make = dp_maker(arguments, "fedadam", 7)
    else:
        flower_cls, ours_cls, arguments = PAIRS[name]
        make = plain(arguments)
    exact = name in ("fedadam", "fedmedian", "krum", "bulyan")
    compare = assert_bits if exact else (lambda a, b: assert_within(a, b, magnitude_tolerance(4)))
    run_rounds(make, (flower_cls, ours_cls), 7, with_int=name != "qfedavg", device="cuda", compare=compare)


# ----------------------------------------------------------------------------- differential privacy


def dp_maker(arguments: dict, base: str, k: int) -> Callable[[type], object]:
    """A DP wrapper of ``cls`` around a fresh base: Flower's class for Flower's wrapper, fedsim's for fedsim's."""

    def make(cls: type) -> object:
        if base == "uniform":
            inner = UniformAvg(**SAMPLING)
        else:
            flower_base, our_base, base_arguments = PAIRS[base]
            inner = (our_base if issubclass(cls, stacked._StackedDP) else flower_base)(**SAMPLING, **base_arguments)
        return cls(inner, num_sampled_clients=k, **arguments)

    return make


@pytest.mark.parametrize("name", list(DP_PAIRS))
@pytest.mark.parametrize("base", ["fedadam", "uniform"])
@pytest.mark.parametrize("with_int", [True, False])
def test_dp_wrappers_draw_the_same_noise_and_clip_on_the_stack(name: str, base: str, with_int: bool) -> None:
    flower_cls, ours_cls, arguments = DP_PAIRS[name]
    flower, ours = run_rounds(dp_maker(arguments, base, 6), (flower_cls, ours_cls), 6, with_int=with_int)
    assert ours.clipping_norm == pytest.approx(flower.clipping_norm, rel=1e-12)  # adaptive: the same updates


@pytest.mark.parametrize("with_int", [True, False])
def test_clipping_on_the_stack_is_flowers_per_client_clipping(with_int: bool) -> None:
    from flwr.supercore.differential_privacy import compute_adaptive_clip_model_update

    glob = ArrayRecord(initial(with_int))
    states = trained(glob, 6, 1)
    clipped, bits = stacked.clip_to_global(stacked_replies(states, list(range(6)), 1), glob, 1.5)
    assert 0 < sum(bits) < 6, "some clients clipped, some not"
    for state, clipped_reply, bit in zip(states, clipped, bits):
        expected = [t.numpy().copy() for t in state.values()]
        assert compute_adaptive_clip_model_update(expected, glob.to_numpy_ndarrays(), 1.5) == bit
        got = {name: t.numpy() for name, t in clipped_reply.update.tensors().items()}
        expected_dict = {name: np.asarray(e) for name, e in zip(state, expected)}
        assert_bits(got, expected_dict)  # clipped or not: the norm is Flower's own on the CPU


def test_unclipped_server_side_dp_is_bit_for_bit() -> None:
    flower_cls, ours_cls, _ = DP_PAIRS["dp-fixed-server"]
    run_rounds(dp_maker({"noise_multiplier": 0.5, "clipping_norm": 1e3}, "fedavgm", 5), (flower_cls, ours_cls), 5)


def test_a_dp_wrapper_around_a_strategy_that_cannot_stack_takes_the_per_client_path() -> None:
    flower_cls, ours_cls, arguments = DP_PAIRS["dp-fixed-server"]

    def make(cls: type) -> object:
        return cls(flwr_strategy.FedAvg(**SAMPLING), num_sampled_clients=5, **arguments)

    assert not isinstance(flwr_strategy.FedAvg(**SAMPLING), StackAggregation)
    assert isinstance(make(ours_cls), StackAggregation)  # the wrapper offers it: it falls back inside
    run_rounds(make, (flower_cls, ours_cls), 5, with_int=False)


# ----------------------------------------------------------------------------- the registry


SWITCHED = {**{name: pair[0] for name, pair in PAIRS.items()}, **{name: pair[0] for name, pair in DP_PAIRS.items()}}


@pytest.mark.parametrize("name", sorted(SWITCHED))
def test_the_registry_offers_the_stacked_classes_with_flowers_arguments(name: str) -> None:
    entry = STRATEGIES[name]
    assert issubclass(entry.cls, SWITCHED[name])
    flower_arguments = [p for p in _parameters(SWITCHED[name]) if p not in SAMPLING_ARGS and p not in _INTERNAL_ARGS]
    assert strategy_arguments(name) == (["base"] if entry.wraps else []) + flower_arguments
    kwargs = {"noise_multiplier": 0.1, "clipping_norm": 1.0} if "fixed" in name else \
        {"noise_multiplier": 0.1} if name.startswith("dp-") else {}
    strategy = build_strategy(name, kwargs, lr=0.05, clients_per_round=10)
    assert isinstance(strategy, StackAggregation) and isinstance(strategy, SWITCHED[name])
    if entry.wraps:
        assert isinstance(strategy.strategy, StackAggregation)  # the default base (fedavg) stacks too


def test_every_weight_averaging_strategy_by_name_aggregates_stacks() -> None:
    out_of_scope = ("fedbuff", "fedasync", "latent-distill")  # asynchronous or no weights to average
    per_client = [name for name, entry in STRATEGIES.items()
                  if not issubclass(entry.cls, StackAggregation) and name not in out_of_scope]
    assert per_client == []


def test_a_round_that_takes_the_stacked_path_then_the_per_client_path_keeps_one_optimizer_state() -> None:
    """FedAdam's m_t/v_t carry over from a stacked round to a per-client one (e.g. a round with a ClientApp reply)."""
    flower = flwr_strategy.FedAdam(**SAMPLING, eta=0.05)
    ours = stacked.FedAdam(**SAMPLING, eta=0.05)
    ids = [0, 1, 2, 3]
    glob = ArrayRecord(initial())
    for server_round in (1, 2, 3):
        states = trained(glob, 4, server_round)
        for strategy in (flower, ours):
            strategy.configure_train(server_round, glob, ConfigRecord(), ClientGrid(ids))
        expected, _ = flower.aggregate_train(server_round, flower_messages(states, ids, server_round))
        if server_round == 2:
            got, _ = ours.aggregate_train(server_round, flower_messages(states, ids, server_round))
        else:
            got, _ = ours.aggregate_stacked(server_round, stacked_replies(states, ids, server_round))
        assert_bits(as_dict(got), as_dict(expected))
        glob = expected
    assert not hasattr(ours, "_stacked_result") or ours._stacked_result is None
    assert "_stacked_result" not in vars(ours)  # nothing transient left for checkpoints


def test_metrics_are_the_strategys_own_aggregate() -> None:
    seen: list[int] = []

    def count(contents, key):  # noqa: ANN001, ANN202 - Flower's train_metrics_aggr_fn signature
        seen.append(len(contents))
        return MetricRecord({"clients": len(contents)})

    ours = stacked.MultiKrum(**SAMPLING, num_malicious_nodes=1, num_nodes_to_select=2, train_metrics_aggr_fn=count)
    states = trained(ArrayRecord(initial()), 5, 1)
    _, metrics = ours.aggregate_stacked(1, stacked_replies(states, list(range(5)), 1))
    assert seen == [2] and metrics["clients"] == 2  # over the selected clients, as Flower's
