"""FedDyn (``feddyn``): alpha_k, the client's regularised step, H_k, mean_H, the cloud and averaged models.

The math is pinned on a one-parameter model whose gradients are known (``loss = (w - t)^2 / 2``, so
``g = w - t``); runs on the small synthetic config check what a run adds: the client-state store,
the server's mean state, both engines, the averaged model's columns, exact resume, the refusals.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from torch import nn

from fedsim.clients import training
from fedsim.clients.feddyn import NAMESPACE, ClientDynamics, client_alpha
from fedsim.clients.lockstep.engine import LockstepClient, LockstepTrainer
from fedsim.clients.runner import ensure_task_identity
from fedsim.clients.state import ClientStateStore
from fedsim.config import ConfigError
from fedsim.core.extension import RoundExtension
from fedsim.core.loop import ClientGrid, tasks_of
from fedsim.core.protocol import ARRAYS, NUM_EXAMPLES, reply
from fedsim.core.recipe import SGDRecipe
from fedsim.core.spec import PartitionIndex
from fedsim.models import build_model
from fedsim.ops.interrupt import RunInterrupted
from fedsim.runs.experiment import resume, run
from fedsim.strategies import StrategyError, build_strategy
from fedsim.strategies.feddyn import FedDyn, FedDynError
from interrupting import StopAfter, same_results

LR = 0.1
ONE_STEP = SGDRecipe(epochs=1, batch_size=64, lr=LR, momentum=0.0)


# -- the math on a one-parameter model -------------------------------------------------------

class Scalar(nn.Module):
    """One weight w; the objective below makes its gradient w - t on a batch of targets t."""

    def __init__(self, w: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))


def _objective(target: float):  # noqa: ANN202 - training.Objective
    def objective(model, xb, yb, idx):  # noqa: ANN001, ANN202
        return 0.5 * ((model.w - target) ** 2).sum(), torch.zeros(len(idx), 2)
    return objective


def _fake_run(tmp_path: Path, sizes: list[int]) -> SimpleNamespace:
    """What ClientDynamics reads of a worker's run: device, partition, model, spec and client-state store."""
    store = ClientStateStore(tmp_path, NAMESPACE)
    starts = np.cumsum([0, *sizes])
    partition = PartitionIndex.from_lists([np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])],
                                          [np.zeros(0, np.int64) for _ in sizes])
    return SimpleNamespace(device=torch.device("cpu"), partition=partition, model=lambda name=None: Scalar(),
                           spec=SimpleNamespace(architecture_of=lambda client_id: "scalar"),
                           state_store=lambda namespace: store, store=store)


def _client_round(run_: SimpleNamespace, task: Message, client_id: int, target: float) -> Message:
    """One client's FedDyn round on the scalar model: regularised step, H_k stored, reply."""
    dynamics = ClientDynamics.of_task(run_, task, client_id)
    model = Scalar(float(task.content[ARRAYS]["w"].numpy()[0]))
    n = len(run_.partition.train_of(client_id))
    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    training.train(model, x, y, dynamics.recipe(ONE_STEP), training.seeded_generator(0, client_id),
                   _objective(target), gradient_offset=dynamics.gradient_offset)
    dynamics.finish(run_, dict(model.state_dict()))
    return reply(task, client_id, {NUM_EXAMPLES: n}, ArrayRecord({"w": Array(model.w.detach().numpy().copy())}))


def _round(strategy: FedDyn, run_: SimpleNamespace, w: float) -> tuple[float, list[Message]]:
    ensure_task_identity()
    tasks = tasks_of(strategy.configure_train(1, ArrayRecord({"w": Array(np.array([w]))}), ConfigRecord(),
                                              ClientGrid([0, 1])))
    replies = [_client_round(run_, tasks[0].message, 0, target=0.0),
               _client_round(run_, tasks[1].message, 1, target=2.0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return float(arrays["w"].numpy()[0]), replies


def _server(alpha: float, max_grad_norm: float, mean_h: float) -> FedDyn:
    strategy = build_strategy("feddyn", {"alpha": alpha, "max_grad_norm": max_grad_norm})
    strategy.prepare({"w": torch.zeros(1, dtype=torch.float64)}, population=4)
    strategy.mean_state = ArrayRecord({"w": Array(np.array([mean_h]))})
    return strategy


def test_one_step_by_hand_gives_alpha_k_the_client_update_h_k_mean_h_and_both_models(tmp_path) -> None:
    """N = 4 clients of 1, 3, 2, 2 samples; clients 0 and 1 sampled; w_cloud = 1; H_0 = 0.5 (stored), H_1 absent.

    alpha = 0.1: alpha_0 = 0.1 / (1 * 4 / 8) = 0.2, alpha_1 = 0.1 / (3 * 4 / 8) = 1 / 15; targets 0 and 2.
    """
    assert client_alpha(0.1, 1, 4, 8) == pytest.approx(0.2) and client_alpha(0.1, 3, 4, 8) == pytest.approx(1 / 15)
    run_ = _fake_run(tmp_path, [1, 3, 2, 2])
    run_.store.save(0, {"w": torch.tensor([0.5], dtype=torch.float64)})
    strategy = _server(alpha=0.1, max_grad_norm=10.0, mean_h=0.5 / 4)
    w, replies = _round(strategy, run_, 1.0)
    # g_0 = (1 - 0) + 0.2 (0.5 - 1) = 0.9, plus weight decay 0.2 * 1: w_0 = 1 - 0.1 * 1.1 = 0.89
    # g_1 = (1 - 2) + (0 - 1) / 15, plus weight decay 1 / 15: w_1 = 1 - 0.1 * (-1) = 1.1
    assert [float(r.content[ARRAYS]["w"].numpy()[0]) for r in replies] == pytest.approx([0.89, 1.1], abs=1e-12)
    # H_k <- H_k + (w_k - w_cloud)
    assert float(run_.store.load(0)["w"][0]) == pytest.approx(0.39, abs=1e-12)
    assert float(run_.store.load(1)["w"][0]) == pytest.approx(0.1, abs=1e-12)
    # avg = (0.89 + 1.1) / 2 (unweighted); mean_H = 0.125 + (2 / 4)(0.995 - 1) = (0.39 + 0.1 + 0 + 0) / 4
    assert float(strategy.average["w"].numpy()[0]) == pytest.approx(0.995, abs=1e-12)
    assert float(strategy.mean_state["w"].numpy()[0]) == pytest.approx(0.1225, abs=1e-12)
    assert w == pytest.approx(0.995 + 0.1225, abs=1e-12)  # the cloud model, the next round's global model


def test_the_clipping_norm_clips_the_loss_gradient_before_weight_decay(tmp_path) -> None:
    run_ = _fake_run(tmp_path, [1, 3, 2, 2])
    run_.store.save(0, {"w": torch.tensor([0.5], dtype=torch.float64)})
    _, replies = _round(_server(alpha=0.1, max_grad_norm=0.5, mean_h=0.125), run_, 1.0)
    # client 0's loss gradient 0.9 is clipped to 0.5 (torch's 1e-6 guard aside); the decay 0.2 is not
    assert float(replies[0].content[ARRAYS]["w"].numpy()[0]) == pytest.approx(1 - 0.1 * (0.5 + 0.2), abs=1e-6)


def test_h_k_is_read_back_the_next_time_a_client_trains(tmp_path) -> None:
    run_ = _fake_run(tmp_path, [1, 3, 2, 2])
    strategy = _server(alpha=0.1, max_grad_norm=10.0, mean_h=0.0)
    w1, _ = _round(strategy, run_, 1.0)
    h_0 = float(run_.store.load(0)["w"][0])
    assert h_0 != 0.0
    ensure_task_identity()
    task = tasks_of(strategy.configure_train(2, ArrayRecord({"w": Array(np.array([w1]))}), ConfigRecord(),
                                             ClientGrid([0])))[0].message
    dynamics = ClientDynamics.of_task(run_, task, 0)
    assert float(dynamics.own["w"][0]) == h_0
    assert float(dynamics.gradient_offset["w"][0]) == pytest.approx(0.2 * (h_0 - w1), abs=1e-12)


def test_a_round_needs_the_prepared_state() -> None:
    with pytest.raises(FedDynError, match="not initialised"):
        build_strategy("feddyn").configure_train(1, ArrayRecord(), ConfigRecord(), ClientGrid([0]))


# -- both engines ------------------------------------------------------------------------------

def test_gradient_offsets_weight_decays_and_clipping_give_the_same_weights_in_both_engines() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 0, 3).to(torch.float64)
    recipe = SGDRecipe(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4, max_grad_norm=1.0)
    rng = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 3, 32, 32, generator=rng, dtype=torch.float64), torch.randint(0, 10, (n,), generator=rng))
            for n in (11, 20, 9)]
    offsets = [{name: 0.1 * torch.randn(p.shape, generator=rng, dtype=torch.float64)
                for name, p in model.named_parameters()} for _ in data]
    decays = [0.3, 0.01, 0.05]
    sequential = []
    for k, ((x, y), offset, decay) in enumerate(zip(data, offsets, decays)):
        local = copy.deepcopy(model)
        training.train(local, x, y, recipe.for_feddyn(decay - recipe.weight_decay, 1.0),
                       training.seeded_generator(0, 1, k), gradient_offset=offset)
        sequential.append(local.state_dict())
    clients = [LockstepClient(x, y, model.state_dict(), training.seeded_generator(0, 1, k), gradient_offset=offset,
                              weight_decay=decay)
               for k, ((x, y), offset, decay) in enumerate(zip(data, offsets, decays))]
    lockstep = LockstepTrainer(model, (3, 32, 32)).train(clients, recipe)
    assert max((state[n] - lockstep.states[k][n]).abs().max().item()
               for k, state in enumerate(sequential) for n in state) < 1e-12
    unclipped = copy.deepcopy(model)
    training.train(unclipped, *data[0], recipe.for_feddyn(decays[0] - recipe.weight_decay, 0.0),
                   training.seeded_generator(0, 1, 0), gradient_offset=offsets[0])
    assert not any(torch.equal(unclipped.state_dict()[n], sequential[0][n]) for n in sequential[0])  # clipping acted


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_vectorized_feddyn_run_gives_the_sequential_runs_results(small_config) -> None:
    overrides = {"strategy.name": "feddyn", "train.rounds": 2, "evaluation.federated_every": 0,
                 "strategy.kwargs.alpha": 0.1}
    sequential = run(small_config(**overrides, **{"output.name": "sequential"}), progress=False)
    vectorized = run(small_config(**overrides, **{"output.name": "vectorized", "engine.kind": "vectorized"}),
                     progress=False)
    for column in ("test_accuracy", "test_loss", "train_loss", "avg_model_test_loss", "avg_model_test_accuracy"):
        np.testing.assert_allclose(vectorized.rounds[column], sequential.rounds[column], rtol=1e-5, equal_nan=True)
    assert vectorized.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]
    assert set(vectorized.clients.loc[vectorized.clients["phase"] == "train", "engine"]) == {"vectorized"}


# -- runs --------------------------------------------------------------------------------------

class Capture(RoundExtension):
    """Keeps the initial arrays and the global arrays after every round."""

    stateful = False

    def __init__(self) -> None:
        self.arrays: list[dict[str, torch.Tensor]] = []

    def on_run_start(self, run, arrays) -> dict[str, float]:  # noqa: ANN001
        self.arrays = [arrays.to_torch_state_dict()]
        return {}

    def on_round_end(self, record, arrays) -> None:  # noqa: ANN001
        self.arrays.append(arrays.to_torch_state_dict())


def _round_one(small_config, name: str, strategy: str, **kwargs: float) -> Capture:  # noqa: ANN001
    capture = Capture()
    settings = {"train.rounds": 1, "evaluation.federated_every": 0, "evaluation.centralized_every": 0,
                "strategy.name": strategy, "output.name": name,
                **{f"strategy.kwargs.{k}": v for k, v in kwargs.items()}}
    run(small_config(**settings), progress=False, extensions=[capture])
    return capture


def test_feddyn_approaches_the_plain_mean_as_alpha_goes_to_zero(small_config) -> None:
    """Round 1, all N clients sampled: mean_H = avg - w_0, so avg = (w_cloud + w_0) / 2; its distance to
    ``uniform``'s model (the same seed) shrinks with alpha. The cloud model itself does not tend to it."""
    uniform = _round_one(small_config, "uniform", "uniform").arrays[1]
    distances = []
    for alpha in (1e-1, 1e-3, 1e-5):
        initial, cloud = _round_one(small_config, f"feddyn-{alpha}", "feddyn", alpha=alpha, max_grad_norm=0.0).arrays
        average = {n: (cloud[n].double() + initial[n].double()) / 2 for n in cloud}
        distances.append(max((average[n] - uniform[n].double()).abs().max().item() for n in uniform))
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 1e-5 < distances[0]
    assert max((cloud[n] - uniform[n]).abs().max().item() for n in uniform) > 1e-3


def test_client_states_are_stored_per_client_and_mean_h_is_their_mean(small_config, monkeypatch) -> None:
    loads: list[tuple[int, bool]] = []
    means: list[ArrayRecord] = []
    load, cloud = ClientStateStore.load, FedDyn._cloud

    def spy_load(self, client_id):  # noqa: ANN001, ANN202
        state = load(self, client_id)
        loads.append((int(client_id), state is not None))
        return state

    def spy_cloud(self, average, sampled):  # noqa: ANN001, ANN202
        result = cloud(self, average, sampled)
        means.append(self.mean_state)
        return result

    monkeypatch.setattr(ClientStateStore, "load", spy_load)
    monkeypatch.setattr(FedDyn, "_cloud", spy_cloud)
    result = run(small_config(**{"strategy.name": "feddyn", "train.rounds": 3, "train.clients_per_round": 5,
                                 "evaluation.federated_every": 0}), progress=False)
    train = result.clients[result.clients["phase"] == "train"]
    sampled = train.groupby("round")["client_id"].apply(set).to_dict()
    seen: set[int] = set()
    expected = []
    for server_round in sorted(sampled):
        expected += [(k, k in seen) for k in sorted(sampled[server_round])]
        seen |= sampled[server_round]
    assert loads == expected and any(found for _, found in loads)  # zero the first time, its own H_k after
    stored = {int(p.stem): torch.load(p) for p in (result.path / "client_state" / NAMESPACE).glob("*.pt")}
    assert set(stored) == seen
    for name in means[-1].keys():  # mean_H is the mean over all N = 10 clients of their H_k
        mean = sum(state[name].double() for state in stored.values()) / 10
        np.testing.assert_allclose(means[-1][name].numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)


def test_the_averaged_models_columns_are_in_rounds_csv_and_differ_from_the_global_models(small_config) -> None:
    result = run(small_config(**{"strategy.name": "feddyn", "train.rounds": 1, "evaluation.federated_every": 0}),
                 progress=False)
    rounds = result.rounds.set_index("round")
    assert np.isnan(rounds.loc[0, "avg_model_test_loss"])  # no averaged model before round 1
    assert rounds.loc[1, "avg_model_test_loss"] > 0 and 0 <= rounds.loc[1, "avg_model_test_accuracy"] <= 1
    assert rounds.loc[1, "avg_model_test_loss"] != rounds.loc[1, "test_loss"]
    fedavg = run(small_config(**{"train.rounds": 1, "output.name": "fedavg"}), progress=False)
    assert fedavg.rounds["avg_model_test_loss"].isna().all()  # only FedDyn fills them


@pytest.mark.slow  # keeps the fast set under a minute
def test_an_interrupted_feddyn_run_resumes_bitwise_identical(small_config) -> None:
    """Stopped after round 3 with the checkpoint at round 2: the H_k written in round 3 are rolled back."""
    settings = {"strategy.name": "feddyn", "train.rounds": 4, "train.clients_per_round": 5,
                "evaluation.federated_every": 2, "strategy.kwargs.alpha": 0.1, "output.checkpoint_every": 2}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(3)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
    for path in (reference.path / "client_state" / NAMESPACE).glob("*.pt"):
        left, right = torch.load(path), torch.load(result.path / "client_state" / NAMESPACE / path.name)
        assert all(torch.equal(left[k], right[k]) for k in left)


# -- selection and refusals --------------------------------------------------------------------

def test_feddyn_is_selectable_by_name_and_validates_its_arguments() -> None:
    strategy = build_strategy("feddyn")
    assert isinstance(strategy, FedDyn) and (strategy.alpha, strategy.max_grad_norm) == (0.01, 10.0)
    assert build_strategy("feddyn", {"alpha": 0.1, "max_grad_norm": 0}).max_grad_norm == 0.0
    with pytest.raises(StrategyError, match="alpha = 0 must be a number > 0"):
        build_strategy("feddyn", {"alpha": 0})
    with pytest.raises(StrategyError, match="max_grad_norm = -1 must be >= 0 \\(0: no clipping\\)"):
        build_strategy("feddyn", {"max_grad_norm": -1})
    with pytest.raises(StrategyError, match="alpha = 'big' must be a number"):
        build_strategy("feddyn", {"alpha": "big"})
    with pytest.raises(StrategyError, match="has no argument\\(s\\) mu"):
        build_strategy("feddyn", {"mu": 0.9})
    with pytest.raises(StrategyError, match="base = 'feddyn' cannot be wrapped: the cloud model adds"):
        build_strategy("dp-fixed-server", {"base": "feddyn", "noise_multiplier": 0.1, "clipping_norm": 1.0})


@pytest.mark.parametrize(("settings", "message"), [
    ({"time.devices.kind": "tiers", "time.policy.train_dropped": True, "time.policy.deadline": 5.0},
     "time.policy.train_dropped = True: feddyn: a dropped client would store"),
    ({"executor.kind": "cohort", "executor.streaming": True},
     "executor.streaming = True: strategy 'feddyn' does not aggregate a weighted mean"),
])
def test_settings_that_would_break_feddyn_are_refused(small_config, settings, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        small_config(**{"strategy.name": "feddyn", **settings})
