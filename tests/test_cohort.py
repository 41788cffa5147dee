"""The cohort executor: packing, balance, and results independent of the number of workers."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.runs.server import execute, flower_executor
from fedsim.clients.app import client_app
from fedsim.datasets import dataset_digest
from fedsim.clients.node import run_files
from fedsim.runs.executors import CohortExecutor, NodePool, balance
from fedsim.runs.experiment import run
from fedsim.runs.prepare import prepare
from fedsim.core.protocol import (
    ClientTask,
    pack_cohort,
    pack_cohort_replies,
    reply,
    unpack_cohort,
    unpack_cohort_replies,
)
from fedsim.core.spec import PartitionIndex


class LocalGrid(Grid):
    """``workers`` Flower nodes in this process: each message goes to the ClientApp with its node's context."""

    def __init__(self, workers: int) -> None:
        self.contexts = {node: Context(run_id=0, node_id=node, node_config={"partition-id": node - 100,
                                                                             "num-partitions": workers},
                                       state=RecordDict(), run_config={}) for node in range(100, 100 + workers)}
        self.messages: list[Message] = []
        self.replies: list[Message] = []
        self._unread: dict[str, Message] = {}

    def set_run(self, run) -> None:  # noqa: ANN001
        raise NotImplementedError

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Runs each message's node at once; its reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.messages)}"  # as Flower's grid does
            self.messages.append(msg)
            reply = client_app(msg, self.contexts[msg.metadata.dst_node_id])
            self.replies.append(reply)
            self._unread[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._unread.pop(i) for i in list(message_ids) if i in self._unread]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_on_cohort(config, workers: int):  # noqa: ANN001, ANN201 - rounds, clients, grid, executor, workers.csv
    config.executor.kind = "cohort"  # on a grid of local worker nodes
    prepared = prepare(config)
    grid = LocalGrid(workers)
    executor = flower_executor(grid, prepared, workers)  # as the ServerApp builds it
    assert isinstance(executor, CohortExecutor)
    state = execute(prepared, executor, progress=False)
    assert state.error is None, state.error
    return (pd.read_csv(prepared.staging / "rounds.csv"), pd.read_csv(prepared.staging / "clients.csv"),
            grid, executor, pd.read_csv(prepared.staging / "workers.csv"))


def node_pool(grid: Grid, prepared, expected: int = 0, wait: float = 5.0) -> NodePool:  # noqa: ANN001
    """The pool of ``grid``'s nodes for ``prepared``, as :func:`fedsim.runs.server.flower_executor` builds it."""
    return NodePool(grid, str(prepared.staging.resolve()), lambda: run_files(prepared.staging),
                    lambda: dataset_digest(prepared.dataset), wait, prepared.config.partition.num_clients,
                    expected=expected)


def test_balance_assigns_by_samples_largest_first() -> None:
    assert balance([5, 1, 9, 3, 3], 2) == [[1, 2], [0, 3, 4]]  # loads 10 and 11
    assert balance([4, 4, 4], 5) == [[0], [1], [2], [], []]
    shards = balance(list(range(1, 41)), 3)
    loads = [sum(range(1, 41)[i] for i in shard) for shard in shards]
    assert sorted(i for shard in shards for i in shard) == list(range(40)) and max(loads) - min(loads) <= 1


def test_packing_sends_shared_records_once_and_round_trips() -> None:
    shared = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))}),
                         "config": ConfigRecord({"server-round": 3})})
    own = RecordDict({"arrays": shared["arrays"], "config": ConfigRecord({"server-round": 3, "x": 1})})
    tasks = [ClientTask(c, Message(content, dst_node_id=c, message_type=MessageType.TRAIN))
             for c, content in ((7, shared), (2, shared), (5, own))]
    packed = pack_cohort(tasks, num_clients=10)
    assert sorted(k for k in packed.keys() if k.startswith("r")) == ["r0", "r1", "r2"]  # arrays once, two configs
    cohort = Message(packed, dst_node_id=100, message_type="train.cohort")
    unpacked = unpack_cohort(cohort)
    assert [t.client_id for t in unpacked] == [7, 2, 5]
    assert all(t.message.metadata.message_type == MessageType.TRAIN for t in unpacked)
    assert unpacked[2].message.content["config"]["x"] == 1
    np.testing.assert_array_equal(unpacked[1].message.content["arrays"]["w"].numpy(), np.ones(4))

    from fedsim.core.protocol import ClientReply, failed_reply

    answers = [ClientReply(7, reply(unpacked[0].message, 7, {"num-examples": 3}, ArrayRecord())),
               failed_reply(unpacked[1], "broken"),
               ClientReply(5, reply(unpacked[2].message, 5, {"num-examples": 4}))]
    back = Message(pack_cohort_replies(answers, seconds=0.5), reply_to=cohort)
    replies = unpack_cohort_replies(back, tasks)
    assert [(r.client_id, r.ok) for r in replies] == [(7, True), (2, False), (5, True)]
    assert replies[1].error == "broken" and int(replies[2].metrics["num-examples"]) == 4


def test_results_are_identical_for_any_number_of_workers(small_config) -> None:
    overrides = {"train.rounds": 2, "train.fraction_train": 0.7, "evaluation.clients_per_eval": 4,
                 "faults.fail_clients": [3], "hooks": [{"name": "crucial", "committee": "peers", "k": 2, "theta": 1}]}
    reference = run(small_config(**overrides, **{"output.name": "reference"}), progress=False)
    expected_rounds = reference.rounds.drop(columns="wall_seconds")
    expected_clients = reference.clients.drop(columns="seconds")
    for workers in (1, 2, 4):
        rounds, clients, grid, executor, load = run_on_cohort(
            small_config(**overrides, **{"output.name": f"cohort-{workers}"}), workers)
        pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), expected_rounds)
        pd.testing.assert_frame_equal(clients.drop(columns="seconds"), expected_clients)
        per_phase = 2 * reference.summary["rounds"]  # one train and one evaluate phase per round
        cohorts = [m for m in grid.messages if m.metadata.message_type.endswith(".cohort")]
        joins = [m for m in grid.messages if m.metadata.message_type == MessageType.QUERY]
        assert len(cohorts) == per_phase * workers, "one message per worker and phase"
        assert len(joins) == workers and len(grid.messages) == len(cohorts) + len(joins), "each node joins once"
        assert len(executor.busy) == per_phase and all(len(b) == workers for b in executor.busy)
        assert all(np.isfinite(b).all() and (np.array(b) > 0).all() for b in executor.busy)
        # workers.csv: every sampled client once per phase, its samples counted, balanced within one client
        assert len(load) == per_phase * workers and set(load["phase"]) == {"train", "evaluate"}
        sampled = clients.groupby(["round", "phase"]).size()
        pd.testing.assert_series_equal(load.groupby(["round", "phase"])["clients"].sum(), sampled, check_names=False)
        assert (load.groupby(["round", "phase"])["failed"].sum().loc[(slice(None), "train")] <= 1).all()


@pytest.mark.slow  # keeps the fast set under a minute
def test_distillation_with_mixed_architectures_on_cohorts(small_config) -> None:
    overrides = {"strategy.name": "latent-distill", "model.representation_dim": 16, "train.rounds": 2,
                 "model.architectures": ["lenet5", "niid_cnn"], "latent_distill.transfer_size": 120,
                 "partition.min_partition_size": 5, "train.fraction_train": 0.6}
    reference = run(small_config(**overrides, **{"output.name": "reference"}), progress=False)
    rounds, _, _, _, _ = run_on_cohort(small_config(**overrides, **{"output.name": "cohort"}), 2)
    pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"))


def test_a_failed_worker_fails_its_clients_only(small_config) -> None:
    class OneDeadWorker(LocalGrid):
        def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
            replies = list(super().pull_messages(message_ids))
            return [r for r in replies if r.metadata.src_node_id != 100  # worker 100 joins, then never answers
                    or r.metadata.message_type == MessageType.QUERY]

    prepared = prepare(small_config(**{"train.rounds": 1, "evaluation.federated_every": 0,
                                       "train.min_success_fraction": 0.1}))
    sizes = np.diff(PartitionIndex.load(prepared.staging).train_offsets)
    state = execute(prepared, CohortExecutor(node_pool(OneDeadWorker(2), prepared), sizes, timeout=0.5),
            progress=False)
    assert state.error is None
    clients = pd.read_csv(prepared.staging / "clients.csv")
    failed = clients[clients["status"] == "failed"]
    assert 0 < len(failed) < 10 and failed["error"].str.contains("its worker did not answer").all()
    expected = sorted(np.array(range(10))[balance(list(sizes), 2)[0]].tolist())
    assert sorted(failed["client_id"]) == expected


@pytest.mark.ray
def test_cohort_executor_on_ray_matches_in_process(small_config) -> None:
    overrides = {"train.fraction_train": 0.6, "strategy.name": "fedprox", "strategy.kwargs.proximal_mu": 0.1}
    local = run(small_config(**overrides, **{"output.name": "local"}), progress=False)
    on_ray = run(small_config(**overrides, **{"output.name": "ray", "executor.kind": "cohort",
                                              "executor.workers": 2}), progress=False)
    pd.testing.assert_frame_equal(on_ray.rounds.drop(columns="wall_seconds"), local.rounds.drop(columns="wall_seconds"))
    pd.testing.assert_frame_equal(on_ray.clients.drop(columns="seconds"), local.clients.drop(columns="seconds"))


def test_clients_on_ray_workers_without_a_gpu_share_use_the_cpu(small_config, monkeypatch) -> None:
    import torch

    from fedsim.runs.plan import client_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a GPU share is refused without a GPU

    assert client_device(small_config(**{"executor.kind": "cohort"})) == "cpu"
    assert client_device(small_config(**{"executor.kind": "cohort", "runtime.num_gpus_per_client": 0.5})) == "auto"
    assert client_device(small_config(**{"executor.kind": "in-process"})) == "auto"  # the server's own GPU
    assert client_device(small_config(**{"executor.kind": "flower", "runtime.device": "cuda"})) == "cuda"


@pytest.mark.slow  # keeps the fast set under a minute
def test_client_side_dp_clipping_applies_per_client_in_a_cohort(small_config) -> None:
    overrides = {"train.rounds": 2, "strategy.name": "dp-fixed-client", "strategy.kwargs.noise_multiplier": 0.0,
                 "strategy.kwargs.clipping_norm": 0.05, "evaluation.federated_every": 0}
    unclipped_overrides = {k: v for k, v in overrides.items() if not k.startswith("strategy.")}
    reference = run(small_config(**overrides, **{"output.name": "reference"}), progress=False)
    rounds, _, grid, _, _ = run_on_cohort(small_config(**overrides, **{"output.name": "cohort"}), 2)
    pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"))
    unclipped = run(small_config(**unclipped_overrides, **{"output.name": "plain"}), progress=False)
    assert not np.allclose(reference.rounds["test_loss"].iloc[1:], unclipped.rounds["test_loss"].iloc[1:]), \
        "clipping changed the updates"



@pytest.mark.parametrize("strategy", ["fedavg", pytest.param("fedadam", marks=pytest.mark.slow)])
def test_streaming_workers_send_one_partial_mean_and_results_match(small_config, strategy: str) -> None:
    overrides = {"train.rounds": 3, "train.fraction_train": 0.8, "strategy.name": strategy,
                 "evaluation.federated_every": 0, "faults.fail_clients": [4]}
    if strategy == "fedadam":
        overrides["strategy.kwargs.eta"] = 0.01
    reference = run(small_config(**overrides, **{"output.name": "per-client"}), progress=False)
    streamed = small_config(**overrides, **{"output.name": "streamed", "executor.kind": "cohort",
                                            "executor.streaming": True})
    rounds, clients, grid, _, _ = run_on_cohort(streamed, 2)
    ref_rounds, ref_clients = reference.rounds, reference.clients
    # bytes are the federated ones: what every client uploaded, not what the workers sent
    assert rounds["bytes_up"].tolist() == ref_rounds["bytes_up"].tolist()
    assert rounds["clients_succeeded"].tolist()[1:] == ref_rounds["clients_succeeded"].tolist()[1:]
    # equal up to float summation order
    np.testing.assert_allclose(rounds["test_loss"], ref_rounds["test_loss"], rtol=1e-4)
    np.testing.assert_allclose(clients["loss"], ref_clients["loss"], rtol=1e-4)
    train_replies = [r for r in grid.replies if r.metadata.message_type == "train.cohort"]
    model_bytes = ref_rounds["bytes_up"].iloc[1] // ref_rounds["clients_succeeded"].iloc[1]
    moved = [sum(rec.count_bytes() for rec in r.content.array_records.values()) for r in train_replies]
    assert moved == [model_bytes] * len(train_replies), "one partial model per worker and round"


def test_streaming_is_refused_where_it_cannot_be_exact(small_config) -> None:
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match="strategy 'fedmedian' does not aggregate a weighted mean"):
        small_config(**{"executor.kind": "cohort", "executor.streaming": True, "strategy.name": "fedmedian"})
    with pytest.raises(ConfigError, match="hook\\(s\\) crucial use other clients' models"):
        small_config(**{"executor.kind": "cohort", "executor.streaming": True,
                        "hooks": [{"name": "crucial", "committee": "peers"}]})
    with pytest.raises(ConfigError, match="set executor.kind = 'cohort'"):
        small_config(**{"executor.streaming": True, "executor.kind": "in-process"})


def hung_client_config(small_config, **extra):  # noqa: ANN001, ANN003, ANN201
    return small_config(**{"train.rounds": 1, "evaluation.federated_every": 0, "executor.client_timeout": 1.0,
                           "hooks": [{"name": "user_hooks:SlowClient", "client": 3, "seconds": 120}], **extra})


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_hung_client_is_stopped_by_the_client_timeout(small_config) -> None:
    import time

    started = time.perf_counter()
    result = run(hung_client_config(small_config), progress=False)
    assert time.perf_counter() - started < 60, "the run did not wait for the stuck client"
    failed = result.clients[result.clients["status"] == "failed"]
    assert failed["client_id"].tolist() == [3]
    assert "exceeded executor.client_timeout = 1 s" in failed["error"].iloc[0]
    assert result.rounds["clients_succeeded"].iloc[-1] == 9


@pytest.mark.ray
def test_a_hung_client_in_a_ray_cohort_worker_fails_alone(small_config) -> None:
    result = run(hung_client_config(small_config, **{"executor.kind": "cohort", "executor.workers": 2,
                                                     "output.name": "ray"}), progress=False)
    failed = result.clients[result.clients["status"] == "failed"]
    assert failed["client_id"].tolist() == [3] and failed["error"].str.contains("client_timeout").all()
