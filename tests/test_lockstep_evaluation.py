"""Federated evaluation under the vectorized engine: a cohort scored in batched forwards, like one by one.

The same evaluate tasks (one ``ArrayRecord`` shared by every task, as strategies send it) go
through a :class:`ClientRunner` of a sequential run and of a vectorized run of the same data: every
client's reply is the same (loss to float rounding, accuracy and examples exactly), the vectorized
worker needs one forward for the whole cohort when ``evaluation.batch_size`` holds it (else one per
``evaluation.batch_size`` samples, across client boundaries), and a client that fails, or a group
that raises or runs out of time, fails nobody else.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

import fedsim.clients.lockstep.evaluation as evaluation
import fedsim.clients.process as process_module
from fedsim.clients.app import client_app
from fedsim.clients.client import LocalClient
from fedsim.clients.lockstep.evaluation import evaluate_in_lockstep
from fedsim.clients.process import WorkerProcess
from fedsim.clients.runner import ClientRunner
from fedsim.core.extension import PHASE_EVALUATE
from fedsim.core.protocol import (
    CLIENT_TIMEOUT,
    DISTILL,
    EVAL_ACCURACY,
    EVAL_LOSS,
    NUM_EXAMPLES,
    RUN_DIR,
    SERVER_ROUND,
    ClientReply,
    ClientTask,
    TrainingEngine,
)
from fedsim.core.rows import client_rows
from fedsim.runs.prepare import prepare

CLIENTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
SMALL_BATCH = 8  # evaluation.batch_size smaller than every client's held-out split
LOSS_RTOL = 1e-5  # float32 logits of other batch compositions, per-client sums in another order


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> WorkerProcess:
    """A fresh owner as this process's one owner, for the test's duration."""
    fresh = WorkerProcess()
    monkeypatch.setattr(process_module, "_THIS_PROCESS", fresh)
    return fresh


def prepared(small_config, engine: str, model: str = "lenet5", **overrides: object):  # noqa: ANN001, ANN201
    """A prepared run (staging folder) with about 25 held-out samples per client (250 in all)."""
    return prepare(small_config(**{"model.name": model, "data.synthetic_train": 1000, "partition.val_fraction": 0.25,
                                   "engine.kind": engine,
                                   "output.name": f"{engine}-{model}", **overrides}))


def global_weights(plan, seed: int = 0) -> ArrayRecord:  # noqa: ANN001
    """The run's initial weights, BatchNorm running statistics drawn away from (0, 1) so they matter."""
    state = plan.initial_model().state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if name.endswith("running_mean"):
            tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
        elif name.endswith("running_var"):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
    return ArrayRecord(state)


def evaluate_tasks(plan, arrays: ArrayRecord, clients: list[int] = CLIENTS, **config: object) -> list[ClientTask]:  # noqa: ANN001
    """Evaluate tasks of ``plan``'s run that share one content (one ArrayRecord), as a strategy sends them."""
    content = RecordDict({"config": ConfigRecord({RUN_DIR: str(plan.staging.resolve()), SERVER_ROUND: 1, **config}),
                          "arrays": arrays})
    return [ClientTask(c, Message(content, dst_node_id=c, message_type=MessageType.EVALUATE)) for c in clients]


def scores(replies: list[ClientReply]) -> list[tuple[int, int, float, float]]:
    return [(r.client_id, int(r.metrics[NUM_EXAMPLES]), float(r.metrics[EVAL_LOSS]), float(r.metrics[EVAL_ACCURACY]))
            for r in replies]


def assert_same_scores(batched: list[ClientReply], one_by_one: list[ClientReply]) -> None:
    assert all(r.ok for r in batched + one_by_one)
    for got, expected in zip(scores(batched), scores(one_by_one)):
        assert got[:2] == expected[:2], "the same client, the same examples"
        assert got[2] == pytest.approx(expected[2], rel=LOSS_RTOL)
        assert got[3] == expected[3], "accuracy exactly"
    assert [set(r.metrics.keys()) for r in batched] == [set(r.metrics.keys()) for r in one_by_one], "the same reply"


def forward_sizes(owner: WorkerProcess, plan) -> list[int]:  # noqa: ANN001
    """Samples of every forward of ``plan``'s run's model from now on (the list grows as it runs)."""
    sizes: list[int] = []
    owner.run(str(plan.staging.resolve())).model().register_forward_pre_hook(
        lambda module, args: sizes.append(int(args[0].shape[0])))
    return sizes


def both_engines(small_config, owner, model: str = "lenet5", **overrides):  # noqa: ANN001, ANN201
    """The same evaluate tasks one by one (sequential run) and batched (vectorized run): forward sizes and replies."""
    sequential = prepared(small_config, "sequential", model, **overrides)
    vectorized = prepared(small_config, "vectorized", model, **overrides)
    arrays = global_weights(sequential)
    runner = ClientRunner(client_app, 10, 1, direct=True)
    sequential_sizes = forward_sizes(owner, sequential)
    one_by_one = runner.run(evaluate_tasks(sequential, arrays))
    vectorized_sizes = forward_sizes(owner, vectorized)
    batched = runner.run(evaluate_tasks(vectorized, arrays))
    return sequential_sizes, one_by_one, vectorized_sizes, batched


@pytest.mark.parametrize("model", ["lenet5", "resnet8"])  # resnet8: BatchNorm in eval mode, with running statistics
def test_batched_scores_equal_one_by_one_and_a_cohort_is_one_forward(small_config, owner, model: str) -> None:  # noqa: ANN001
    sequential_sizes, one_by_one, vectorized_sizes, batched = both_engines(small_config, owner, model)

    assert_same_scores(batched, one_by_one)
    examples = [n for _, n, _, _ in scores(one_by_one)]
    assert sequential_sizes == examples, "one by one: a forward per client"
    assert vectorized_sizes == [sum(examples)], "batched: one forward for the cohort (evaluation.batch_size = 512)"


def test_forwards_of_evaluation_batch_size_cut_across_clients_and_give_the_same_scores(small_config, owner) -> None:  # noqa: ANN001
    sequential_sizes, one_by_one, sizes, batched = both_engines(small_config, owner,
                                                                **{"evaluation.batch_size": SMALL_BATCH})

    assert_same_scores(batched, one_by_one)
    examples = [n for _, n, _, _ in scores(one_by_one)]
    assert min(examples) > SMALL_BATCH and len(sequential_sizes) == sum(math.ceil(n / SMALL_BATCH) for n in examples)
    assert len(sizes) == math.ceil(sum(examples) / SMALL_BATCH), "ceil(total / batch) forwards, not per client"
    assert set(sizes[:-1]) == {SMALL_BATCH} and sum(sizes) == sum(examples)


def test_outcomes_go_to_plain_evaluate_tasks_of_shared_weights_only(small_config, owner) -> None:  # noqa: ANN001
    vectorized = prepared(small_config, "vectorized")
    arrays = global_weights(vectorized)
    outcomes = evaluate_in_lockstep(evaluate_tasks(vectorized, arrays))
    assert all(o.engine is TrainingEngine.VECTORIZED and o.evaluation is not None for o in outcomes)

    mixed = (evaluate_tasks(vectorized, arrays, [0, 1, 2])  # a group of three
             + evaluate_tasks(vectorized, global_weights(vectorized, seed=1), [3])  # other weights, alone
             + evaluate_tasks(vectorized, arrays, [4], **{DISTILL: True}))  # a client's own model
    assert [o is not None for o in evaluate_in_lockstep(mixed)] == [True, True, True, False, False]

    sequential = prepared(small_config, "sequential")
    assert evaluate_in_lockstep(evaluate_tasks(sequential, global_weights(sequential))) == [None] * len(CLIENTS)


def test_a_run_that_cannot_be_opened_fails_each_client_as_before(small_config, owner, tmp_path) -> None:  # noqa: ANN001
    vectorized = prepared(small_config, "vectorized")
    tasks = evaluate_tasks(vectorized, global_weights(vectorized), [0, 1],
                           **{RUN_DIR: str(tmp_path / "no-such-run")})
    assert evaluate_in_lockstep(tasks) == [None, None]
    replies = ClientRunner(client_app, 10, 1, direct=True).run(tasks)
    assert [r.ok for r in replies] == [False, False] and replies[0].error.startswith("FileNotFoundError")


def test_a_client_failing_on_evaluate_fails_alone_with_the_sequential_error(small_config, owner) -> None:  # noqa: ANN001
    failing = {"faults.fail_clients": [3]}
    sequential, vectorized = prepared(small_config, "sequential", **failing), prepared(small_config, "vectorized", **failing)
    arrays = global_weights(sequential)
    runner = ClientRunner(client_app, 10, 1, direct=True)
    one_by_one = runner.run(evaluate_tasks(sequential, arrays))
    sizes = forward_sizes(owner, vectorized)
    batched = runner.run(evaluate_tasks(vectorized, arrays))

    assert [r.client_id for r in batched if not r.ok] == [3]
    assert batched[3].error == one_by_one[3].error and "failed on purpose" in batched[3].error
    others = [k for k in range(len(CLIENTS)) if k != 3]
    assert_same_scores([batched[k] for k in others], [one_by_one[k] for k in others])
    assert sizes == [sum(int(batched[k].metrics[NUM_EXAMPLES]) for k in others)], "the others in one forward"


def test_a_client_whose_data_cannot_be_read_fails_alone(small_config, owner, monkeypatch) -> None:  # noqa: ANN001
    vectorized = prepared(small_config, "vectorized")
    held_out = LocalClient.held_out

    def unreadable(self: LocalClient) -> np.ndarray:
        if self.client_id == 5:
            raise OSError("held-out split unreadable")
        return held_out(self)

    monkeypatch.setattr(LocalClient, "held_out", unreadable)
    sizes = forward_sizes(owner, vectorized)
    replies = ClientRunner(client_app, 10, 1, direct=True).run(evaluate_tasks(vectorized, global_weights(vectorized)))
    assert [r.client_id for r in replies if not r.ok] == [5]
    assert replies[5].error == "OSError: held-out split unreadable"
    assert len(sizes) == 1, "the other nine in one forward"


@pytest.mark.parametrize("fault", ["raises", "exceeds its time limit"])
def test_a_group_that_raises_or_runs_out_of_time_is_evaluated_one_by_one(small_config, owner, monkeypatch,  # noqa: ANN001
                                                                         fault: str) -> None:
    sequential, vectorized = prepared(small_config, "sequential"), prepared(small_config, "vectorized")
    arrays = global_weights(sequential)
    runner = ClientRunner(client_app, 10, 1, direct=True)
    limit = {CLIENT_TIMEOUT: 0.03}  # the group: 10 x 0.03 s
    one_by_one = runner.run(evaluate_tasks(sequential, arrays, **limit))

    def broken(*args: object) -> None:
        if fault == "raises":
            raise RuntimeError("batched forward failed")
        time.sleep(5)

    monkeypatch.setattr(evaluation, "evaluate_together", broken)
    assert evaluate_in_lockstep(evaluate_tasks(vectorized, arrays, **limit)) == [None] * len(CLIENTS)
    started = time.perf_counter()
    batched = runner.run(evaluate_tasks(vectorized, arrays, **limit))
    assert time.perf_counter() - started < 3, "the group was interrupted at its limit"
    assert_same_scores(batched, one_by_one)


def test_clients_csv_evaluation_rows_keep_their_columns(small_config, owner) -> None:  # noqa: ANN001
    """The rows the loop writes from the replies (whole runs: ``test_vectorized.py`` compares both engines' tables)."""
    failing = {"faults.fail_clients": [3]}
    sequential, vectorized = prepared(small_config, "sequential", **failing), prepared(small_config, "vectorized", **failing)
    arrays = global_weights(sequential)
    runner = ClientRunner(client_app, 10, 1, direct=True)
    rows = [pd.DataFrame(client_rows(1, PHASE_EVALUATE, runner.run(evaluate_tasks(plan, arrays))))
            for plan in (sequential, vectorized)]
    assert list(rows[1].columns) == list(rows[0].columns)
    same = ["round", "phase", "client_id", "status", "num_examples", "accuracy", "seconds", "engine", "error"]
    pd.testing.assert_frame_equal(rows[1][same], rows[0][same])
    np.testing.assert_allclose(rows[1]["loss"], rows[0]["loss"], rtol=LOSS_RTOL)
    assert set(rows[1]["engine"].dropna()) == {""}, "evaluation rows name no training engine, as before"
