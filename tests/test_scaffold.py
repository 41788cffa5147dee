"""SCAFFOLD (``scaffold``): control variates, option II, the corrected step, bytes, engines and resume.

The math is pinned on a one-parameter model whose gradients are known (``loss = (w - t)^2 / 2``,
so ``g = w - t``); runs on the small synthetic config check what a run adds: FedAvg's result in
round 1, the client-state store, both engines, the byte counts and the clock, exact resume.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from torch import nn

from fedsim.clients import training
from fedsim.clients.lockstep.engine import LockstepClient, LockstepTrainer
from fedsim.clients.runner import ensure_task_identity, stack_updates
from fedsim.clients.scaffold import NAMESPACE, ClientControl
from fedsim.clients.state import ClientStateStore
from fedsim.config import ConfigError
from fedsim.core.loop import ClientGrid, tasks_of
from fedsim.core.protocol import (
    ARRAYS,
    CONTROL_DELTA,
    NUM_EXAMPLES,
    ClientReply,
    pack_cohort_replies,
    reply,
    reply_content,
    unpack_cohort_replies,
)
from fedsim.core.recipe import SGDRecipe
from fedsim.methods.scaffold import ScaffoldMethod
from fedsim.models import build_model
from fedsim.ops.interrupt import RunInterrupted
from fedsim.runs.experiment import resume, run
from fedsim.strategies import StrategyError, build_strategy
from fedsim.strategies.scaffold import Scaffold, ScaffoldError, control_record_bytes
from interrupting import StopAfter, same_results

LR = 0.1
ONE_STEP = SGDRecipe(epochs=1, batch_size=64, lr=LR, momentum=0.0)


# -- the math on a one-parameter model -------------------------------------------------------

class Scalar(nn.Module):
    """One weight w; the objective below makes its gradient w - t on a batch of targets t."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))


def _objective(target: float):  # noqa: ANN202 - training.Objective
    def objective(model, xb, yb, idx):  # noqa: ANN001, ANN202
        loss = 0.5 * ((model.w - target) ** 2).sum()
        return loss, torch.zeros(len(idx), 2)
    return objective


def _fake_run(tmp_path: Path) -> SimpleNamespace:
    """What ClientControl reads of a worker's run: its device and its client-state store."""
    store = ClientStateStore(tmp_path, NAMESPACE)
    return SimpleNamespace(device=torch.device("cpu"), state_store=lambda namespace: store, store=store)


def _client_round(run: SimpleNamespace, task: Message, client_id: int, target: float, n: int) -> Message:
    """One client's SCAFFOLD round on the scalar model: corrected step, option II, reply."""
    control = ClientControl.of_task(run, task, client_id)
    model = Scalar(float(task.content[ARRAYS]["w"].numpy()[0]))
    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    stats = training.train(model, x, y, ONE_STEP, training.seeded_generator(0, client_id), _objective(target),
                           offset=control.offset)
    delta = control.finish(run, task, dict(model.state_dict()), stats.steps, LR)
    answer = reply(task, client_id, {NUM_EXAMPLES: n}, ArrayRecord({"w": Array(model.w.detach().numpy().copy())}))
    answer.content[CONTROL_DELTA] = ArrayRecord({name: Array(t.numpy().copy()) for name, t in delta.items()})
    return answer


def _server(population: int, rate: float = 1.0, c: float = 0.0) -> Scaffold:
    strategy = build_strategy("scaffold", {"server_learning_rate": rate})
    strategy.prepare({"w": torch.zeros(1, dtype=torch.float64)}, population)
    strategy.control = ArrayRecord({"w": Array(np.array([c]))})
    return strategy


def _round(strategy: Scaffold, run: SimpleNamespace, w: float, server_round: int) -> tuple[float, list[Message]]:
    ensure_task_identity()
    tasks = tasks_of(strategy.configure_train(server_round, ArrayRecord({"w": Array(np.array([w]))}), ConfigRecord(),
                                              ClientGrid([0, 1])))
    replies = [_client_round(run, tasks[0].message, 0, target=0.0, n=1),
               _client_round(run, tasks[1].message, 1, target=2.0, n=3)]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return float(arrays["w"].numpy()[0]), replies


def test_one_step_by_hand_gives_option_two_control_variates_and_the_server_updates(tmp_path) -> None:
    """x = 1, c = 0.3, c_0 = 0.1 (stored), c_1 absent (0); targets 0 and 2; lr 0.1; one step each; N = 4."""
    run_ = _fake_run(tmp_path)
    run_.store.save(0, {"w": torch.tensor([0.1], dtype=torch.float64)})
    strategy = _server(population=4, rate=0.5, c=0.3)
    w, replies = _round(strategy, run_, 1.0, 1)
    # y_0 = 1 - 0.1 * 1 - 0.1 * (0.3 - 0.1) = 0.88; c_0+ = 0.1 - 0.3 + (1 - 0.88) / 0.1 = 1.0 (its gradient)
    # y_1 = 1 - 0.1 * (-1) - 0.1 * 0.3 = 1.07;      c_1+ = 0 - 0.3 + (1 - 1.07) / 0.1 = -1.0
    assert float(replies[0].content[ARRAYS]["w"].numpy()[0]) == pytest.approx(0.88, abs=1e-12)
    assert float(replies[1].content[ARRAYS]["w"].numpy()[0]) == pytest.approx(1.07, abs=1e-12)
    assert float(run_.store.load(0)["w"][0]) == pytest.approx(1.0, abs=1e-12)
    assert float(run_.store.load(1)["w"][0]) == pytest.approx(-1.0, abs=1e-12)
    assert float(replies[0].content[CONTROL_DELTA]["w"].numpy()[0]) == pytest.approx(0.9, abs=1e-12)
    assert float(replies[1].content[CONTROL_DELTA]["w"].numpy()[0]) == pytest.approx(-1.0, abs=1e-12)
    # x <- x + 0.5 * ((1 * 0.88 + 3 * 1.07) / 4 - x) = 1 + 0.5 * 0.0225; c <- 0.3 + (0.9 - 1.0) / 4 (N, not |S|)
    assert w == pytest.approx(1.01125, abs=1e-12)
    assert float(strategy.control["w"].numpy()[0]) == pytest.approx(0.275, abs=1e-12)


def test_round_two_reads_the_stored_control_variates_and_applies_the_correction(tmp_path) -> None:
    run_ = _fake_run(tmp_path)
    strategy = _server(population=2)
    w1, _ = _round(strategy, run_, 1.0, 1)
    # round 1 with zero control variates is plain SGD: y_0 = 0.9, y_1 = 1.1 -> x = (0.9 + 3.3) / 4 = 1.05
    assert w1 == pytest.approx(1.05, abs=1e-12)
    c_0, c_1 = float(run_.store.load(0)["w"][0]), float(run_.store.load(1)["w"][0])
    assert (c_0, c_1) == pytest.approx((1.0, -1.0), abs=1e-12)  # each client's gradient at x = 1
    c = float(strategy.control["w"].numpy()[0])
    assert c == pytest.approx((1.0 - 1.0) / 2, abs=1e-12)
    w2, replies = _round(strategy, run_, w1, 2)
    # y_i = x - lr * (x - t_i) - lr * (c - c_i): the stored c_i, read back, shifts every step
    expected = [w1 - LR * (w1 - 0.0) - LR * (c - c_0), w1 - LR * (w1 - 2.0) - LR * (c - c_1)]
    got = [float(r.content[ARRAYS]["w"].numpy()[0]) for r in replies]
    assert got == pytest.approx(expected, abs=1e-12)
    assert w2 == pytest.approx((expected[0] + 3 * expected[1]) / 4, abs=1e-12)
    assert got != pytest.approx([w1 - LR * (w1 - 0.0), w1 - LR * (w1 - 2.0)], abs=1e-6)  # the correction acted


def test_a_reply_without_its_control_delta_is_refused_by_name(tmp_path) -> None:
    ensure_task_identity()
    strategy = _server(population=2)
    tasks = tasks_of(strategy.configure_train(1, ArrayRecord({"w": Array(np.array([1.0]))}), ConfigRecord(),
                                              ClientGrid([0])))
    plain = reply(tasks[0].message, 0, {NUM_EXAMPLES: 1}, ArrayRecord({"w": Array(np.array([1.0]))}))
    with pytest.raises(ScaffoldError, match="lacks the record\\(s\\) control-delta"):
        strategy.aggregate_train(1, [plain])
    with pytest.raises(ScaffoldError, match="not initialised"):
        build_strategy("scaffold").configure_train(1, ArrayRecord(), ConfigRecord(), ClientGrid([0]))


# -- the correction in both engines ------------------------------------------------------------

def test_the_step_offset_gives_the_same_weights_in_both_engines_in_float64() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 0, 3).to(torch.float64)
    recipe = SGDRecipe(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4)
    rng = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 3, 32, 32, generator=rng, dtype=torch.float64), torch.randint(0, 10, (n,), generator=rng))
            for n in (23, 40, 17)]
    offsets = [{name: torch.randn(p.shape, generator=rng, dtype=torch.float64) for name, p in model.named_parameters()}
               for _ in data]
    sequential = []
    for k, ((x, y), offset) in enumerate(zip(data, offsets)):
        local = copy.deepcopy(model)
        training.train(local, x, y, recipe, training.seeded_generator(0, 1, k), offset=offset)
        sequential.append(local.state_dict())
    clients = [LockstepClient(x, y, model.state_dict(), training.seeded_generator(0, 1, k), offset=offset)
               for k, ((x, y), offset) in enumerate(zip(data, offsets))]
    lockstep = LockstepTrainer(model, (3, 32, 32)).train(clients, recipe)
    assert max((state[n] - lockstep.states[k][n]).abs().max().item()
               for k, state in enumerate(sequential) for n in state) < 1e-12
    plain = copy.deepcopy(model)
    training.train(plain, *data[0], recipe, training.seeded_generator(0, 1, 0))
    assert not any(torch.equal(plain.state_dict()[n], sequential[0][n]) for n in sequential[0])  # the offset acted


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_vectorized_scaffold_run_gives_the_sequential_runs_results(small_config) -> None:
    overrides = {"strategy.name": "scaffold", "train.rounds": 2, "evaluation.federated_every": 0}
    sequential = run(small_config(**overrides, **{"output.name": "sequential"}), progress=False)
    vectorized = run(small_config(**overrides, **{"output.name": "vectorized", "engine.kind": "vectorized"}),
                     progress=False)
    for column in ("test_accuracy", "test_loss", "train_loss"):
        np.testing.assert_allclose(vectorized.rounds[column], sequential.rounds[column], rtol=1e-5, equal_nan=True)
    assert vectorized.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]
    assert set(vectorized.clients.loc[vectorized.clients["phase"] == "train", "engine"]) == {"vectorized"}
    for name in ("sequential", "vectorized"):  # every client's c_i, after two rounds, by either engine
        assert sorted(p.stem for p in (Path(small_config().output.dir) / name / "client_state" / NAMESPACE)
                      .glob("*.pt")) == sorted(str(k) for k in range(10))


# -- runs --------------------------------------------------------------------------------------

def test_round_one_with_zero_control_variates_is_fedavg_bit_for_bit(small_config) -> None:
    settings = {"train.rounds": 1, "evaluation.federated_every": 0}
    fedavg = run(small_config(**settings, **{"output.name": "fedavg"}), progress=False)
    scaffold = run(small_config(**settings, **{"output.name": "scaffold", "strategy.name": "scaffold"}),
                   progress=False)
    left, right = torch.load(fedavg.path / "final_model.pt"), torch.load(scaffold.path / "final_model.pt")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    # a SCAFFOLD round moves twice the model each way (lenet5 has no buffers: c is the size of the model)
    for column in ("bytes_down", "bytes_up"):
        assert scaffold.rounds[column].iloc[1] == 2 * fedavg.rounds[column].iloc[1] > 0


def test_through_the_client_app_scaffold_gives_the_stacked_paths_results(small_config, monkeypatch) -> None:
    """One reply message per client (as on the flower executor): control-delta is a record of the reply."""
    settings = {"strategy.name": "scaffold", "train.rounds": 2, "train.clients_per_round": 5,
                "evaluation.federated_every": 0}
    stacked = run(small_config(**settings, **{"output.name": "stacked"}), progress=False)
    monkeypatch.setattr("fedsim.clients.runner.trains_direct", lambda msg: False)
    messages = run(small_config(**settings, **{"output.name": "messages"}), progress=False)
    same_results(stacked.path, messages.path)


def test_client_control_variates_are_stored_per_client_and_read_back_when_sampled_again(small_config, monkeypatch):
    loads: list[tuple[int, bool]] = []
    controls: list[ArrayRecord] = []
    load, step = ClientStateStore.load, Scaffold._step

    def spy_load(self, client_id):  # noqa: ANN001, ANN202
        state = load(self, client_id)
        loads.append((int(client_id), state is not None))
        return state

    def spy_step(self, mean, deltas):  # noqa: ANN001, ANN202
        result = step(self, mean, deltas)
        controls.append(self.control)
        return result

    monkeypatch.setattr(ClientStateStore, "load", spy_load)
    monkeypatch.setattr(Scaffold, "_step", spy_step)
    result = run(small_config(**{"strategy.name": "scaffold", "train.rounds": 3, "train.clients_per_round": 5,
                                 "evaluation.federated_every": 0}), progress=False)
    train = result.clients[result.clients["phase"] == "train"]
    sampled = train.groupby("round")["client_id"].apply(set).to_dict()
    seen: set[int] = set()
    expected = []
    for server_round in sorted(sampled):
        expected += [(k, k in seen) for k in sorted(sampled[server_round])]
        seen |= sampled[server_round]
    assert loads == expected and any(found for _, found in loads)  # zero the first time, its own c_i after
    folder = result.path / "client_state" / NAMESPACE
    stored = {int(p.stem): torch.load(p) for p in folder.glob("*.pt")}
    assert set(stored) == seen
    # c is the mean over all N = 10 clients of their c_i (zero for those never sampled)
    c = controls[-1]
    for name in c.keys():
        mean = sum(state[name].double() for state in stored.values()) / 10
        np.testing.assert_allclose(c[name].numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)


def test_the_clock_charges_the_control_variate_both_ways(small_config) -> None:
    settings = {"time.devices.kind": "tiers", "train.rounds": 2, "train.clients_per_round": 5,
                "evaluation.federated_every": 0, "strategy.name": "scaffold"}
    result = run(small_config(**settings), progress=False)
    devices = pd.read_csv(result.path / "devices.csv")
    train = result.clients[(result.clients["phase"] == "train") & (result.clients["status"] == "ok")]
    train = train.merge(devices, on="client_id")
    up = (train["sim_upload"] - train["latency"]) * train["upload_mbps"] * 1e6 / 8
    down = (train["sim_download"] - train["latency"]) * train["download_mbps"] * 1e6 / 8
    rounds = result.rounds[result.rounds["round"] > 0].set_index("round")
    assert np.allclose(up.groupby(train["round"]).sum(), rounds["bytes_up"], rtol=1e-9)
    assert np.allclose(down.groupby(train["round"]).sum(), rounds["bytes_down"], rtol=1e-9)


def test_upload_bytes_are_the_model_and_the_trainable_parameters(small_config) -> None:
    base = small_config(**{"strategy.name": "scaffold"})
    for name in ("lenet5", "resnet8"):
        model = build_model(name, 10, 0, 3)
        model_bytes = ArrayRecord({k: Array(v.numpy()) for k, v in model.state_dict().items()}).count_bytes()
        config = replace(base, model=replace(base.model, name=name))
        expected = model_bytes + control_record_bytes(dict(model.named_parameters()))
        assert ScaffoldMethod().upload_bytes(config, model_bytes, 0, 10) == expected
    assert expected < 2 * model_bytes  # resnet8's BatchNorm buffers carry no control variate


@pytest.mark.slow  # keeps the fast set under a minute
def test_an_interrupted_scaffold_run_resumes_bitwise_identical(small_config) -> None:
    """Stopped after round 3 with the checkpoint at round 2: the c_i written in round 3 are rolled back."""
    settings = {"strategy.name": "scaffold", "train.rounds": 4, "train.clients_per_round": 5,
                "evaluation.federated_every": 2, "strategy.kwargs.server_learning_rate": 0.8,
                "output.checkpoint_every": 2}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(3)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
    for path in (reference.path / "client_state" / NAMESPACE).glob("*.pt"):
        left, right = torch.load(path), torch.load(result.path / "client_state" / NAMESPACE / path.name)
        assert all(torch.equal(left[k], right[k]) for k in left)


# -- named extra stacks on the wire ------------------------------------------------------------

def test_extra_stacks_travel_in_a_cohort_reply_and_count_as_uploaded() -> None:
    ensure_task_identity()
    tasks = tasks_of([Message(RecordDict({ARRAYS: ArrayRecord(), "config": ConfigRecord()}), dst_node_id=k,
                              message_type="train") for k in (3, 5)])
    replies = [ClientReply(t.client_id, content=reply_content(t.client_id, {NUM_EXAMPLES: 1}), reply_to=t.message)
               for t in tasks]
    states = {k: {"w": torch.full((2,), float(k))} for k in range(2)}
    extras = {k: {CONTROL_DELTA: {"w": torch.full((2,), 10.0 + k)}} for k in range(2)}
    stacked = stack_updates(tasks, replies, states, extras)
    assert stacked[1].upload_bytes == 2 * stacked[1].update.nbytes
    packed = Message(pack_cohort_replies(stacked, 1.0), dst_node_id=1, message_type="train.cohort")
    unpacked = unpack_cohort_replies(packed, tasks)
    assert [r.extras[CONTROL_DELTA].tensors()["w"].tolist() for r in unpacked] == [[10.0, 10.0], [11.0, 11.0]]
    assert [r.update.tensors()["w"].tolist() for r in unpacked] == [[0.0, 0.0], [1.0, 1.0]]
    assert unpacked[0].upload_bytes == stacked[0].upload_bytes
    assert unpacked[0].materialized().content[CONTROL_DELTA]["w"].numpy().tolist() == [10.0, 10.0]


# -- selection and refusals --------------------------------------------------------------------

def test_scaffold_is_selectable_by_name_and_validates_its_arguments() -> None:
    assert isinstance(build_strategy("scaffold", {"server_learning_rate": 0.5}), Scaffold)
    with pytest.raises(StrategyError, match="server_learning_rate = -1 must be a number > 0"):
        build_strategy("scaffold", {"server_learning_rate": -1})
    with pytest.raises(StrategyError, match="has no argument\\(s\\) momentum"):
        build_strategy("scaffold", {"momentum": 0.9})
    with pytest.raises(StrategyError, match="base = 'scaffold' cannot be wrapped: the wrapper would clip and noise the model update but not the control-variate delta"):
        build_strategy("dp-fixed-server", {"base": "scaffold", "noise_multiplier": 0.1, "clipping_norm": 1.0})


@pytest.mark.parametrize(("settings", "message"), [
    ({"time.devices.kind": "tiers", "time.policy.train_dropped": True, "time.policy.deadline": 5.0},
     "time.policy.train_dropped = True: scaffold: a dropped client would store"),
    ({"executor.kind": "cohort", "executor.streaming": True},
     "executor.streaming = True: strategy 'scaffold' does not aggregate a weighted mean"),
])
def test_settings_that_would_break_scaffold_are_refused(small_config, settings, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        small_config(**{"strategy.name": "scaffold", **settings})
