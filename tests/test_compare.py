"""``fedsim compare``: every strategy end to end on identical data; failures and bad specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.frontends.cli import main
from fedsim.frontends.comparison import compare, parse_strategies
from fedsim.config import ConfigError
from fedsim.runs.experiment import run
from fedsim.strategies import STRATEGY_NAMES, StrategyError
from fedsim.strategies import STRATEGIES, AsynchronousStrategy

DP_ARGS = {
    "dp-fixed-server": ":noise_multiplier=0.001:clipping_norm=50.0",
    "dp-fixed-client": ":noise_multiplier=0.001:clipping_norm=50.0",
    "dp-adaptive-server": ":noise_multiplier=0.001",
    "dp-adaptive-client": ":noise_multiplier=0.001",
}


@pytest.mark.slow
def test_every_strategy_runs_on_identical_partition_init_and_sampling(small_config, tmp_path: Path) -> None:
    # every synchronous weight-averaging strategy (latent-distill needs r, and the asynchronous ones a
    # simulated clock and their own sampling: each has its own end-to-end tests)
    specs = [name + DP_ARGS.get(name, "") for name in STRATEGY_NAMES
             if name != "latent-distill" and not issubclass(STRATEGIES[name].cls, AsynchronousStrategy)]
    specs += ["fedprox:proximal_mu=0.1", "centralized", "bulyan:num_malicious_nodes=2"]
    config = small_config(**{"partition.num_clients": 6, "data.synthetic_train": 360,
                             "train.rounds": 2, "train.fraction_train": 0.5,
                             "evaluation.federated_every": 0, "output.name": "all",
                             "output.figures": True})
    result = compare(config, specs, target=0.01, progress=False)
    summary = result.summary.set_index("strategy")

    # the impossible Bulyan setting (needs n >= 4f + 3 = 11 clients per round) fails alone
    assert summary.loc["bulyan:num_malicious_nodes=2", "status"] == "failed"
    assert "returned no aggregate" in summary.loc["bulyan:num_malicious_nodes=2", "error"]
    ok = summary.drop(index="bulyan:num_malicious_nodes=2")
    assert (ok["status"] == "ok").all(), ok[ok["status"] != "ok"]["error"].to_dict()
    assert ok["final_accuracy"].notna().all()
    assert (ok.drop(index="centralized")["total_mb"] > 0).all()
    assert ok.loc["centralized", "total_mb"] == 0

    runs = result.path / "runs"
    assert not (runs / "fedavg-s0" / "figures").exists(), "the comparison draws the figures, not each run"
    reference = np.load(runs / "fedavg-s0" / "partition.npz")
    ref_clients = pd.read_csv(runs / "fedavg-s0" / "clients.csv")
    ref_rounds = pd.read_csv(runs / "fedavg-s0" / "rounds.csv")
    for label in ok.index:
        folder = runs / summary.loc[label, "run_dir"].split("/")[-1]
        partition = np.load(folder / "partition.npz")
        for key in reference.files:
            np.testing.assert_array_equal(partition[key], reference[key], err_msg=f"{label}: {key}")
        rounds = pd.read_csv(folder / "rounds.csv")
        assert rounds.loc[0, "test_accuracy"] == pytest.approx(ref_rounds.loc[0, "test_accuracy"]), \
            f"{label} started from other initial weights"
        if label != "centralized":
            assert (rounds.loc[1:, "bytes_up"] > 0).all(), f"{label}: uploads not counted"
            clients = pd.read_csv(folder / "clients.csv")
            train = clients[clients["phase"] == "train"][["round", "client_id"]].reset_index(drop=True)
            ref = ref_clients[ref_clients["phase"] == "train"][["round", "client_id"]].reset_index(drop=True)
            pd.testing.assert_frame_equal(train, ref, obj=f"{label} sampled other clients")

    tidy = pd.read_csv(result.path / "tidy.csv")
    assert list(tidy.columns) == ["strategy", "seed", "round", "metric", "value"]
    assert {"test_accuracy", "cumulative_mb"} <= set(tidy["metric"])
    assert set(tidy["strategy"]) == set(ok.index)
    by_strategy = pd.read_csv(result.path / "summary_by_strategy.csv")
    assert by_strategy.set_index("strategy").loc["bulyan:num_malicious_nodes=2", "runs_failed"] == 1
    assert "rounds_to_target_mean" in by_strategy
    for figure in ("accuracy_vs_round.png", "accuracy_vs_mb.png", "confusion_matrices.png"):
        assert (result.path / "figures" / figure).stat().st_size > 5000


def test_seeds_are_compared_with_bands(small_config) -> None:
    config = small_config(**{"partition.num_clients": 4, "data.synthetic_train": 240, "train.rounds": 1,
                             "evaluation.federated_every": 0, "output.name": "seeds"})
    result = compare(config, "fedavg,uniform", seeds=[0, 1], progress=False)
    assert sorted(result.summary["seed"].unique()) == [0, 1]
    row = result.by_strategy.set_index("strategy").loc["fedavg"]
    assert row["runs_ok"] == 2 and np.isfinite(row["final_accuracy_std"])
    # different seeds: different partitions
    a = np.load(result.path / "runs" / "fedavg-s0" / "partition.npz")["train_indices"]
    b = np.load(result.path / "runs" / "fedavg-s1" / "partition.npz")["train_indices"]
    assert not np.array_equal(a, b)


def test_bad_strategy_specs_are_refused_before_anything_is_written(small_config, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StrategyError, match="unknown strategy 'fedfoo' in 'fedfoo'; allowed: fedavg"):
        parse_strategies("fedavg,fedfoo")
    with pytest.raises(StrategyError, match="strategies listed twice"):
        parse_strategies("fedavg,fedavg")
    with pytest.raises(StrategyError, match="centralized baseline takes no arguments"):
        parse_strategies("centralized:lr=1")
    config = small_config(**{"output.name": "never"})
    with pytest.raises(ConfigError, match="(?s)strategy 'ema:gamma=2'.*has no argument.s. gamma"):
        compare(config, "fedavg,ema:gamma=2", progress=False)
    assert not (tmp_path / "runs").exists()
    code = main(["compare", "--strategies", "fedavg,krum:f=1", "-o", str(tmp_path / "cli")])
    assert code == 2
    assert "strategy 'krum' has no argument(s) f; allowed: num_malicious_nodes" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    code = main(["compare", "--strategies", "fedavg", "--seeds", "0,x", "-o", str(tmp_path / "cli")])
    assert code == 2 and "--seeds '0,x'" in capsys.readouterr().err


def test_one_shot_evaluates_every_client_model(small_config) -> None:
    config = small_config(**{"train.mode": "one-shot", "train.rounds": 1, "train.local_epochs": 2,
                             "strategy.name": "ema", "strategy.kwargs.beta": 0.5,
                             "evaluation.federated_every": 0, "output.name": "oneshot"})
    result = run(config, progress=False)
    local = result.clients[result.clients["phase"] == "local-test"]
    assert sorted(local["client_id"]) == list(range(10))
    assert (local["num_examples"] == 200).all() and local["accuracy"].between(0, 1).all()
    assert result.rounds["round"].tolist() == [0, 1]
    assert result.summary["strategy"] == "ema-oneshot"


def test_compare_tabulates_and_plots_hook_statistics(small_config) -> None:
    config = small_config(**{"output.figures": True, "partition.num_clients": 4, "data.synthetic_train": 240, "train.rounds": 2,
                             "evaluation.federated_every": 0, "output.name": "hooked",
                             "hooks": [{"name": "select", "rho": 0.5}]})
    result = compare(config, "fedavg,uniform", progress=False)
    fractions = result.tidy[result.tidy["metric"] == "hook.select.fraction"]
    assert len(fractions) == 4  # 2 strategies x 2 rounds
    assert fractions["value"].between(0.45, 0.55).all()
    assert (result.path / "figures" / "hook_stats.png").stat().st_size > 5000


def test_weight_averaging_entries_use_one_architecture_next_to_latent_distill(small_config) -> None:
    config = small_config(**{"strategy.name": "latent-distill", "model.representation_dim": 8,
                             "model.architectures": ["lenet5", "niid_cnn"]})
    distill, fedavg, central = parse_strategies("latent-distill,fedavg,centralized")
    assert distill.apply(config, 0).model.architectures == ["lenet5", "niid_cnn"]
    assert fedavg.apply(config, 0).model.architectures == []
    assert central.apply(config, 0).train.mode == "centralized"
    from fedsim.config.validation import validate

    validate(fedavg.apply(config, 0))  # a valid homogeneous FedAvg run
