"""``fedsim compare --grid``: sweeps over config keys x strategies x seeds on identical data per cell."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.frontends.cli import main
from fedsim.frontends.comparison import compare, grid_cells, parse_grid
from fedsim.config import ConfigError
from fedsim.outputs.plots import plot_sweep, sweep_axis

TINY = {"partition.num_clients": 4, "data.synthetic_train": 240, "data.synthetic_test": 100, "train.rounds": 1,
        "evaluation.federated_every": 0}


@pytest.mark.slow  # keeps the fast set under a minute
def test_alpha_sweep_tables_partitions_and_figures(small_config) -> None:
    config = small_config(**TINY, **{"output.name": "sweep", "output.figures": True})
    result = compare(config, "fedavg,uniform", seeds=[0, 1], grid={"partition.alpha": [0.1, 1.0]}, progress=False)
    assert result.grid == {"partition.alpha": [0.1, 1.0]}

    # the tidy per-run table: one row per (cell, strategy, seed), grid keys first, values from each run
    summary = pd.read_csv(result.path / "summary.csv")
    assert list(summary.columns[:3]) == ["partition.alpha", "strategy", "seed"]
    assert len(summary) == 8 and (summary["status"] == "ok").all(), summary["error"].tolist()
    assert sorted(map(tuple, summary[["partition.alpha", "strategy", "seed"]].to_numpy().tolist())) == sorted(
        (a, s, seed) for a in (0.1, 1.0) for s in ("fedavg", "uniform") for seed in (0, 1))
    for _, row in summary.iterrows():
        folder = result.path / row["run_dir"]
        assert folder.parent.name == f"partition.alpha={row['partition.alpha']}"
        run_config = tomllib.loads((folder / "config.toml").read_text())
        assert run_config["partition"]["alpha"] == row["partition.alpha"]
        assert run_config["strategy"]["name"] == row["strategy"] and run_config["seed"] == row["seed"]
        accuracy = pd.read_csv(folder / "rounds.csv")["test_accuracy"].dropna()
        assert row["final_accuracy"] == pytest.approx(accuracy.iloc[-1])
        assert row["best_accuracy"] == pytest.approx(accuracy.max())
    tidy = pd.read_csv(result.path / "tidy.csv")
    assert list(tidy.columns) == ["partition.alpha", "strategy", "seed", "round", "metric", "value"]
    final_round = tidy[(tidy["metric"] == "test_accuracy") & (tidy["round"] == 1)]
    merged = final_round.merge(summary, on=["partition.alpha", "strategy", "seed"])
    np.testing.assert_allclose(merged["value"], merged["final_accuracy"])

    # mean and std (ddof 1) over the seeds, per (cell, strategy)
    by_cell = pd.read_csv(result.path / "summary_by_strategy.csv")
    assert list(by_cell.columns[:4]) == ["partition.alpha", "strategy", "runs_ok", "runs_failed"]
    assert len(by_cell) == 4 and (by_cell["runs_ok"] == 2).all()
    for _, row in by_cell.iterrows():
        runs = summary[(summary["partition.alpha"] == row["partition.alpha"]) & (summary["strategy"] == row["strategy"])]
        values = runs["final_accuracy"].to_numpy()
        assert row["final_accuracy_mean"] == pytest.approx(values.mean())
        assert row["final_accuracy_std"] == pytest.approx(np.std(values, ddof=1))
        assert row["best_accuracy_mean"] == pytest.approx(runs["best_accuracy"].mean())

    # identical partitions within a cell (for a seed), different across alphas
    def partition(alpha: float, strategy: str, seed: int) -> dict[str, np.ndarray]:
        run_dir = summary[(summary["partition.alpha"] == alpha) & (summary["strategy"] == strategy)
                          & (summary["seed"] == seed)]["run_dir"].iloc[0]
        with np.load(result.path / run_dir / "partition.npz") as data:
            return {key: data[key] for key in data.files}

    for alpha in (0.1, 1.0):
        for seed in (0, 1):
            reference, other = partition(alpha, "fedavg", seed), partition(alpha, "uniform", seed)
            for key in reference:
                np.testing.assert_array_equal(other[key], reference[key], err_msg=f"alpha {alpha} seed {seed}: {key}")
    low, high = partition(0.1, "fedavg", 0), partition(1.0, "fedavg", 0)
    assert any(not np.array_equal(low[key], high[key]) for key in low)

    assert json.loads((result.path / "grid.json").read_text()) == {"partition.alpha": [0.1, 1.0]}
    for figure in ("sweep_final_accuracy.png", "sweep_best_accuracy.png", "sweep_total_mb.png",
                   "accuracy_vs_round.png"):
        assert (result.path / "figures" / figure).stat().st_size > 5000, figure
    assert not (result.path / "figures" / "sweep_rounds_to_target.png").exists()  # no target: nothing to draw


def _cli_settings(**extra: object) -> list[str]:
    """``--set`` options for the tiny synthetic run of ``small_config``."""
    settings = {"data.dataset": '"synthetic"', "partition.scheme": '"dirichlet"', "partition.min_partition_size": 5,
                "model.name": '"lenet5"', "train.lr": 0.05, "train.batch_size": 16,
                "executor.kind": '"in-process"', **TINY, **extra}
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


def test_a_failing_cell_makes_the_cli_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # every client of the second cell raises: its run fails, the first cell's still runs
    code = main(["compare", "--strategies", "fedavg", "--grid", "faults.fail_clients=[[],[0,1,2,3]]",
                 *_cli_settings(), "-o", str(tmp_path), "--name", "faults", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "FAILED fedavg (seed 0, faults.fail_clients=[0,1,2,3])" in captured.err
    assert "1 of 2 runs failed" in captured.err
    summary = pd.read_csv(tmp_path / "faults" / "summary.csv").set_index("faults.fail_clients")
    assert summary.loc["[]", "status"] == "ok" and summary.loc["[0,1,2,3]", "status"] == "failed"
    by_cell = pd.read_csv(tmp_path / "faults" / "summary_by_strategy.csv").set_index("faults.fail_clients")
    assert by_cell.loc["[0,1,2,3]", "runs_failed"] == 1 and np.isnan(by_cell.loc["[0,1,2,3]", "final_accuracy_mean"])
    assert "faults.fail_clients" in captured.out  # the printed table has the grid column
    # a categorical grid axis (lists are not numbers): the figures are drawn all the same
    assert (tmp_path / "faults" / "figures" / "sweep_final_accuracy.png").is_file()


@pytest.mark.parametrize(("grid", "message"), [
    ("partition.alpah=[0.1,1.0]", "unknown config key 'partition.alpah': [partition] has the keys scheme"),
    ("partition.alpha=[]", "the list of values is empty"),
    ("partition.alpha=[0.1,", "'[0.1,' is not a valid TOML list"),
    ("partition.alpha=0.5", "0.5 is not a list"),
    ("partition.alpha", "must look like KEY=[VALUE,...]"),
    ("partition.alpha=[0.1,\"x\"]", "partition.alpha = 'x': must be a number"),
    ("partition.alpha=[0.1,0.1]", "values listed twice"),
    ("strategy.kwargs.beta=[0.1,0.5]", "strategy.kwargs.beta cannot be swept"),
    ("seed=[0,1]", "seeds are swept with --seeds"),
    ("partition.alpha=[0.1,-1.0]", "grid cell partition.alpha=-1.0, strategy 'fedavg': "),
])
def test_bad_grid_specs_are_refused_before_anything_is_written(grid: str, message: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", "--strategies", "fedavg", "--grid", grid, *_cli_settings(), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_grid_rules_in_the_python_api(small_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="swept twice"):
        parse_grid(["train.lr=[0.1]", "train.lr=[0.2]"])
    config = small_config(**TINY, **{"output.name": "never"})
    with pytest.raises(ConfigError, match="sets partition.alpha, which the grid sweeps"):
        compare(config, "fedavg,uniform:partition.alpha=0.3", grid={"partition.alpha": [0.1, 1.0]}, progress=False)
    # every cell is validated, not just the first: train.rounds=0 is refused in the second cell
    with pytest.raises(ConfigError, match="grid cell train.lr=0.1, train.rounds=0, strategy 'fedavg'"):
        compare(config, "fedavg", grid=["train.lr=[0.1]", "train.rounds=[1,0]"], progress=False)
    assert not (tmp_path / "runs").exists()
    cells = grid_cells(parse_grid(["partition.alpha=[0.1,1.0]", "model.name=[\"lenet5\",\"niid_cnn\"]"]))
    assert [c.values for c in cells] == [{"partition.alpha": a, "model.name": m}
                                         for a in (0.1, 1.0) for m in ("lenet5", "niid_cnn")]
    assert len({c.folder for c in cells}) == 4
    assert grid_cells({}) == [grid_cells({})[0]] and grid_cells({})[0].folder == ""


def test_sweep_axes_and_panels(tmp_path: Path) -> None:
    assert sweep_axis([0.05, 0.1, 0.5, 1.0]) == ("log", [0.05, 0.1, 0.5, 1.0])
    assert sweep_axis([1, 2, 4]) == ("linear", [1.0, 2.0, 4.0])
    assert sweep_axis([0.0, 1.0, 100.0])[0] == "linear"  # zero cannot go on a log axis
    assert sweep_axis(["lenet5", "niid_cnn"]) == ("categorical", [0.0, 1.0])
    assert sweep_axis([True, False])[0] == "categorical"
    # two grid keys: one panel per value of the second, one line per strategy, a failed cell as a gap
    rows = [{"partition.alpha": a, "train.lr": lr, "strategy": s, "runs_ok": 3,
             "final_accuracy_mean": 0.5 + a / 4 + lr, "final_accuracy_std": 0.02}
            for a in (0.05, 0.5, 5.0) for lr in (0.01, 0.1) for s in ("fedavg", "fedprox")]
    rows[0]["final_accuracy_mean"], rows[0]["final_accuracy_std"] = np.nan, np.nan
    path = plot_sweep(pd.DataFrame(rows), {"partition.alpha": [0.05, 0.5, 5.0], "train.lr": [0.01, 0.1]},
                      "final_accuracy", tmp_path / "two_keys.png", "final test accuracy")
    assert path.stat().st_size > 5000
