"""Stacked client updates: the same weighted mean bit for bit, any split into stacks, the wire, the fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsim.clients.app import client_app
from fedsim.clients.handler import trains_direct
from fedsim.core.arrays import aggregate_arrays
from fedsim.core.protocol import (
    ARRAYS,
    ClientReply,
    ClientTask,
    failed_reply,
    pack_cohort_replies,
    reply,
    unpack_cohort_replies,
)
from fedsim.core.screening import screen_updates
from fedsim.core.stack import Layout, UpdateStack, weighted_mean
from fedsim.runs.executors import InProcessExecutor
from fedsim.runs.plan import initial_model
from fedsim.runs.prepare import prepare


def states(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """K BatchNorm-like state dicts: float32 weights of several shapes, a 0-d int64 counter."""
    generator = torch.Generator().manual_seed(seed)
    return [{"conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
             "bn.running_mean": torch.randn(4, generator=generator),
             "bn.num_batches_tracked": torch.tensor(10 * (i + 1) + i, dtype=torch.int64),
             "fc.bias": torch.randn(5, generator=generator) * 1e-3}
            for i in range(k)]


def numpy_mean(records: list[ArrayRecord], weights: np.ndarray) -> dict[str, np.ndarray]:
    """The per-client NumPy weighted mean fedsim used before stacks (float64, client by client)."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    out = {}
    for key in records[0].keys():
        first = records[0][key].numpy()
        total = np.zeros(first.shape, dtype=np.float64)
        for record, weight in zip(records, w):
            total += record[key].numpy().astype(np.float64) * weight
        if np.issubdtype(first.dtype, np.integer):
            total = np.rint(total)
        out[key] = total.astype(first.dtype)
    return out


def as_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record.keys()}


def assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def test_the_stacked_mean_equals_the_per_client_numpy_mean_bit_for_bit() -> None:
    clients = states(7)
    weights = np.array([13, 50, 7, 31, 2, 99, 40], dtype=np.float64)
    expected = numpy_mean([ArrayRecord(s) for s in clients], weights)
    stacked = weighted_mean(UpdateStack.of(range(7), clients).views(), weights)
    assert_same_bits(as_dict(stacked), expected)
    assert stacked["bn.num_batches_tracked"].numpy().shape == ()  # a 0-d buffer stays 0-d
    assert_same_bits(as_dict(aggregate_arrays([ArrayRecord(s) for s in clients], weights)), expected)


@pytest.mark.parametrize("split", [[6], [3, 3], [1, 2, 3], [1, 1, 1, 1, 1, 1]])
def test_the_mean_does_not_depend_on_how_clients_are_split_into_stacks(split: list[int]) -> None:
    clients = states(6, seed=3)
    weights = [5.0, 1.0, 9.0, 2.0, 2.0, 8.0]
    views, first = [], 0
    for size in split:
        views += UpdateStack.of(range(first, first + size), clients[first : first + size]).views()
        first += size
    reference = weighted_mean(UpdateStack.of(range(6), clients).views(), weights)
    assert_same_bits(as_dict(weighted_mean(views, weights)), as_dict(reference))


def test_a_view_reads_its_clients_arrays_and_counts_the_bytes_flower_would() -> None:
    clients = states(3)
    stack = UpdateStack.of([4, 8, 9], clients)
    for index, state in enumerate(clients):
        view = stack.view(index)
        assert view.client_id == [4, 8, 9][index]
        assert list(view.tensors()) == list(state)
        for name, tensor in view.tensors().items():
            assert torch.equal(tensor, state[name]) and tensor.dtype == state[name].dtype
        assert view.nbytes == ArrayRecord(state).count_bytes()
        assert_same_bits(as_dict(view.record()), as_dict(ArrayRecord(state)))


def test_nonfinite_names_the_client_and_the_array() -> None:
    clients = states(4)
    clients[2]["bn.running_mean"][1] = float("nan")
    clients[3]["fc.bias"][0] = float("inf")
    stack = UpdateStack.of(range(4), clients)
    assert [stack.nonfinite(k) for k in range(4)] == [[], [], ["bn.running_mean"], ["fc.bias"]]


def task(client_id: int, arrays: ArrayRecord | None = None, **config: object) -> ClientTask:
    content = RecordDict({"config": ConfigRecord(dict(config))})
    if arrays is not None:
        content["arrays"] = arrays
    return ClientTask(client_id, Message(content, dst_node_id=client_id, message_type=MessageType.TRAIN))


def test_a_cohort_reply_carries_one_stack_and_unpacks_to_views() -> None:
    clients = states(3)
    tasks = [task(c) for c in (2, 5, 7)]
    stack = UpdateStack.of([2, 7], [clients[0], clients[2]])
    replies = [ClientReply(2, reply(tasks[0].message, 2, {"num-examples": 10}), update=stack.view(0)),
               failed_reply(tasks[1], "RuntimeError: boom"),
               ClientReply(7, reply(tasks[2].message, 7, {"num-examples": 30}), update=stack.view(1))]
    packed = pack_cohort_replies(replies, 1.5)
    assert [key for key in packed.array_records] == ["stack0"]  # one record, one Array per dtype
    assert sorted(packed["stack0"].keys()) == ["float32", "int64"]
    unpacked = unpack_cohort_replies(Message(packed, reply_to=Message(RecordDict(), dst_node_id=1,
                                                                      message_type="train.cohort")), tasks)
    assert [r.ok for r in unpacked] == [True, False, True] and unpacked[1].error == "RuntimeError: boom"
    assert unpacked[0].metrics["num-examples"] == 10 and unpacked[2].metrics["num-examples"] == 30
    assert ARRAYS not in unpacked[0].message.content.array_records  # not serialized per client
    assert_same_bits(as_dict(unpacked[2].arrays), as_dict(ArrayRecord(clients[2])))  # built when asked
    assert unpacked[0].upload_bytes == ArrayRecord(clients[0]).count_bytes()


def test_streaming_a_stack_sends_its_weighted_mean() -> None:
    clients = states(2)
    tasks = [task(c) for c in (0, 1)]
    stack = UpdateStack.of([0, 1], clients)
    replies = [ClientReply(c, reply(tasks[c].message, c, {"num-examples": n}), update=stack.view(c))
               for c, n in ((0, 10), (1, 30))]
    packed = pack_cohort_replies(replies, 0.1, stream_key="num-examples")
    assert "stack0" not in packed.array_records
    assert_same_bits(as_dict(packed["partial:arrays"]),
                     numpy_mean([ArrayRecord(s) for s in clients], np.array([10.0, 30.0])))
    assert float(packed["partial:metrics"]["num-examples"]) == 40.0


def test_the_server_screen_reads_stacked_updates_in_place() -> None:
    clients = states(3)
    clients[1]["conv.weight"][0, 0, 0, 0] = float("nan")
    stack = UpdateStack.of([0, 1, 2], clients)
    tasks = [task(c) for c in range(3)]
    replies = [ClientReply(c, reply(tasks[c].message, c, {"num-examples": 1}), update=stack.view(c)) for c in range(3)]
    screened = screen_updates(tasks, replies, ArrayRecord(states(1)[0]))
    assert [r.ok for r in screened] == [True, False, True]
    assert "NaN or infinite values (in conv.weight)" in screened[1].error
    wrong = {**states(1)[0], "fc.bias": torch.zeros(6)}
    screened = screen_updates(tasks, replies, ArrayRecord(wrong))
    assert not any(r.ok for r in screened) and "does not match the global model" in screened[0].error


def test_only_plain_training_tasks_skip_the_client_app() -> None:
    assert trains_direct(task(0, ArrayRecord(states(1)[0]), **{"server-round": 1}).message)
    assert trains_direct(task(0, ArrayRecord(states(1)[0]), **{KEY_CLIPPING_NORM: 1.0}).message)  # clipped by the worker
    with_peer = task(0, ArrayRecord(states(1)[0]), **{KEY_CLIPPING_NORM: 1.0}).message
    with_peer.content["peer-3"] = ArrayRecord(states(1)[0])  # the mod refuses several ArrayRecords: the ClientApp's path
    assert not trains_direct(with_peer)
    assert not trains_direct(task(0, ArrayRecord(states(1)[0]), **{"fedsim.distill": True}).message)
    evaluate = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=0, message_type=MessageType.EVALUATE)
    assert not trains_direct(evaluate)


def test_the_in_process_executor_keeps_weights_stacked_with_fedsims_client_app(small_config) -> None:
    prepared = prepare(small_config())
    arrays = ArrayRecord(initial_model(prepared.config, prepared.dataset).state_dict())
    config = ConfigRecord({"fedsim.run-dir": str(prepared.staging.resolve()), "server-round": 1})
    tasks = [task(c, arrays, **dict(config)) for c in (0, 3, 4)]
    fast = InProcessExecutor(client_app, 10).execute(tasks)
    assert all(r.ok and r.update is not None for r in fast)
    assert len({id(r.update.stack) for r in fast}) == 1  # one stack for the worker's clients
    assert all(ARRAYS not in r.message.content.array_records for r in fast)
    # another ClientApp is always called, and its replies carry their own arrays: the same values
    slow = InProcessExecutor(lambda msg, context: client_app(msg, context), 10).execute(tasks)
    assert all(r.ok and r.update is None for r in slow)
    for f, s in zip(fast, slow):
        assert_same_bits(as_dict(f.arrays), as_dict(s.arrays))
        assert f.upload_bytes == s.upload_bytes
    assert Layout.of(fast[0].update.tensors()) == fast[0].update.layout


def test_the_fast_path_and_a_stacked_aggregate_build_no_message_per_client(small_config, monkeypatch) -> None:
    """Replies of the fast path are records without a Flower ``Message``; one is made only on request."""
    from fedsim.strategies.averaging import WeightedFedAvg

    prepared = prepare(small_config())
    arrays = ArrayRecord(initial_model(prepared.config, prepared.dataset).state_dict())
    config = ConfigRecord({"fedsim.run-dir": str(prepared.staging.resolve()), "server-round": 1})
    tasks = [task(c, arrays, **dict(config)) for c in (0, 3, 4)]
    made = []
    original = Message.__init__

    def counting(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003 - Message's signature
        made.append(kwargs.get("reply_to"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Message, "__init__", counting)
    replies = InProcessExecutor(client_app, 10).execute(tasks)
    expected = aggregate_arrays([ArrayRecord(r.update.tensors()) for r in replies],
                                np.array([r.metrics["num-examples"] for r in replies], dtype=np.float64))
    mean, metrics = WeightedFedAvg().aggregate_stacked(1, replies)
    assert made == []  # neither the executor nor the stacked aggregate made a message
    assert_same_bits(as_dict(mean), as_dict(expected))
    weights = [r.metrics["num-examples"] for r in replies]
    loss = sum(w * r.metrics["train-loss"] for w, r in zip(weights, replies)) / sum(weights)
    assert metrics["train-loss"] == pytest.approx(loss, rel=1e-12)
    message = replies[1].message  # asked for: made once, replying to its task, with the same records
    assert len(made) == 1 and made[0] is tasks[1].message and replies[1].message is message
    assert message.content["metrics"]["num-examples"] == replies[1].metrics["num-examples"]


@pytest.mark.parametrize("adaptive", [False, True])
def test_client_side_dp_clipping_on_the_fast_path_equals_flowers_mod_bit_for_bit(small_config, adaptive) -> None:
    """The worker clips a client's weights as Flower's fixed/adaptive clipping mod does through the ClientApp."""
    from flwr.supercore.differential_privacy import KEY_NORM_BIT

    prepared = prepare(small_config())
    arrays = ArrayRecord(initial_model(prepared.config, prepared.dataset).state_dict())
    norms = {}
    for norm in (1e-3, 1e3):  # every update clipped; none clipped
        config = {"fedsim.run-dir": str(prepared.staging.resolve()), "server-round": 1, KEY_CLIPPING_NORM: norm,
                  "fedsim.dp-adaptive": adaptive}
        tasks = [task(c, arrays, **config) for c in (0, 3, 4)]
        fast = InProcessExecutor(client_app, 10).execute(tasks)
        slow = InProcessExecutor(lambda msg, context: client_app(msg, context), 10).execute(tasks)
        assert all(r.ok and r.update is not None for r in fast) and all(r.ok and r.update is None for r in slow)
        for f, s in zip(fast, slow):
            assert_same_bits(as_dict(f.arrays), as_dict(s.arrays))
            if adaptive:
                assert f.metrics[KEY_NORM_BIT] == s.metrics[KEY_NORM_BIT]
            else:
                assert KEY_NORM_BIT not in f.metrics
        update = {k: f.arrays[k].numpy().astype(np.float64) - arrays[k].numpy() for k in arrays.keys()}
        norms[norm] = float(np.sqrt(sum(np.sum(u * u) for u in update.values())))
        if adaptive:
            assert [int(r.metrics[KEY_NORM_BIT]) for r in fast] == [int(norm < 1)] * 3
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3)  # clipped to the norm
    assert norms[1e3] > 1e-2  # left as trained
