"""The process owner (fedsim.clients.process): one run at a time, outcomes handed over and never left behind.

A process that hosts clients keeps its open run, that run's lockstep trainers, its cohort runners and
the node it hosts in one :class:`WorkerProcess`; the vectorized engine's per-client outcomes are the
runner call's, handed to each client's handler call. These tests use a fresh owner each (the
module's one instance is swapped for the test), so they see only what they did themselves.
"""

from __future__ import annotations

import ast
import gc
import weakref
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

import fedsim.clients.lockstep.planner as planner
import fedsim.clients.process as process_module
from fedsim.clients.app import client_app
from fedsim.clients.lockstep.columns import EngineColumns
from fedsim.clients.lockstep.planner import LockstepOutcome, train_in_lockstep
from fedsim.clients.process import WorkerProcess
from fedsim.clients.runner import ClientRunner, lockstep_outcome
from fedsim.clients.worker import WorkerRun
from fedsim.core.extension import RoundRecord
from fedsim.core.protocol import (
    COMPILE_SECONDS,
    ENGINE,
    ENGINE_LABELS,
    RUN_DIR,
    SERVER_ROUND,
    TRAIN_LOSS,
    ClientReply,
    ClientTask,
    TrainingEngine,
    reply,
)
from fedsim.runs.prepare import prepare

CLIENTS = [0, 2, 3, 5, 7]


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> WorkerProcess:
    """A fresh owner as this process's one owner, for the test's duration."""
    fresh = WorkerProcess()
    monkeypatch.setattr(process_module, "_THIS_PROCESS", fresh)
    return fresh


def vectorized_run(small_config, name: str, **overrides: object):  # noqa: ANN001, ANN201 - a RunPlan
    return prepare(small_config(**{"engine.kind": "vectorized", "output.name": name, **overrides}))


def train_tasks(prepared, clients: list[int] = CLIENTS, **config: object) -> list[ClientTask]:  # noqa: ANN001
    """Round-1 training tasks of ``prepared``'s run, every client receiving the same ArrayRecord (one group)."""
    arrays = ArrayRecord(prepared.initial_model().state_dict())
    shared = {RUN_DIR: str(prepared.staging.resolve()), SERVER_ROUND: 1, **config}
    return [ClientTask(c, Message(RecordDict({"config": ConfigRecord(dict(shared)), "arrays": arrays}),
                                  dst_node_id=c, message_type=MessageType.TRAIN)) for c in clients]


def live_outcomes() -> list[LockstepOutcome]:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is LockstepOutcome]


def weights(replies: list[ClientReply]) -> list[dict[str, bytes]]:
    return [{k: v.numpy().tobytes() for k, v in r.arrays.items()} for r in replies]


def test_a_process_serves_one_run_at_a_time_and_lets_the_previous_one_go(small_config, owner) -> None:  # noqa: ANN001
    first, second = vectorized_run(small_config, "first"), vectorized_run(small_config, "second")
    first_dir, second_dir = str(first.staging.resolve()), str(second.staging.resolve())
    run = owner.run(first_dir)
    assert owner.run(first_dir) is run, "a run is opened once, then reused"
    trainer = owner.lockstep_trainer(run, "lenet5", torch.float32, lambda: torch.nn.Linear(1, 1))
    assert owner.lockstep_trainer(run, "lenet5", torch.float32, pytest.fail) is trainer, "built once per run"
    released = [weakref.ref(run), weakref.ref(run.model()), weakref.ref(trainer)]
    del run, trainer

    opened = owner.run(second_dir)
    gc.collect()
    assert [ref() for ref in released] == [None, None, None], "the previous run's models and trainers are freed"
    assert owner.open_run.server_run_dir == second_dir and owner.open_run.run is opened
    assert owner.open_run.trainers == {}, "a new run starts without the previous run's trainers"
    with pytest.raises(RuntimeError, match="no longer open"):
        owner.lockstep_trainer(WorkerRun.open(first_dir), "lenet5", torch.float32, pytest.fail)


def test_outcomes_are_handed_to_their_clients_and_nothing_is_left_behind(small_config, owner) -> None:  # noqa: ANN001
    prepared = vectorized_run(small_config, "handed")
    outcomes = train_in_lockstep(train_tasks(prepared))
    assert len(outcomes) == len(CLIENTS), "one outcome per task, in task order"
    assert all(o.engine is TrainingEngine.VECTORIZED and o.state is not None for o in outcomes)
    del outcomes

    runner = ClientRunner(client_app, 10, 1, direct=True)
    direct = runner.run(train_tasks(prepared))  # the fast path: train_update(msg, client, outcome)
    through_app = runner.run(train_tasks(prepared, **{KEY_CLIPPING_NORM: 100.0}))  # the ClientApp, its DP mod
    for replies in (direct, through_app):
        assert [r.client_id for r in replies] == CLIENTS and all(r.ok for r in replies)
        assert all(int(r.metrics[ENGINE]) == TrainingEngine.VECTORIZED for r in replies), "each got its outcome"
    assert [float(r.metrics[TRAIN_LOSS]) for r in direct] == [float(r.metrics[TRAIN_LOSS]) for r in through_app]

    assert live_outcomes() == [], "no outcome outlives the runner call that trained it"
    assert all(runner.context(c).lockstep is None for c in CLIENTS), "a context holds an outcome for one call only"
    assert set(owner.open_run.trainers) == {("lenet5", torch.float32)}, "the owner keeps the run's trainer only"
    assert lockstep_outcome(Context(0, 0, {}, RecordDict(), {})) is None, "Flower's own contexts bring none"


def test_two_runs_in_one_process_do_not_see_each_others_trainers_or_outcomes(small_config, monkeypatch) -> None:  # noqa: ANN001
    first, second = vectorized_run(small_config, "one", seed=1), vectorized_run(small_config, "two", seed=2)

    alone = WorkerProcess()
    monkeypatch.setattr(process_module, "_THIS_PROCESS", alone)
    expected = ClientRunner(client_app, 10, 1, direct=True).run(train_tasks(second))

    shared = WorkerProcess()
    monkeypatch.setattr(process_module, "_THIS_PROCESS", shared)
    runner = ClientRunner(client_app, 10, 1, direct=True)
    runner.run(train_tasks(first))  # the same clients and round, another run
    first_trainer = weakref.ref(shared.open_run.trainers[("lenet5", torch.float32)])
    after_first = runner.run(train_tasks(second))

    gc.collect()
    assert first_trainer() is None, "the first run's trainer went with it"
    assert shared.open_run.server_run_dir == str(second.staging.resolve())
    assert [r.metrics[TRAIN_LOSS] for r in after_first] == [r.metrics[TRAIN_LOSS] for r in expected]
    assert weights(after_first) == weights(expected), "a run trains the same bits whatever ran before it"
    assert all(int(r.metrics[ENGINE]) == TrainingEngine.VECTORIZED for r in after_first)


def test_a_node_with_its_own_data_is_hosted_for_one_message_only(small_config, owner, tmp_path: Path) -> None:  # noqa: ANN001
    prepared = vectorized_run(small_config, "hosted")
    server_dir = str(prepared.staging.resolve())
    run = owner.run(server_dir)
    node_config = {"partition-id": 0, "num-partitions": 2, "data-dir": str(tmp_path / "node")}
    with owner.hosting_node(node_config) as node:
        assert owner.hosting is node and node.own_data
        with pytest.raises(RuntimeError, match="has no copy of the run"):
            owner.run(server_dir + "-elsewhere")  # another run: this node would read its own copy, which is missing
        assert owner.run(server_dir) is run, "a failed open keeps the open run"
    assert not owner.hosting.own_data, "after the message, back to reading the server's run directory"


def test_cohort_runners_belong_to_the_process_per_population_and_threads(owner) -> None:  # noqa: ANN001
    built: list[ClientRunner] = []

    def build() -> ClientRunner:
        built.append(ClientRunner(client_app, 10, 1, direct=True))
        return built[-1]

    assert owner.client_runner(10, 1, build) is owner.client_runner(10, 1, build) is built[0]
    assert owner.client_runner(10, 2, build) is built[1] and len(built) == 2


def test_engine_codes_are_defined_once_and_every_code_has_a_label() -> None:
    assert set(ENGINE_LABELS) == set(TrainingEngine)
    assert ENGINE_LABELS[TrainingEngine.SEQUENTIAL] == "sequential"
    assert ENGINE_LABELS[TrainingEngine.VECTORIZED] == "vectorized"
    assert not [name for name in vars(planner) if name == "VECTORIZED" or name.startswith("FALLBACK")]


def test_the_engine_columns_come_from_a_round_extension_with_the_loops_former_values() -> None:
    def answer(client_id: int, metrics: dict) -> ClientReply:
        task = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=client_id, message_type=MessageType.TRAIN)
        return ClientReply(client_id, reply(task, client_id, {"num-examples": 1, **metrics}))

    empty = RoundRecord(1, {"round": 1})
    EngineColumns().on_train_replies(empty, [])
    assert empty.row == {"round": 1, "clients_vectorized": 0, "compile_seconds": 0}
    assert type(empty.row["compile_seconds"]) is int, "an empty round writes 0, as the loop did"

    record = RoundRecord(2, {"round": 2})
    EngineColumns().on_train_replies(record, [
        answer(0, {ENGINE: int(TrainingEngine.VECTORIZED), COMPILE_SECONDS: 0.25}),
        answer(1, {ENGINE: int(TrainingEngine.VECTORIZED)}),
        answer(2, {ENGINE: int(TrainingEngine.FALLBACK_ALONE)}),
        answer(3, {}),  # another ClientApp's client: no engine metric
    ])
    assert record.row["clients_vectorized"] == 2 and record.row["compile_seconds"] == 0.25


def test_no_client_module_hands_results_over_through_module_level_containers() -> None:
    """Module-level ``{}``, ``[]``, ``set()``, ``dict()`` or thread-locals in ``clients/`` are process-wide
    hand-overs; the process owner is the one place a process keeps anything between messages."""
    root = Path(__file__).resolve().parents[1] / "clients"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            empty_literal = isinstance(value, (ast.Dict, ast.List, ast.Set)) and not getattr(
                value, "keys", getattr(value, "elts", None))
            container_call = isinstance(value, ast.Call) and ast.unparse(value.func) in (
                "dict", "list", "set", "defaultdict", "threading.local", "local")
            if empty_literal or container_call:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
