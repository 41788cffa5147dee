"""Simulated time: the clock's arithmetic, device profiles, availability, and the schedulers.

The scheduler tests drive :class:`SynchronousScheduler` and :class:`AsynchronousScheduler` with
a fake loop (tasks and replies built here, clocks with hand-set times), so every expected
value is computed by hand; the end-to-end tests run the in-process executor.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.config import ConfigError
from fedsim.core.protocol import ARRAYS, NUM_EXAMPLES, ClientReply, ClientTask, failed_reply, reply
from fedsim.core.schedule import TrainingRound, drive
from fedsim.strategies import FedAsync, FedBuff, build_strategy, staleness_weight
from fedsim.timing import (
    AlwaysOnline,
    AsynchronousScheduler,
    Daily,
    DeviceProfiles,
    PerRound,
    SimulatedClock,
    SynchronousScheduler,
    Trace,
    read_trace,
    transfer_seconds,
)
from fedsim.timing.availability import TraceError
from fedsim.timing.cost import model_cost
from fedsim.timing.devices import DeviceError, file_profiles, lognormal_profiles, read_device_file, tier_profiles
from fedsim.config.validation import validate

ROOT = Path(__file__).resolve().parents[1]


# -- the clock's arithmetic ---------------------------------------------------------------------

def profiles(n: int, spp: float = 0.01, down: float = 8.0, up: float = 4.0, latency: float = 0.5) -> DeviceProfiles:
    return DeviceProfiles(np.full(n, "x"), np.full(n, spp), np.full(n, down), np.full(n, up), np.full(n, latency))


def test_transfer_time_is_bytes_over_bandwidth_plus_latency() -> None:
    # 1 MB at 8 Mbit/s = 1 s, plus 0.5 s latency; 2.5 MB at 4 Mbit/s = 5 s
    assert transfer_seconds(np.array([1e6, 2.5e6]), np.array([8.0, 4.0]), np.array([0.5, 0.0])).tolist() == [1.5, 5.0]


def test_client_round_time_is_download_plus_compute_plus_upload() -> None:
    p = profiles(3)
    p.seconds_per_sample[2] = 0.03
    work = np.array([100.0, 200.0, 100.0])  # samples per round
    cost = np.array([1.0, 1.0, 2.0])
    clock = SimulatedClock(p, cost, work, seed=0, upload_of=lambda task: 0)
    times = clock.times(1, np.array([0, 1, 2]), np.full(3, 1e6), np.full(3, 2e6))
    assert times.download.tolist() == [1.5, 1.5, 1.5]  # 1 MB / 8 Mbit/s + 0.5
    assert times.upload.tolist() == [4.5, 4.5, 4.5]  # 2 MB / 4 Mbit/s + 0.5
    assert times.compute.tolist() == pytest.approx([1.0, 2.0, 6.0])  # samples * spp * cost
    assert times.total.tolist() == pytest.approx([7.0, 8.0, 12.0])
    assert times.columns(2, 10.0) == pytest.approx({"sim_start": 10.0, "sim_download": 1.5, "sim_compute": 6.0,
                                                    "sim_upload": 4.5, "sim_finish": 22.0})


def test_round_jitter_is_seeded_per_round_and_client() -> None:
    clock = SimulatedClock(profiles(4), np.ones(4), np.full(4, 100.0), seed=3, upload_of=lambda t: 0, round_jitter=0.5)
    a, b = clock.jitter(1, np.array([0, 1, 2, 3])), clock.jitter(1, np.array([2, 0]))
    assert a[[2, 0]].tolist() == b.tolist()  # a client's factor does not depend on who else is sampled
    assert not np.allclose(a, clock.jitter(2, np.array([0, 1, 2, 3])))
    assert SimulatedClock(profiles(2), np.ones(2), np.ones(2), 3, lambda t: 0).jitter(1, np.array([0, 1])).tolist() == [1, 1]


def test_model_cost_is_relative_to_lenet5() -> None:
    assert model_cost("lenet5") == 1.0
    assert 10 < model_cost("resnet8") < model_cost("resnet20") < model_cost("resnet8x4")


# -- device profiles ------------------------------------------------------------------------------

def test_lognormal_profiles_are_seeded_and_centred_on_the_median() -> None:
    a = lognormal_profiles(4000, 0, 0.002, 20.0, 5.0, 0.05, 0.5, 0.5)
    b = lognormal_profiles(4000, 0, 0.002, 20.0, 5.0, 0.05, 0.5, 0.5)
    assert np.array_equal(a.seconds_per_sample, b.seconds_per_sample)
    assert not np.array_equal(a.seconds_per_sample, lognormal_profiles(4000, 1, 0.002, 20, 5, 0.05, 0.5, 0.5).seconds_per_sample)
    assert np.median(a.seconds_per_sample) == pytest.approx(0.002, rel=0.05)
    assert np.std(np.log(a.download_mbps)) == pytest.approx(0.5, rel=0.05)
    exact = lognormal_profiles(5, 0, 0.002, 20.0, 5.0, 0.05, 0.0, 0.0)
    assert exact.seconds_per_sample.tolist() == [0.002] * 5 and exact.upload_mbps.tolist() == [5.0] * 5


def test_tiers_are_drawn_by_weight_with_the_presets_values() -> None:
    only_slow = tier_profiles(50, 0, ["fast", "slow"], [0.0, 1.0], 0.0, 0.0)
    assert set(only_slow.device) == {"slow"} and only_slow.seconds_per_sample.tolist() == [0.008] * 50
    mixed = tier_profiles(3000, 0, ["fast", "medium", "slow"], [0.5, 0.3, 0.2], 0.0, 0.0)
    shares = pd.Series(mixed.device).value_counts(normalize=True)
    assert shares["fast"] == pytest.approx(0.5, abs=0.03) and shares["slow"] == pytest.approx(0.2, abs=0.03)


def test_device_files_per_client_and_per_device_type(tmp_path: Path) -> None:
    per_client = tmp_path / "clients.csv"
    per_client.write_text("client_id,seconds_per_sample,download_mbps,upload_mbps,latency\n"
                          "1,0.5,2,1,0.1\n0,0.25,4,2,0\n")
    p = file_profiles(read_device_file(per_client), 2, 0, 0.5, 0.5)
    assert p.seconds_per_sample.tolist() == [0.25, 0.5] and p.latency.tolist() == [0.0, 0.1]  # as written
    with pytest.raises(DeviceError, match="must list every client 0..2"):
        file_profiles(read_device_file(per_client), 3, 0, 0.0, 0.0)
    types = tmp_path / "types.csv"
    types.write_text("device,weight,seconds_per_sample,download_mbps,upload_mbps,latency\n"
                     "phone,0,0.1,1,1,0\ntablet,1,0.2,2,2,0\n")
    assert set(file_profiles(read_device_file(types), 20, 0, 0.0, 0.0).device) == {"tablet"}
    bad = tmp_path / "bad.csv"
    bad.write_text("device,seconds_per_sample,download_mbps,upload_mbps\nphone,0.1,1,1\n")
    with pytest.raises(DeviceError, match="lacks the column.s. latency"):
        read_device_file(bad)
    bad.write_text("device,seconds_per_sample,download_mbps,upload_mbps,latency\nphone,0,1,1,0\n")
    with pytest.raises(DeviceError, match="must be > 0"):
        read_device_file(bad)


# -- availability ---------------------------------------------------------------------------------

def test_per_round_availability_has_probability_p_and_is_seeded() -> None:
    model = PerRound(10000, 0.3, seed=1)
    assert model.online(0.0, 1).mean() == pytest.approx(0.3, abs=0.02)
    assert np.array_equal(model.online(0.0, 1), model.online(999.0, 1))  # a round's draw holds all round
    assert not np.array_equal(model.online(0.0, 1), model.online(0.0, 2))
    assert np.isinf(model.online_until(np.array([0, 1]), 0.0, 1)).all()


def test_daily_availability_by_hand() -> None:
    model = Daily(3, on_hours=8, period_hours=24, seed=0)
    model.phase = np.array([0.0, 20 * 3600.0, 10 * 3600.0])  # seconds into the cycle at t = 0
    assert model.online(0.0, 1).tolist() == [True, False, False]
    assert model.online(5 * 3600.0, 1).tolist() == [True, True, False]  # client 1: 25 h -> 1 h into its cycle
    assert model.online_until(np.array([0, 1]), 5 * 3600.0, 1).tolist() == [8 * 3600.0, 12 * 3600.0]
    assert model.next_online(9 * 3600.0, 1) == 9 * 3600.0  # client 1 is on until 12 h
    assert model.next_online(12.5 * 3600.0, 1) == pytest.approx(14 * 3600.0, abs=1e-3)  # client 2 comes on


def test_trace_availability_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("client_id,start,end\n7,0,10\n7,10,20\n7,50,100\n3,30,40\n")
    trace = Trace(4, read_trace(path), 0.0)  # ids sorted: [3, 7]; clients 0, 2 -> 3 and 1, 3 -> 7
    assert trace.online(5.0, 1).tolist() == [False, True, False, True]
    assert trace.online_until(np.array([1]), 5.0, 1).tolist() == [20.0]  # touching intervals merge
    assert trace.online(35.0, 1).tolist() == [True, False, True, False]
    assert trace.next_online(20.0, 1) == pytest.approx(30.0, abs=1e-3)
    assert trace.next_online(100.0, 1) == math.inf  # a trace that does not repeat ends
    repeating = Trace(2, read_trace(path, 100.0), 100.0)
    assert repeating.online(105.0, 1).tolist() == [False, True]  # period 100: 105 -> 5
    assert repeating.online_until(np.array([1]), 60.0, 1).tolist() == [120.0]  # [50, 100) wraps into [0, 20)
    path.write_text("client_id,start,end\n0,10,5\n")
    with pytest.raises(TraceError, match="0 <= start < end"):
        read_trace(path)


# -- the synchronous scheduler, with a fake loop --------------------------------------------------

class FakeLoop:
    """Builds tasks for any client ids and answers every task with a reply; records what ran."""

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.configured: list[list[int]] = []
        self.ran: list[list[int]] = []
        self.fail = fail

    def configure(self, server_round: int, ids: list[int]) -> list[ClientTask]:
        self.configured.append(list(ids))
        content = RecordDict({ARRAYS: ArrayRecord({"w": Array(np.zeros(250, dtype=np.float32))}),
                              "config": ConfigRecord({"server-round": server_round})})
        return [ClientTask(c, Message(content, dst_node_id=c, message_type=MessageType.TRAIN)) for c in ids]

    def run(self, tasks: list[ClientTask]) -> list[ClientReply]:
        self.ran.append([t.client_id for t in tasks])
        return [failed_reply(t, "boom") if t.client_id in self.fail else
                ClientReply(t.client_id, reply(t.message, t.client_id, {NUM_EXAMPLES: 10},
                                               ArrayRecord({"w": Array(np.full(250, t.client_id, dtype=np.float32))})))
                for t in tasks]

    def drive(self, scheduler, server_round: int) -> TrainingRound:  # noqa: ANN001 - a Scheduler
        """Answer the scheduler's requests for one round, as the round loop does."""
        return drive(scheduler.train_round(server_round), lambda ids: self.configure(server_round, ids), self.run)


def clock_with_compute(seconds: list[float]) -> SimulatedClock:
    """A clock whose client c computes ``seconds[c]`` and transfers in no time."""
    n = len(seconds)
    p = DeviceProfiles(np.full(n, "x"), np.asarray(seconds, dtype=float), np.full(n, np.inf), np.full(n, np.inf),
                       np.zeros(n))
    return SimulatedClock(p, np.ones(n), np.ones(n), seed=0, upload_of=lambda task: 0)


def test_without_a_clock_the_scheduler_samples_like_the_plain_loop() -> None:
    from fedsim.core.sampling import TRAIN, sample_clients

    loop = FakeLoop()
    training = loop.drive(SynchronousScheduler(5, 20, 4), 3)
    assert loop.configured == [sample_clients(5, 3, TRAIN, 20, 4)] == loop.ran
    assert training.row == {} and not training.dropped


def test_the_deadline_drops_exactly_the_clients_slower_than_it_without_training_them() -> None:
    seconds = [5.0, 12.0, 8.0, 30.0, 10.0, 10.5]
    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 6, 6, clock=clock_with_compute(seconds), deadline=10.0)
    training = loop.drive(scheduler, 1)
    assert sorted(d.client_id for d in training.dropped) == [1, 3, 5]  # 12, 30, 10.5 > 10; 10 makes it
    assert {d.status for d in training.dropped} == {"straggler"}
    assert loop.ran == [[0, 2, 4]]  # stragglers are not computed
    assert [r.client_id for r in training.arrived] == [0, 2, 4]
    assert training.row["sim_round_seconds"] == 10.0 and scheduler.now == 10.0  # the round waits for the deadline
    assert "more than the deadline of 10 s" in training.dropped[0].reason
    second = loop.drive(scheduler, 2)
    assert training.times[0]["sim_finish"] == 5.0 and second.times[0]["sim_start"] == 10.0


def test_dropped_clients_can_be_trained_and_discarded() -> None:
    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 3, 3, clock=clock_with_compute([1.0, 9.0, 2.0]), deadline=5.0,
                                     train_dropped=True)
    training = loop.drive(scheduler, 1)
    assert loop.ran == [[0, 1, 2]]
    assert [r.client_id for r in training.arrived] == [0, 2]
    (straggler,) = training.dropped
    assert straggler.client_id == 1 and straggler.reply is not None and straggler.reply.ok


def test_over_selection_keeps_the_k_earliest_finishers() -> None:
    seconds = [7.0, 3.0, 9.0, 1.0, 5.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 10, 3, clock=clock_with_compute(seconds), over_selection=0.5)
    training = loop.drive(scheduler, 1)
    (sampled,) = loop.configured
    assert len(sampled) == math.ceil(1.5 * 3)  # 5 of 10
    expected = sorted(sorted(sampled, key=lambda c: seconds[c])[:3])
    assert [r.client_id for r in training.arrived] == expected == loop.ran[0]
    assert {d.status for d in training.dropped} == {"surplus"} and len(training.dropped) == 2
    assert training.row["sim_round_seconds"] == max(seconds[c] for c in expected)  # closes at the K-th


def test_sampling_picks_only_online_clients_and_offline_clients_drop_out() -> None:
    class Half(AlwaysOnline):
        def online(self, t: float, server_round: int) -> np.ndarray:
            return np.arange(self.num_clients) % 2 == 0

        def online_until(self, ids: np.ndarray, t: float, server_round: int) -> np.ndarray:
            return np.where(np.asarray(ids) == 4, t + 2.0, np.inf)  # client 4 leaves after 2 s

    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 10, 4, availability=Half(10), clock=clock_with_compute([3.0] * 10))
    for server_round in range(1, 6):
        training = loop.drive(scheduler, server_round)
        assert all(c % 2 == 0 for c in loop.configured[-1]) and len(loop.configured[-1]) == 4
        assert all(d.client_id == 4 and d.status == "offline" for d in training.dropped)
        assert 4 not in loop.ran[-1]


def test_a_round_waits_until_some_client_comes_online() -> None:
    model = Daily(2, on_hours=1, period_hours=24, seed=0)
    model.phase = np.array([22 * 3600.0, 20 * 3600.0])  # online from 2 h and from 4 h on
    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 2, 2, availability=model, clock=clock_with_compute([60.0, 60.0]))
    training = loop.drive(scheduler, 1)
    assert loop.configured == [[0]]  # only client 0 is online at 2 h
    assert training.times[0]["sim_start"] == pytest.approx(2 * 3600.0, abs=1e-3)
    assert training.row["sim_round_seconds"] == pytest.approx(2 * 3600.0 + 60.0, abs=1e-3)


# -- the asynchronous scheduler and FedBuff/FedAsync ----------------------------------------------

def test_async_rounds_keep_the_concurrency_and_one_update_per_client() -> None:
    """Concurrency 2, buffer 2, four clients of 1, 4, 2 and 3 s."""
    loop = FakeLoop()
    scheduler = AsynchronousScheduler(0, 4, concurrency=2, buffer_size=2, availability=AlwaysOnline(4),
                                      clock=clock_with_compute([1.0, 4.0, 2.0, 3.0]))
    first = loop.drive(scheduler, 1)
    start = loop.configured[0]
    assert len(start) == 2 and len(scheduler.in_flight) == 2  # never more than 2 in flight
    # each arrival frees a slot that a not-yet-used client fills at once
    assert len(first.arrived) == 2 and all(t["staleness"] == 0.0 for t in first.times.values())
    finishes = sorted(t["sim_finish"] for t in first.times.values())
    assert first.row["sim_time"] == finishes[-1] == scheduler.now
    second = loop.drive(scheduler, 2)
    assert {c for r in (first, second) for c in (x.client_id for x in r.arrived)} <= {0, 1, 2, 3}
    staleness = [t["staleness"] for t in second.times.values()]
    assert max(staleness) >= 1.0  # a client from round 1's model arrives in round 2
    assert second.row["staleness_max"] == max(staleness)
    # a client contributes at most one update to a buffer
    assert len({r.client_id for r in second.arrived}) == len(second.arrived)


def test_async_event_sequence_exactly() -> None:
    """Two clients, both training at once, buffer 1; client 0 takes 1 s, client 1 takes 3 s.

    By hand: round 1 starts both at 0; 0 arrives at 1 (staleness 0) and restarts from round 2's
    model at 1, arrives at 2; again from round 3's model at 2, arriving at 3 -- the same moment as
    client 1, which started from round 1's model: the tie goes to the lower id, so round 3
    aggregates client 0 and round 4 client 1, with staleness 4 - 1 = 3.
    """
    loop = FakeLoop()
    scheduler = AsynchronousScheduler(0, 2, concurrency=2, buffer_size=1, availability=AlwaysOnline(2),
                                      clock=clock_with_compute([1.0, 3.0]))
    rounds = [loop.drive(scheduler, r) for r in (1, 2, 3, 4)]
    arrivals = [[(x.client_id, r.times[x.client_id]["sim_start"], r.times[x.client_id]["sim_finish"],
                  r.times[x.client_id]["staleness"]) for x in r.arrived] for r in rounds]
    assert arrivals == [[(0, 0.0, 1.0, 0.0)], [(0, 1.0, 2.0, 0.0)], [(0, 2.0, 3.0, 0.0)], [(1, 0.0, 3.0, 3.0)]]
    assert loop.ran == [[0, 1], [0], [0], [0]]  # clients that start from one model run as one batch
    assert [r.row["sim_time"] for r in rounds] == [1.0, 2.0, 3.0, 3.0]
    assert rounds[3].row["staleness_mean"] == 3.0 and len(rounds[0].dispatched) == 2


def test_failed_async_arrivals_do_not_fill_the_buffer() -> None:
    loop = FakeLoop(fail=(0,))
    scheduler = AsynchronousScheduler(0, 4, concurrency=4, buffer_size=2, availability=AlwaysOnline(4),
                                      clock=clock_with_compute([1.0, 2.0, 3.0, 4.0]))
    training = loop.drive(scheduler, 1)
    assert [r.client_id for r in training.arrived] == [0, 1, 2]  # 0 failed, so the round waits for 2
    assert sum(r.ok for r in training.arrived) == 2 and training.row["sim_time"] == 3.0


def _message(client: int, values: np.ndarray, examples: int = 10) -> Message:
    task = Message(RecordDict(), dst_node_id=client, message_type=MessageType.TRAIN)
    return reply(task, client, {NUM_EXAMPLES: examples}, ArrayRecord({"w": Array(values.astype(np.float64))}))


def _dispatch(strategy, server_round: int, arrays: ArrayRecord, clients: list[int]) -> None:  # noqa: ANN001
    from fedsim.core.loop import ClientGrid

    list(strategy.configure_train(server_round, arrays, ConfigRecord(), ClientGrid(clients)))


def test_fedbuff_applies_staleness_weighted_deltas_by_hand() -> None:
    strategy = FedBuff(buffer_size=2, server_learning_rate=0.5, **_sampling())
    x0 = ArrayRecord({"w": Array(np.array([0.0, 0.0]))})
    _dispatch(strategy, 1, x0, [0, 1])  # both start from x0 (round 1)
    # round 1 aggregates client 0 only (buffer of one here, as a scheduler flushing early would)
    x1, _ = strategy.aggregate_train(1, [_message(0, np.array([2.0, 4.0]))])
    assert x1["w"].numpy().tolist() == [1.0, 2.0]  # 0 + 0.5 * 1/1 * s(0) * (2, 4)
    _dispatch(strategy, 2, x1, [2])  # client 2 starts from x1
    x2, metrics = strategy.aggregate_train(2, [_message(1, np.array([3.0, 3.0])), _message(2, np.array([1.0, 6.0]))])
    # client 1: staleness 1, delta (3, 3) from x0, weight 1/sqrt(2); client 2: staleness 0, delta (0, 4) from x1
    expected = np.array([1.0, 2.0]) + 0.5 / 2 * (np.array([3.0, 3.0]) / math.sqrt(2) + np.array([0.0, 4.0]))
    assert np.allclose(x2["w"].numpy(), expected, rtol=0, atol=1e-12)
    assert metrics["staleness-mean"] == 0.5
    assert strategy._models == {}  # no client trains from an old model any more: memory is freed


def test_fedasync_mixes_each_arrival_by_staleness() -> None:
    strategy = FedAsync(mixing=0.5, **_sampling())
    x0 = ArrayRecord({"w": Array(np.array([0.0]))})
    _dispatch(strategy, 1, x0, [0, 1])
    x1, _ = strategy.aggregate_train(1, [_message(0, np.array([4.0]))])
    assert x1["w"].numpy().tolist() == [2.0]  # (1 - 0.5) * 0 + 0.5 * 4
    x2, _ = strategy.aggregate_train(2, [_message(1, np.array([10.0]))])
    alpha = 0.5 / math.sqrt(2)  # staleness 1
    assert x2["w"].numpy()[0] == pytest.approx((1 - alpha) * 2.0 + alpha * 10.0, abs=1e-12)


def test_staleness_functions() -> None:
    assert staleness_weight([0, 3, 8]).tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert staleness_weight([0, 5], "constant").tolist() == [1.0, 1.0]
    assert staleness_weight([2, 4, 6], "hinge", hinge_a=1.0, hinge_b=4.0).tolist() == pytest.approx([1.0, 1.0, 1 / 3])


def _sampling() -> dict:
    return {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1, "min_evaluate_nodes": 1,
            "min_available_nodes": 1}


def test_async_strategies_are_built_by_name() -> None:
    assert build_strategy("fedbuff", {"buffer_size": 4}).buffer_size == 4
    assert build_strategy("fedasync").buffer_size == 1


# -- config rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"time.policy.deadline": 10.0}, "time.policy.deadline = 10.0: needs a simulated clock"),
    ({"strategy.name": "fedbuff"}, "asynchronous aggregation is driven by the simulated clock"),
    ({"strategy.name": "fedbuff", "time.devices.kind": "tiers", "time.policy.deadline": 5.0}, "a deadline is a synchronous policy"),
    ({"strategy.name": "fedbuff", "time.devices.kind": "tiers", "strategy.kwargs.buffer_size": 50},
     "must be <= partition.num_clients"),
    ({"time.devices.kind": "tiers", "time.devices.tiers": ["fast", "quick"]}, "allowed tiers: fast, medium, slow"),
    ({"time.devices.kind": "phone"}, "time.devices.kind = 'phone': allowed: none, lognormal, tiers, file"),
    ({"time.devices.kind": "tiers", "time.availability.kind": "trace", "time.availability.path": "/nonexistent.csv"}, "no such file"),
    ({"time.devices.kind": "file"}, "(a CSV of device profiles) needs the file"),
    ({"time.availability.kind": "bernoulli", "time.availability.p": 0.0}, "time.availability.p = 0.0: must be in (0, 1]"),
    ({"time.devices.kind": "tiers", "time.policy.train_dropped": True, "executor.streaming": True,
      "executor.kind": "cohort"}, "dropped clients trained anyway"),
])
def test_bad_time_settings_are_refused_with_the_rule(small_config, settings, message) -> None:
    with pytest.raises(ConfigError) as error:
        small_config(**settings)
    assert message in str(error.value)


# -- end to end (in-process executor) -------------------------------------------------------------

TIMED = {"time.devices.kind": "tiers", "train.rounds": 3, "train.clients_per_round": 5, "evaluation.federated_every": 0}


@pytest.mark.slow  # keeps the fast set under a minute
def test_simulated_time_without_policies_changes_no_result(small_config) -> None:
    from fedsim import run

    plain = run(small_config(**{k: v for k, v in TIMED.items() if k != "time.devices.kind"}, **{"output.name": "plain"}),
                progress=False)
    timed = run(small_config(**TIMED, **{"output.name": "timed", "output.figures": True}), progress=False)
    assert plain.rounds["test_accuracy"].tolist() == timed.rounds["test_accuracy"].tolist()
    assert plain.clients["client_id"].tolist() == timed.clients["client_id"].tolist()
    assert plain.rounds["sim_time"].isna().all() and plain.summary["simulated_hours"] is None
    sim = timed.rounds["sim_time"].dropna()
    assert len(sim) == 3 and (np.diff(sim) > 0).all()
    train = timed.clients[timed.clients["phase"] == "train"]
    per_round = train.assign(d=train["sim_finish"] - train["sim_start"]).groupby("round")["d"].max()
    assert np.allclose(per_round.to_numpy(), timed.rounds["sim_round_seconds"].dropna().to_numpy())
    devices = pd.read_csv(timed.path / "devices.csv")
    assert len(devices) == 10 and set(devices["device"]) <= {"fast", "medium", "slow"}
    assert (timed.path / "figures" / "accuracy_vs_time.png").is_file()
    assert (timed.path / "figures" / "client_times.png").is_file()


def test_a_deadline_run_records_stragglers_and_the_same_seed_repeats_it(small_config) -> None:
    from fedsim import run

    settings = {**TIMED, "time.policy.deadline": 1.0, "time.devices.round_jitter": 0.3}
    a = run(small_config(**settings, **{"output.name": "a"}), progress=False)
    b = run(small_config(**settings, **{"output.name": "b"}), progress=False)
    volatile = ["wall_seconds", "seconds"]
    for table in ("rounds", "clients"):
        left, right = getattr(a, table), getattr(b, table)
        pd.testing.assert_frame_equal(left.drop(columns=[c for c in volatile if c in left]),
                                      right.drop(columns=[c for c in volatile if c in right]), check_exact=True)
    train = a.clients[a.clients["phase"] == "train"]
    took = train["sim_finish"] - train["sim_start"]
    assert (train["status"] == "straggler").any() and (train["status"] == "ok").any()
    assert ((train["status"] == "straggler") == (took > 1.0)).all()
    assert train.loc[train["status"] == "straggler", "num_examples"].isna().all()  # never trained
    assert a.rounds["clients_dropped"].dropna().sum() == (train["status"] == "straggler").sum()
    assert a.summary["clients_dropped"]["straggler"] == (train["status"] == "straggler").sum()


@pytest.mark.slow
def test_an_asynchronous_run_learns_and_resumes_exactly(small_config) -> None:
    from fedsim import resume, run
    from fedsim.ops.interrupt import RunInterrupted

    from interrupting import StopAfter, same_results

    settings = {"time.devices.kind": "tiers", "strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3,
                "train.clients_per_round": 6, "train.rounds": 8, "evaluation.federated_every": 0,
                "data.synthetic_train": 1200, "data.synthetic_test": 300}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    assert reference.rounds["test_accuracy"].iloc[-1] > 0.3  # 10 classes: chance is 0.1
    assert reference.rounds["staleness_max"].max() >= 1
    assert (reference.rounds["clients_succeeded"].dropna() == 3).all()
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(4)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)


@pytest.mark.slow  # keeps the fast set under a minute
def test_compare_runs_per_entry_settings_and_plots_accuracy_against_time(small_config) -> None:
    from fedsim import compare

    config = small_config(**{**TIMED, "train.rounds": 2, "output.name": "cmp", "output.figures": True})
    result = compare(config, "fedavg,fedavg:time.policy.deadline=1.0,fedbuff:buffer_size=3", progress=False)
    assert result.summary["status"].tolist() == ["ok"] * 3
    runs = {row["strategy"]: row for _, row in result.summary.iterrows()}
    assert runs["fedavg"]["clients_dropped"] == 0 and runs["fedavg:time.policy.deadline=1.0"]["clients_dropped"] > 0
    assert (result.tidy["metric"] == "sim_hours").any()
    assert (result.path / "figures" / "accuracy_vs_time.png").is_file()
    assert (result.path / "figures" / "client_times.png").is_file()
    deadline = pd.read_csv(result.path / "runs" / "fedavg_time.policy.deadline=1.0-s0" / "config.toml", sep="\0", header=None)
    assert any("deadline = 1.0" in line for line in deadline[0])


def test_an_entry_cannot_override_the_strategy_or_the_seed() -> None:
    from fedsim.frontends.comparison import parse_strategies
    from fedsim.strategies import StrategyError

    with pytest.raises(StrategyError, match="cannot differ between compared entries"):
        parse_strategies("fedavg:strategy.name=fedprox")


def test_the_example_trace_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "experiments" / "make_example_traces.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("diurnal_week.csv", "devices_example.csv"):
        assert (tmp_path / name).read_bytes() == (ROOT / "configs" / "traces" / name).read_bytes()
    trace = read_trace(ROOT / "configs" / "traces" / "diurnal_week.csv", 7 * 86400)
    assert trace["client_id"].nunique() == 100
    file_profiles(read_device_file(ROOT / "configs" / "traces" / "devices_example.csv"), 10, 0, 0.0, 0.0)


@pytest.mark.slow
def test_the_example_files_drive_a_run(small_config) -> None:
    config = small_config(**{**TIMED, "time.devices.kind": "file",
                             "time.devices.path": str(ROOT / "configs" / "traces" / "devices_example.csv"),
                             "time.availability.kind": "trace",
                             "time.availability.path": str(ROOT / "configs" / "traces" / "diurnal_week.csv"),
                             "time.availability.period": 604800.0, "time.policy.deadline": 30.0})
    validate(config)
    from fedsim import run

    result = run(config, progress=False)
    train = result.clients[result.clients["phase"] == "train"]
    assert set(train["status"]) <= {"ok", "straggler", "offline"}
    assert (result.path / "availability.csv").read_bytes() == (ROOT / "configs/traces/diurnal_week.csv").read_bytes()


@pytest.mark.parametrize("settings", [
    {"time.policy.deadline": 1.0, "time.policy.over_selection": 0.4},
    pytest.param({"strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3, "train.clients_per_round": 6},
                 marks=pytest.mark.slow),  # keeps the fast set under a minute
], ids=["deadline+over-selection", "fedbuff"])
def test_timed_results_are_identical_for_any_number_of_cohort_workers(small_config, settings) -> None:
    from fedsim import run

    from test_cohort import run_on_cohort

    overrides = {**TIMED, "train.rounds": 3, **settings}
    reference = run(small_config(**overrides, **{"output.name": "reference"}), progress=False)
    for workers in (1, 3):
        rounds, clients, grid, executor, _ = run_on_cohort(small_config(**overrides, **{"output.name": f"w{workers}"}),
                                                           workers)
        pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"))
        pd.testing.assert_frame_equal(clients.drop(columns="seconds"), reference.clients.drop(columns="seconds"))
        # one executor call per round: the sampled clients together; asynchronous: every client that
        # starts from the round's model, in one batch (dispatched at different simulated times)
        assert len(executor.busy) == 3 and all(len(b) <= workers for b in executor.busy)


@pytest.mark.ray
def test_fedbuff_runs_on_ray_cohort_workers_like_in_process(small_config) -> None:
    from fedsim import run

    overrides = {**TIMED, "strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3, "train.clients_per_round": 6}
    reference = run(small_config(**overrides, **{"output.name": "reference", "executor.kind": "in-process"}),
                    progress=False)
    on_ray = run(small_config(**overrides, **{"output.name": "ray", "executor.kind": "cohort",
                                              "executor.workers": 2}), progress=False)
    pd.testing.assert_frame_equal(on_ray.rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"))
    pd.testing.assert_frame_equal(on_ray.clients.drop(columns="seconds"), reference.clients.drop(columns="seconds"))


@pytest.mark.parametrize("settings", [
    {},
    pytest.param({"strategy.name": "latent-distill", "model.representation_dim": 8, "latent_distill.transfer_size": 60,
                  "model.architectures": ["lenet5", "niid_cnn"]}, marks=pytest.mark.slow),
], ids=["weights", "latent-distill"])
def test_the_clock_charges_what_clients_really_receive_and_send(small_config, settings) -> None:
    """Download and upload times are those of the bytes counted in rounds.csv, predicted before training."""
    from fedsim import run

    result = run(small_config(**{**TIMED, "train.rounds": 2, **settings}), progress=False)
    devices = pd.read_csv(result.path / "devices.csv")
    train = result.clients[(result.clients["phase"] == "train") & (result.clients["status"] == "ok")]
    train = train.merge(devices, on="client_id")
    up = (train["sim_upload"] - train["latency"]) * train["upload_mbps"] * 1e6 / 8
    down = (train["sim_download"] - train["latency"]) * train["download_mbps"] * 1e6 / 8
    rounds = result.rounds[result.rounds["round"] > 0].set_index("round")
    assert np.allclose(up.groupby(train["round"]).sum(), rounds["bytes_up"], rtol=1e-9)
    assert np.allclose(down.groupby(train["round"]).sum(), rounds["bytes_down"], rtol=1e-9)
    samples = result.clients[result.clients["phase"] == "train"].merge(devices, on="client_id")
    work = samples["sim_compute"] / (samples["seconds_per_sample"] * samples["model_cost"])
    assert (work > 0).all() and np.allclose(work, np.round(work))  # whole samples of local work


def test_a_trace_that_ends_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from fedsim.timing import NoClientAvailable

    path = tmp_path / "trace.csv"
    path.write_text("client_id,start,end\n0,0,5\n1,0,5\n")
    for scheduler in (SynchronousScheduler(0, 2, 2, Trace(2, read_trace(path)), clock_with_compute([2.0, 2.0])),
                      AsynchronousScheduler(0, 2, 2, 2, Trace(2, read_trace(path)), clock_with_compute([2.0, 2.0]))):
        loop = FakeLoop()
        assert len(loop.drive(scheduler, 1).arrived) == 2  # both finish at 2 s
        loop.drive(scheduler, 2)  # from 2 s to 4 s
        with pytest.raises(NoClientAvailable, match="none will come online again.*time.availability.period"):
            for server_round in (3, 4):
                loop.drive(scheduler, server_round)


def test_a_round_in_which_nobody_drew_online_has_no_clients() -> None:
    class Nobody(PerRound):
        def online(self, t: float, server_round: int) -> np.ndarray:
            return np.zeros(self.num_clients, dtype=bool) if server_round == 1 else super().online(t, server_round)

    loop = FakeLoop()
    scheduler = SynchronousScheduler(0, 5, 2, Nobody(5, 1.0, 0), clock_with_compute([1.0] * 5))
    empty = loop.drive(scheduler, 1)
    assert empty.dispatched == [] and empty.arrived == [] and scheduler.now == 0.0
    assert len(loop.drive(scheduler, 2).arrived) == 2


@pytest.mark.parametrize("name", ["stragglers.toml", "cifar10_stragglers.toml"])
def test_the_shipped_time_configs_are_valid(name: str) -> None:
    from fedsim.config.validation import load_config

    config = load_config(ROOT / "configs" / name)
    assert config.time.devices.kind == "tiers" and config.train.clients_per_round == 10
