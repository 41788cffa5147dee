"""The round loop without Ray: sampling, failures, schedules, extensions, rows and bytes (in-process executor)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.runs.server import execute
from fedsim.clients.app import client_app
from fedsim.clients.hooks import PeerCommittee
from fedsim.runs.executors import Executor, InProcessExecutor
from fedsim.runs.experiment import run
from fedsim.core.extension import PHASE_EVALUATE, PHASE_TRAIN, ExtensionChain, RoundExtension, RoundRecord
from fedsim.core.loop import ClientGrid
from fedsim.core.screening import TooFewClientsError
from fedsim.models import build_model
from fedsim.runs.plan import initial_model
from fedsim.runs.prepare import prepare
from fedsim.core.protocol import ClientReply, ClientTask, array_bytes, read_peers, reply
from fedsim.core.sampling import EVALUATE, TRAIN, sample_clients


class Recorder(RoundExtension):
    """Records every stage call; gives the lowest sampled client of each round a time limit it cannot meet."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.sent: list[list[int]] = []

    def on_run_start(self, run, arrays):  # noqa: ANN001, ANN201
        self.calls.append(("start", run.rounds, run.num_clients))
        return {}

    def on_configure(self, server_round, phase, tasks):  # noqa: ANN001, ANN201
        self.calls.append(("configure", server_round, phase))
        if phase == PHASE_TRAIN:
            self.sent.append(sorted(t.client_id for t in tasks))
            lowest = min(tasks, key=lambda t: t.client_id).message
            content = RecordDict(dict(lowest.content.items()))  # its own copy: the tasks share one content
            content["config"] = ConfigRecord({**dict(lowest.content["config"]), "fedsim.client-timeout": 1e-6})
            lowest.content = content

    def on_train_replies(self, record, replies):  # noqa: ANN001, ANN201
        self.calls.append(("train", record.server_round, sorted(r.client_id for r in replies)))

    def on_evaluate_replies(self, record, replies):  # noqa: ANN001, ANN201
        self.calls.append(("evaluate", record.server_round, len(replies)))
        for row in record.rows_of(PHASE_EVALUATE):
            row["error"] = "marked by the extension"

    def on_round_end(self, record, arrays):  # noqa: ANN001, ANN201
        self.calls.append(("end", record.server_round, "test_accuracy" in record.row))

    def on_run_end(self, arrays):  # noqa: ANN001, ANN201
        self.calls.append(("run_end",))


def test_sampling_rows_bytes_and_schedules(small_config) -> None:
    config = small_config(**{"train.rounds": 4, "train.fraction_train": 0.5, "evaluation.centralized_every": 2,
                             "evaluation.federated_every": 3, "evaluation.clients_per_eval": 3})
    result = run(config, progress=False)
    rounds, clients = result.rounds.set_index("round"), result.clients
    train = clients[clients["phase"] == "train"]
    for r in range(1, 5):
        assert sorted(train.loc[train["round"] == r, "client_id"]) == sample_clients(0, r, TRAIN, 10, 5)
    evaluated = clients[clients["phase"] == "evaluate"]
    assert sorted(set(evaluated["round"])) == [3, 4]
    assert sorted(evaluated.loc[evaluated["round"] == 3, "client_id"]) == sample_clients(0, 3, EVALUATE, 10, 3)
    assert rounds["test_accuracy"].notna().tolist() == [True, False, True, False, True]  # rounds 0, 2, 4
    assert rounds["fed_eval_accuracy"].notna().tolist() == [False, False, False, True, True]

    model_bytes = array_bytes([Message(RecordDict({"arrays": ArrayRecord(build_model("lenet5", 10).state_dict())}),
                                       dst_node_id=0, message_type=MessageType.TRAIN)])
    assert (rounds.loc[[1, 2, 4], "bytes_down"] // model_bytes).tolist() == [5, 5, 8]  # 5 train (+ 3 eval)
    assert (rounds.loc[1:, "bytes_up"] == 5 * model_bytes).all()
    weighted = (train["loss"] * train["num_examples"]).groupby(train["round"]).sum() / \
        train["num_examples"].groupby(train["round"]).sum()
    np.testing.assert_allclose(rounds.loc[1:, "train_loss"], weighted.to_numpy())


def test_failures_are_counted_and_too_many_stop_the_run(small_config, tmp_path) -> None:  # noqa: ANN001
    ok = run(small_config(**{"train.rounds": 2, "faults.fail_clients": [2, 5], "output.name": "flaky",
                             "evaluation.federated_every": 0}), progress=False)
    failed = ok.clients[ok.clients["status"] == "failed"]
    assert sorted(set(failed["client_id"])) == [2, 5] and len(failed) == 4
    assert failed["error"].str.contains("client 2 failed on purpose|client 5 failed on purpose").all()
    assert ok.rounds.loc[1:, "clients_succeeded"].tolist() == [8, 8]
    assert ok.rounds.loc[1:, "clients_failed"].tolist() == [2, 2]

    config = small_config(**{"train.rounds": 2, "faults.fail_clients": [0, 1, 2, 3, 4, 5],
                             "train.min_success_fraction": 0.5, "output.name": "broken"})
    with pytest.raises(TooFewClientsError, match=r"round 1: only 4 of 10 sampled clients succeeded .* needs 5\)"):
        run(config, progress=False)
    kept = pd.read_csv(tmp_path / "runs" / "broken.failed" / "clients.csv")
    assert (kept["status"] == "failed").sum() == 6, "the failing round's client rows are kept"


def test_extension_stages_order_and_effects(small_config) -> None:
    recorder = Recorder()
    config = small_config(**{"train.rounds": 2, "train.clients_per_round": 4, "evaluation.federated_every": 2,
                             "evaluation.clients_per_eval": 2})
    result = run(config, progress=False, extensions=[recorder])
    assert recorder.calls == [
        ("start", 2, 10),
        ("configure", 1, PHASE_TRAIN), ("train", 1, recorder.sent[0][1:]), ("end", 1, True),
        ("configure", 2, PHASE_TRAIN), ("train", 2, recorder.sent[1][1:]),
        ("configure", 2, PHASE_EVALUATE), ("evaluate", 2, 2), ("end", 2, True),  # after the central evaluation
        ("run_end",),
    ]
    # the config the extension added reached the clients: the lowest sampled client ran out of time each round
    failed = result.clients[result.clients["status"] == "failed"]
    assert failed["client_id"].tolist() == [s[0] for s in recorder.sent]
    assert failed["error"].str.contains("exceeded executor.client_timeout").all()
    evaluated = result.clients[result.clients["phase"] == "evaluate"]
    assert (evaluated["error"] == "marked by the extension").all()


class Reversed(Executor):
    """Runs the tasks in reverse order (results must not depend on the order clients run in)."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    def execute(self, tasks: list[ClientTask]):  # noqa: ANN201
        return list(reversed(self.inner.execute(list(reversed(tasks)))))


@pytest.mark.slow  # keeps the fast set under a minute
def test_results_do_not_depend_on_execution_order(small_config) -> None:
    config = small_config(**{"train.fraction_train": 0.6, "output.name": "ordered",
                             "hooks": [{"name": "crucial", "committee": "peers", "k": 3, "theta": 2}]})
    reference = run(config, progress=False)
    prepared = prepare(small_config(**{"train.fraction_train": 0.6, "output.name": "reversed",
                                       "hooks": [{"name": "crucial", "committee": "peers", "k": 3, "theta": 2}]}))
    state = execute(prepared, Reversed(InProcessExecutor(client_app, 10)), progress=False)
    assert state.error is None
    rows = pd.read_csv(prepared.staging / "rounds.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(rows, reference.rounds.drop(columns="wall_seconds"))


def test_in_process_executor_turns_exceptions_into_error_replies(small_config) -> None:
    prepared = prepare(small_config(**{"faults.fail_clients": [1]}))
    executor = InProcessExecutor(client_app, 10)
    arrays = ArrayRecord(initial_model(prepared.config, prepared.dataset).state_dict())
    # client 1 fails on purpose because the run spec says so (faults.fail_clients), not the message
    config = ConfigRecord({"fedsim.run-dir": str(prepared.staging.resolve()), "server-round": 1})
    tasks = [ClientTask(c, Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=c,
                                   message_type=MessageType.TRAIN)) for c in (0, 1)]
    replies = executor.execute(tasks)
    assert [r.client_id for r in replies] == [0, 1]
    assert replies[0].ok and replies[0].metrics["num-examples"] > 0
    assert not replies[1].ok and "RuntimeError: client 1 failed on purpose" in replies[1].error


def test_client_grid_lists_clients_and_refuses_to_send() -> None:
    grid = ClientGrid([4, 7])
    assert list(grid.get_node_ids()) == [4, 7]
    with pytest.raises(RuntimeError, match="executor"):
        grid.send_and_receive([])


def test_peer_committee_state_round_trips_and_attaches_peers() -> None:
    committee = PeerCommittee(size=2)
    arrays = ArrayRecord({"w": Array(np.arange(3, dtype=np.float32))})

    task = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({})}), dst_node_id=0,
                   message_type=MessageType.TRAIN)
    replies = [ClientReply(c, reply(task, c, {"num-examples": 1}, ArrayRecord(
        {"w": Array(np.full(3, c, dtype=np.float32))}))) for c in (5, 2, 9)]
    committee.on_train_replies(RoundRecord(1, {"round": 1}), replies)
    restored = PeerCommittee(size=2)
    restored.load_state(committee.state())
    fresh = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({})}), dst_node_id=3,
                    message_type=MessageType.TRAIN)
    restored.on_configure(2, PHASE_TRAIN, [ClientTask(3, fresh)])
    peers = read_peers(fresh)
    assert [cid for cid, _ in peers] == [2, 5], "the first two successful clients by id"
    assert [float(a["w"].numpy()[0]) for _, a in peers] == [2.0, 5.0]

    chain = ExtensionChain([committee])
    with pytest.raises(ValueError, match="does not match"):
        chain.load_state({"0:Other": {}})
