"""FedNova (fedsim.strategies.normalized): the formula by hand, FedAvg as its special case, real runs,
both aggregation paths, the executors, resume, and the settings it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.config import ConfigError
from fedsim.core.extension import RoundExtension
from fedsim.core.loop import ClientGrid
from fedsim.core.protocol import ClientReply, reply
from fedsim.core.stack import UpdateStack
from fedsim.frontends.cli import main
from fedsim.frontends.comparison import compare
from fedsim.ops.interrupt import RunInterrupted
from fedsim.runs.experiment import resume, run
from fedsim.strategies import FedNova, StrategyError, build_strategy, effective_steps, strategy_arguments
from fedsim.strategies.streaming import stream_weight_key

# ----------------------------------------------------------------------------- a hand-computed round

# x: the global model; y_1, y_2: two clients' models after tau = 2 and 5 steps with momentum 0.5, n = 30 and 10
X = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.25]), "bn.num_batches_tracked": np.array(4)}
Y = [{"w": np.array([[0.5, -1.0], [0.5, 2.0]]), "b": np.array([0.75]), "bn.num_batches_tracked": np.array(6)},
     {"w": np.array([[2.0, -3.0], [0.0, 3.5]]), "b": np.array([-0.25]), "bn.num_batches_tracked": np.array(9)}]
STEPS, EXAMPLES, RHO = (2, 5), (30, 10), 0.5
# a_1 = (2 - 0.5 (1 - 0.25) / 0.5) / 0.5 = 2.5; a_2 = (5 - 0.5 (1 - 0.03125) / 0.5) / 0.5 = 8.0625
A = (2.5, 8.0625)
P = (0.75, 0.25)
TAU_EFF = 0.75 * 2.5 + 0.25 * 8.0625  # 3.890625


def expected_round() -> dict[str, np.ndarray]:
    """x - tau_eff sum_i p_i (x - y_i) / a_i for the floating arrays; the counters' weighted mean, rounded."""
    out = {}
    for name in ("w", "b"):
        d = sum(p * (X[name] - y[name]) / a for p, y, a in zip(P, Y, A))
        out[name] = X[name] - TAU_EFF * d
    out["bn.num_batches_tracked"] = np.array(7)  # 0.75 * 6 + 0.25 * 9 = 6.75 -> 7
    return out


def tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value.copy()) for name, value in state.items()}


def task(client_id: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord()}), dst_node_id=client_id + 1, message_type=MessageType.TRAIN)


def metrics(i: int) -> dict:
    return {"num-examples": EXAMPLES[i], "train-steps": STEPS[i], "train-loss": 0.5}


def started(momentum: float = RHO) -> FedNova:
    strategy = build_strategy("fednova", momentum=momentum)
    assert isinstance(strategy, FedNova)
    strategy.configure_train(1, ArrayRecord(tensors(X)), ConfigRecord(), ClientGrid([0, 1]))
    return strategy


def as_numpy(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    assert record is not None
    return {name: record[name].numpy() for name in record.keys()}


def test_one_round_matches_the_formula_computed_by_hand_on_both_paths() -> None:
    assert [effective_steps(t, RHO) for t in STEPS] == list(A)
    ids = [7, 3]  # client 3 is Y[1]; replies arrive out of client-id order
    stack_a, stack_b = UpdateStack.of([7], [tensors(Y[0])]), UpdateStack.of([3], [tensors(Y[1])])
    stacked = [ClientReply(7, reply(task(7), 7, metrics(0)), update=stack_a.view(0)),
               ClientReply(3, reply(task(3), 3, metrics(1)), update=stack_b.view(0))]
    messages = [reply(task(c), c, metrics(i), ArrayRecord(tensors(Y[i]))) for i, c in enumerate(ids)]
    from_stack, _ = started().aggregate_stacked(1, stacked)
    from_messages, _ = started().aggregate_train(1, messages)
    want = expected_round()
    for got in (as_numpy(from_stack), as_numpy(from_messages)):
        assert list(got) == list(want)
        for name, value in want.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-12, err_msg=name)
    for name in want:  # the two paths: the same arithmetic in the same order
        assert as_numpy(from_stack)[name].tobytes() == as_numpy(from_messages)[name].tobytes(), name
    # the result is not FedAvg's weighted mean of the clients' models (unequal steps)
    fedavg = 0.75 * Y[0]["w"] + 0.25 * Y[1]["w"]
    assert np.abs(as_numpy(from_stack)["w"] - fedavg).max() > 0.1


def test_a_client_without_the_step_count_is_an_aggregation_error() -> None:
    broken = [reply(task(c), c, {"num-examples": 5}, ArrayRecord(tensors(Y[i]))) for i, c in enumerate([0, 1])]
    with pytest.raises(Exception, match="FedNova needs each client's local step count .'train-steps'.*client 0"):
        started().aggregate_train(1, broken)


def test_effective_steps_are_what_sgd_with_momentum_moves_per_unit_of_gradient() -> None:
    assert effective_steps(7, 0.0) == 7.0
    assert effective_steps(1, 0.9) == pytest.approx(1.0, abs=1e-15)
    assert effective_steps(2, 0.9) == pytest.approx(2.9, abs=1e-14)  # (1 + 0.9) g_1 + g_2
    assert effective_steps(3, 0.9) == pytest.approx(5.61, abs=1e-13)  # (1 + 0.9 + 0.81) + (1 + 0.9) + 1
    for steps in (1, 4, 37):
        # torch's SGD, lr 1, a constant unit gradient: the distance moved is a_i
        weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([weight], lr=1.0, momentum=0.9)
        for _ in range(steps):
            optimizer.zero_grad()
            weight.sum().backward()
            optimizer.step()
        assert -float(weight.detach()) == pytest.approx(effective_steps(steps, 0.9), rel=1e-12)


# ----------------------------------------------------------------------------- by name, and what it refuses


def test_fednova_is_offered_by_name_with_its_arguments_checked() -> None:
    assert "momentum" not in strategy_arguments("fednova")  # the run's train.momentum
    assert build_strategy("fednova", {"momentum": 0.5}, momentum=0.5).momentum == 0.5
    with pytest.raises(StrategyError, match="strategy 'fednova' has no argument.s. eta; allowed: weighted_by_key"):
        build_strategy("fednova", {"eta": 1.0})
    with pytest.raises(StrategyError, match=r"momentum = 0.5 must equal train.momentum \(0.9\)"):
        build_strategy("fednova", {"momentum": 0.5}, momentum=0.9)


def test_settings_fednova_is_wrong_for_are_refused(small_config) -> None:
    with pytest.raises(ConfigError, match="(?s)executor.streaming.*strategy 'fednova' does not aggregate a weighted "
                                          "mean"):
        small_config(**{"strategy.name": "fednova", "executor.kind": "cohort", "executor.streaming": True})
    with pytest.raises(ConfigError, match="base = 'fednova' cannot be wrapped: its tau_eff / a_i rescales"):
        small_config(**{"strategy.name": "dp-fixed-server", "strategy.kwargs.base": "fednova",
                        "strategy.kwargs.noise_multiplier": 0.1, "strategy.kwargs.clipping_norm": 1.0})
    with pytest.raises(ConfigError, match=r"strategy.kwargs.*momentum = 0.5 must equal train.momentum \(0.0\)"):
        small_config(**{"strategy.name": "fednova", "strategy.kwargs.momentum": 0.5, "train.momentum": 0.0})
    assert stream_weight_key(build_strategy("fednova")) is None


def test_compare_runs_fednova_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_train=200", "--set",
                "data.synthetic_test=50", "--set", "partition.num_clients=4", "--set", "train.rounds=1", "--set",
                "executor.kind=in-process", "--set", "output.figures=false", "--no-progress"]
    code = main(["compare", "--strategies", "fedavg,fednova:eta=1", "-o", str(tmp_path / "bad"), *settings])
    assert code == 2 and "strategy 'fednova' has no argument(s) eta; allowed:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    code = main(["compare", "--strategies", "fednova", "-o", str(tmp_path / "out"), "--name", "cmp", *settings])
    assert code == 0
    summary = pd.read_csv(tmp_path / "out" / "cmp" / "summary.csv")
    assert summary["strategy"].tolist() == ["fednova"] and summary["status"].tolist() == ["ok"]


# ----------------------------------------------------------------------------- real runs


class RecordRound(RoundExtension):
    """Keeps the round's starting model, each client's model, examples and steps, and the new global model."""

    def __init__(self) -> None:
        self.start: dict[str, np.ndarray] = {}
        self.clients: list[tuple[int, dict[str, np.ndarray], float, int]] = []
        self.end: dict[str, np.ndarray] = {}

    def on_run_start(self, run, arrays: ArrayRecord) -> dict[str, float]:  # noqa: ANN001
        self.start = {name: np.array(arrays[name].numpy()) for name in arrays.keys()}
        return {}

    def on_train_replies(self, record, replies: list[ClientReply]) -> None:  # noqa: ANN001
        for r in replies:
            if r.update is not None:
                state = {name: t.detach().cpu().numpy().copy() for name, t in r.update.tensors().items()}
            else:
                arrays = next(iter(r.content.array_records.values()))
                state = {name: np.array(arrays[name].numpy()) for name in arrays.keys()}
            m = next(iter(r.content.metric_records.values()))
            self.clients.append((r.client_id, state, float(m["num-examples"]), int(m["train-steps"])))

    def on_round_end(self, record, arrays: ArrayRecord) -> None:  # noqa: ANN001
        self.end = {name: np.array(arrays[name].numpy()) for name in arrays.keys()}


def test_a_real_round_with_clients_of_different_sizes_and_momentum_is_the_formula(small_config) -> None:
    recorder = RecordRound()
    run(small_config(**{"strategy.name": "fednova", "train.rounds": 1, "train.momentum": 0.9,
                        "train.fraction_train": 0.5, "evaluation.federated_every": 0}),
        progress=False, extensions=[recorder])
    clients = sorted(recorder.clients, key=lambda c: c[0])
    steps = [c[3] for c in clients]
    assert len(clients) == 5 and len(set(steps)) > 1, "clients of different sizes take different numbers of steps"
    n = np.array([c[2] for c in clients])
    p = n / n.sum()
    a = [sum((1 - 0.9**k) / (1 - 0.9) for k in range(1, t + 1)) for t in steps]  # momentum 0.9 over tau_i steps
    tau_eff = float(np.dot(p, a))
    for name, x in recorder.start.items():
        x64 = x.astype(np.float64)
        d = sum(p_i * (x64 - state[name].astype(np.float64)) / a_i for p_i, (_, state, _, _), a_i in zip(p, clients, a))
        want = (x64 - tau_eff * d).astype(x.dtype)
        fedavg = sum(p_i * state[name].astype(np.float64) for p_i, (_, state, _, _) in zip(p, clients))
        np.testing.assert_allclose(recorder.end[name], want, rtol=0, atol=1e-6, err_msg=name)
        if name.endswith("weight"):
            assert np.abs(recorder.end[name] - fedavg).max() > 1e-4, f"{name}: FedNova gave FedAvg's mean"


def final_model(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "final_model.pt")


def test_equal_steps_without_momentum_is_fedavg(small_config) -> None:
    # a batch larger than any client's data: every client takes one step per epoch, tau_i = 2 for all
    config = small_config(**{"train.rounds": 1, "train.momentum": 0.0, "train.batch_size": 1000,
                             "train.local_epochs": 2, "evaluation.federated_every": 0, "output.name": "equal"})
    result = compare(config, ["fedavg", "fednova"], progress=False)
    runs = result.path / "runs"
    fedavg, fednova = final_model(runs / "fedavg-s0"), final_model(runs / "fednova-s0")
    assert fedavg.keys() == fednova.keys()
    for name in fedavg:
        np.testing.assert_allclose(fednova[name].double().numpy(), fedavg[name].double().numpy(), rtol=0,
                                   atol=1e-12, err_msg=name)
    losses = pd.read_csv(runs / "fednova-s0" / "rounds.csv")["test_loss"]
    assert losses.iloc[-1] != losses.iloc[0], "the models trained"
    np.testing.assert_allclose(losses, pd.read_csv(runs / "fedavg-s0" / "rounds.csv")["test_loss"], rtol=1e-9)


@pytest.mark.slow  # keeps the fast set under a minute
def test_results_are_the_same_in_process_and_on_one_or_two_cohort_workers(small_config) -> None:
    from test_cohort import run_on_cohort

    overrides = {"strategy.name": "fednova", "train.rounds": 1, "train.fraction_train": 0.7,
                 "faults.fail_clients": [3], "evaluation.federated_every": 0}
    reference = run(small_config(**overrides, **{"output.name": "in-process"}), progress=False)
    for workers in (1, 2):
        rounds, clients, *_ = run_on_cohort(small_config(**overrides, **{"output.name": f"cohort-{workers}"}),
                                            workers)
        pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"),
                                      reference.rounds.drop(columns="wall_seconds"))
        pd.testing.assert_frame_equal(clients.drop(columns="seconds"), reference.clients.drop(columns="seconds"))


@pytest.mark.slow  # keeps the fast set under a minute
def test_an_interrupted_fednova_run_resumes_bitwise_identical(small_config) -> None:
    from interrupting import StopAfter, same_results

    settings = {"strategy.name": "fednova", "train.rounds": 2, "evaluation.federated_every": 0}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
