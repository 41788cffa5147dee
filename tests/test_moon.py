"""MOON (fedsim.strategies.contrastive, fedsim.clients.moon): the contrastive term by hand, FedAvg as its
special cases, the previous local model per client, resume, the vectorized engine's fallback, the
command line and the settings it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedsim.clients.moon import NAMESPACE, model_contrastive_loss
from fedsim.config import ConfigError
from fedsim.core.protocol import ENGINE_LABELS, MOON_MU, MOON_TEMPERATURE, TrainingEngine
from fedsim.core.spec import CLIENT_STATE
from fedsim.frontends.cli import main
from fedsim.frontends.comparison import compare
from fedsim.ops.interrupt import RunInterrupted
from fedsim.runs.experiment import resume, run
from fedsim.strategies import Moon, StrategyError, build_strategy, strategy_arguments
from fedsim.strategies.streaming import stream_weight_key

# ----------------------------------------------------------------------------- the term by hand


def test_the_contrastive_loss_matches_a_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])
    z_glob = torch.tensor([[1.0, 1.0, 1.0], [0.0, -2.0, 0.5]])
    z_prev = torch.tensor([[-1.0, 0.5, 0.0], [1.0, 1.0, -1.0]])
    tau = 0.5

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    # row 0: cos(z, z_glob) = 3 / sqrt(5 * 3), cos(z, z_prev) = -1 / sqrt(5 * 1.25); row 1 likewise
    per_row = []
    for row in range(2):
        positive = cos(z[row].tolist(), z_glob[row].tolist()) / tau
        negative = cos(z[row].tolist(), z_prev[row].tolist()) / tau
        per_row.append(-(positive - math.log(math.exp(positive) + math.exp(negative))))
    assert cos(z[0].tolist(), z_glob[0].tolist()) == pytest.approx(3 / math.sqrt(15))
    expected = sum(per_row) / 2
    assert float(model_contrastive_loss(z, z_glob, z_prev, tau)) == pytest.approx(expected, abs=1e-6)
    # the positive equal to the negative: -log(1/2), whatever the temperature
    assert float(model_contrastive_loss(z, z_glob, z_glob, 3.0)) == pytest.approx(math.log(2), abs=1e-6)


# ----------------------------------------------------------------------------- the strategy


def test_moon_is_selectable_by_name_and_sends_mu_and_temperature() -> None:
    from flwr.app import ArrayRecord, ConfigRecord

    from fedsim.core.loop import ClientGrid

    assert strategy_arguments("moon") == ["mu", "temperature", "weighted_by_key"]
    strategy = build_strategy("moon", {"mu": 5})
    assert isinstance(strategy, Moon) and (strategy.mu, strategy.temperature) == (5.0, 0.5)
    assert stream_weight_key(strategy) == "num-examples"  # FedAvg's weighted mean: workers may stream it
    messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), ClientGrid([0, 1])))
    assert len(messages) == 2
    config = messages[0].content["config"]
    assert (config[MOON_MU], config[MOON_TEMPERATURE]) == (5.0, 0.5)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"tau": 1}, "strategy 'moon' has no argument(s) tau; allowed: mu, temperature, weighted_by_key"),
    ({"mu": -1}, "strategy 'moon': mu = -1 must be >= 0"),
    ({"temperature": 0}, "strategy 'moon': temperature = 0 must be a number > 0"),
    ({"mu": "high"}, "strategy 'moon': mu = 'high' must be a number"),
])
def test_wrong_arguments_are_refused_with_the_rule(kwargs: dict, fragment: str) -> None:
    with pytest.raises(StrategyError) as error:
        build_strategy("moon", kwargs)
    assert fragment in str(error.value)


def test_compare_runs_moon_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_train=200", "--set",
                "data.synthetic_test=50", "--set", "partition.num_clients=4", "--set", "train.rounds=1", "--set",
                "executor.kind=in-process", "--set", "output.figures=false", "--no-progress"]
    code = main(["compare", "--strategies", "fedavg,moon:tau=1", "-o", str(tmp_path / "bad"), *settings])
    err = capsys.readouterr().err
    assert code == 2 and "strategy 'moon' has no argument(s) tau; allowed: mu, temperature" in err, err
    assert not (tmp_path / "bad").exists()
    code = main(["compare", "--strategies", "moon:mu=5", "-o", str(tmp_path / "out"), "--name", "cmp", *settings])
    assert code == 0
    summary = pd.read_csv(tmp_path / "out" / "cmp" / "summary.csv")
    assert summary["status"].tolist() == ["ok"]


def test_mixed_architectures_are_refused(small_config) -> None:
    with pytest.raises(ConfigError) as error:
        small_config(**{"strategy.name": "moon", "model.architectures": ["lenet5", "niid_cnn"]})
    assert "model.architectures" in str(error.value) and "'moon' averages weights" in str(error.value)


# ----------------------------------------------------------------------------- real runs


def final_model(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "final_model.pt")


def hook_stats(folder: Path, metric: str) -> pd.DataFrame:
    table = pd.read_csv(folder / "hooks.csv")
    return table[(table["hook"] == "moon") & (table["metric"] == metric)].set_index(["round", "client_id"])["value"]


def test_mu_zero_is_fedavg_bit_for_bit_and_round_one_is_fedavg_for_any_mu(small_config) -> None:
    config = small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "output.name": "cmp"})
    runs = compare(config, ["fedavg", "moon:mu=0", "moon:mu=5"], progress=False).path / "runs"
    fedavg, mu0, mu5 = runs / "fedavg-s0", runs / "moon_mu=0-s0", runs / "moon_mu=5-s0"
    # mu = 0: the term is computed in round 2 (every client has a previous model), times 0
    assert (hook_stats(mu0, "has_previous").loc[2] == 1).all()
    assert (hook_stats(mu0, "mean_contrastive_loss").loc[2] > 0).all()
    assert (hook_stats(mu0, "mean_contrastive_loss").loc[1] == 0).all()
    left, right = final_model(fedavg), final_model(mu0)
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    rounds = pd.read_csv(fedavg / "rounds.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(pd.read_csv(mu0 / "rounds.csv").drop(columns="wall_seconds"), rounds,
                                  check_exact=True)
    # mu = 5: round 1 has no previous model (l_con = 0): FedAvg's round; round 2 is not
    moon = pd.read_csv(mu5 / "rounds.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(moon.iloc[:2], rounds.iloc[:2], check_exact=True)
    assert moon.loc[2, "test_loss"] != rounds.loc[2, "test_loss"]
    assert (hook_stats(mu5, "has_previous").loc[1] == 0).all()
    assert not (runs / "fedavg-s0" / CLIENT_STATE).exists()


def test_the_previous_model_is_kept_per_client_and_read_the_next_time_it_trains(small_config) -> None:
    # one client per round: the round's global model is that client's trained model
    config = small_config(**{"strategy.name": "moon", "train.rounds": 4, "train.clients_per_round": 1,
                             "partition.num_clients": 3, "evaluation.federated_every": 0})
    result = run(config, progress=False)
    clients = pd.read_csv(result.path / "clients.csv")
    trained = clients[clients["phase"] == "train"].sort_values("round")["client_id"].tolist()
    stored = sorted(int(p.stem) for p in (result.path / CLIENT_STATE / NAMESPACE).glob("*.pt"))
    assert stored == sorted(set(trained))
    last = torch.load(result.path / CLIENT_STATE / NAMESPACE / f"{trained[-1]}.pt")
    final = final_model(result.path)
    assert all(torch.equal(last[k], final[k]) for k in final)  # saved after training: the client's own weights
    has_previous = hook_stats(result.path, "has_previous")
    for server_round, client in enumerate(trained, start=1):
        assert has_previous.loc[(server_round, client)] == float(client in trained[: server_round - 1])
    assert 0 < has_previous.sum() < len(trained), f"the draw {trained} should repeat a client and have a new one"


@pytest.mark.slow  # keeps the fast set under a minute
def test_an_interrupted_moon_run_resumes_bitwise_identical(small_config) -> None:
    from interrupting import StopAfter, same_results

    # stopped after round 3 with the checkpoint at round 2: round 3's previous models must be rolled back
    settings = {"strategy.name": "moon", "strategy.kwargs.mu": 5.0, "train.rounds": 4, "output.checkpoint_every": 2,
                "train.fraction_train": 0.5, "partition.num_clients": 6, "data.synthetic_train": 300,
                "evaluation.federated_every": 0}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(3)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
    pd.testing.assert_frame_equal(pd.read_csv(result.path / "hooks.csv"), pd.read_csv(reference.path / "hooks.csv"),
                                  check_exact=True)


@pytest.mark.slow  # keeps the fast set under a minute
def test_the_vectorized_engine_trains_moon_clients_one_by_one_and_says_so(small_config) -> None:
    settings = {"strategy.name": "moon", "train.rounds": 2, "evaluation.federated_every": 0}
    vectorized = run(small_config(**settings, **{"engine.kind": "vectorized", "output.name": "vec"}), progress=False)
    sequential = run(small_config(**settings, **{"output.name": "seq"}), progress=False)
    engines = vectorized.clients[vectorized.clients["phase"] == "train"]["engine"]
    assert set(engines) == {ENGINE_LABELS[TrainingEngine.FALLBACK_CONTRASTIVE]}
    left, right = final_model(vectorized.path), final_model(sequential.path)
    assert all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.slow  # keeps the fast set under a minute
def test_results_are_the_same_in_process_and_on_two_streaming_cohort_workers(small_config) -> None:
    from test_cohort import run_on_cohort

    settings = {"strategy.name": "moon", "train.rounds": 2, "train.fraction_train": 0.7,
                "evaluation.federated_every": 0}
    reference = run(small_config(**settings, **{"output.name": "in-process"}), progress=False)
    config = small_config(**settings, **{"output.name": "cohort", "executor.kind": "cohort", "executor.streaming": True})
    rounds, clients, _, executor, _ = run_on_cohort(config, 2)
    assert executor.stream_key == "num-examples"  # the workers sent partial means
    # streamed partial means are summed in another order: equal to float rounding, not bit for bit
    pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"),
                                  check_exact=False, rtol=1e-5)
    pd.testing.assert_frame_equal(clients.drop(columns="seconds"), reference.clients.drop(columns="seconds"),
                                  check_exact=False, rtol=1e-5)
