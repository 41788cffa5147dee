"""Runs that go nowhere say so: rounds without clients, the size of a comparison, a transfer set
drawn from the clients' own data."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import fedsim.frontends.comparison as comparison
from fedsim.datasets.transfer import shared_images
from fedsim.frontends.cli import main
from fedsim.outputs.rounds_without_clients import NoClientAggregatedWarning
from fedsim.runs.prepare import prepare

# a tiny synthetic run (as tests/conftest.py's small_config) for the command line
TINY = {"data.dataset": '"synthetic"', "data.synthetic_train": 240, "data.synthetic_test": 100,
        "partition.num_clients": 4, "partition.scheme": '"dirichlet"', "partition.min_partition_size": 5,
        "model.name": '"lenet5"', "train.rounds": 1, "train.batch_size": 16, "evaluation.federated_every": 0,
        "executor.kind": '"in-process"', "output.figures": "false"}
NOBODY_IN_TIME = {"time.devices.kind": "tiers", "time.policy.deadline": 1e-6, "train.rounds": 2,
                  "train.clients_per_round": 10, "evaluation.federated_every": 0}
DEADLINE_REASON = "missed the 1e-06 s deadline (time.policy.deadline)"


def settings(**values: object) -> list[str]:
    """``--set`` options for the tiny run, with ``values`` (TOML text) on top."""
    return [item for key, value in {**TINY, **values}.items() for item in ("--set", f"{key}={value}")]


# ---------------------------------------------------------------------- rounds that aggregate no client


def no_client_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, NoClientAggregatedWarning)]


def test_a_deadline_no_client_meets_warns_once_and_counts_the_rounds(small_config) -> None:
    from fedsim import run

    with pytest.warns(NoClientAggregatedWarning) as record:
        result = run(small_config(**NOBODY_IN_TIME, **{"output.name": "nowhere"}), progress=False)
    messages = no_client_warnings(record.list)
    per_round = [m for m in messages if "round 1 aggregated no client" in m or "round 2 aggregated" in m]
    assert per_round == [f"run nowhere: round 1 aggregated no client: 10 selected, 10 {DEADLINE_REASON}; "
                         "the model did not change"]  # once, though both rounds aggregated nobody
    assert f"run nowhere: 2 of 2 rounds aggregated no client: every selected client {DEADLINE_REASON}" in messages
    assert len(messages) == 2
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["rounds_without_clients"] == 2
    assert summary["rounds_without_clients_causes"] == {f"every selected client {DEADLINE_REASON}": 2}


def test_the_command_line_ends_a_run_that_went_nowhere_with_a_summary_line(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", *settings(**{**NOBODY_IN_TIME, "train.clients_per_round": 4}), "-o", str(tmp_path),
                 "--name", "idle", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "aggregated no client" in line]
    assert lines == [f"fedsim: warning: run idle: round 1 aggregated no client: 4 selected, 4 {DEADLINE_REASON}; "
                     "the model did not change",
                     f"fedsim: warning: run idle: 2 of 2 rounds aggregated no client: every selected client "
                     f"{DEADLINE_REASON}"]
    assert json.loads((tmp_path / "idle" / "summary.json").read_text())["rounds_without_clients"] == 2


def test_a_run_whose_rounds_aggregate_clients_gives_no_such_warning(small_config) -> None:
    from fedsim import run

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = run(small_config(**{"train.rounds": 1, "evaluation.federated_every": 0, "data.synthetic_train": 240,
                                     "partition.num_clients": 4, "output.name": "fine"}), progress=False)
    assert no_client_warnings(record) == []
    assert "rounds_without_clients" not in result.summary


# ---------------------------------------------------------------------- the size of a comparison


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comparisons of more than 2 runs ask first; stdin is no terminal."""
    monkeypatch.setattr(comparison, "CONFIRM_ABOVE", 2)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


THREE_RUNS = ["compare", "--strategies", "fedavg", "--grid", "train.lr=[0.01,0.05,0.1]", *settings(), "--no-progress"]


def test_a_large_comparison_without_a_terminal_needs_yes(small_limit, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*THREE_RUNS, "-o", str(tmp_path / "out"), "--name", "big"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "3 runs: 1 strategy x 1 seed x 3 grid cells" in captured.out  # the count comes first
    assert "compare: 3 runs: 1 strategy x 1 seed x 3 grid cells, more than 2" in captured.err
    assert "pass --yes to start them" in captured.err
    assert not (tmp_path / "out").exists()


def test_with_yes_it_starts_and_estimates_the_rest_after_the_first_run(small_limit, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*THREE_RUNS, "-o", str(tmp_path / "out"), "--name", "big", "--yes"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out.splitlines()
    assert out[0] == "3 runs: 1 strategy x 1 seed x 3 grid cells"
    estimate = [line for line in out if line.startswith("first run took ")]
    assert len(estimate) == 1 and estimate[0].endswith(" for the other 2")
    # said when the first run has finished: after its "==" line, before the second's
    starts = [i for i, line in enumerate(out) if line.startswith("== fedavg")]
    assert len(starts) == 3 and starts[0] < out.index(estimate[0]) < starts[1]
    assert (tmp_path / "out" / "big" / "summary.csv").is_file()


def test_a_large_comparison_declined_on_a_terminal_writes_nothing(small_limit, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code = main([*THREE_RUNS, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Start them? [y/N]" in err and "not started" in err
    assert not (tmp_path / "out").exists()


def test_the_python_api_asks_only_through_its_callback(small_limit, small_config, tmp_path: Path) -> None:
    config = small_config(**{"train.rounds": 1, "output.dir": str(tmp_path / "api"), "output.name": "asked"})
    asked: list[str] = []
    with pytest.raises(comparison.RunsNotConfirmed, match="not started"):
        comparison.compare(config, "fedavg,uniform,fedavgm", progress=False,
                           confirm=lambda text: asked.append(text) or False)
    assert asked == ["3 runs: 3 strategies x 1 seed"]
    assert not (tmp_path / "api").exists()


# ---------------------------------------------------------------------- a transfer set from the clients' data


def write_images(path: Path, seed: int, n_train: int = 300) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % 10, x_test=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(50) % 10)
    return path


def distill_settings(data: Path, transfer: Path) -> list[str]:
    return settings(**{"data.dataset": '"npz"', "data.path": f'"{data}"', "strategy.name": '"latent-distill"',
                       "model.representation_dim": 16, "latent_distill.transfer_size": 60,
                       "latent_distill.transfer_dataset": '"npz"', "latent_distill.transfer_path": f'"{transfer}"'})


@pytest.mark.parametrize("transfer", ["own.npz", "renamed.npz"])
def test_a_transfer_set_from_the_clients_own_file_is_refused(transfer: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    own = write_images(tmp_path / "own.npz", seed=0)
    shutil.copyfile(own, tmp_path / "renamed.npz")
    code = main(["run", *distill_settings(own, tmp_path / transfer), "-o", str(tmp_path / "out"), "--name", "leak"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"latent_distill.transfer_dataset = 'npz' ({tmp_path / transfer})" in err
    assert f"data.dataset = 'npz' ({own})" in err
    assert "60 of its 60 transfer images are also clients' images" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_disjoint_transfer_set_from_another_file_is_accepted(small_config, tmp_path: Path) -> None:
    own, public = write_images(tmp_path / "own.npz", seed=0), write_images(tmp_path / "public.npz", seed=1)
    config = small_config(**{"data.dataset": "npz", "data.path": str(own), "strategy.name": "latent-distill",
                             "model.representation_dim": 16, "latent_distill.transfer_size": 60,
                             "latent_distill.transfer_dataset": "npz", "latent_distill.transfer_path": str(public),
                             "output.name": "public"})
    prepared = prepare(config)
    assert (prepared.staging / "transfer.npz").is_file()


def test_shared_images_counts_exact_copies_only() -> None:
    rng = np.random.default_rng(0)
    private = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    transfer = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    transfer[[1, 4, 7]] = private[[5, 0, 39]]
    transfer[2] = private[6] ^ np.uint8(1)  # one bit differs: not the same image
    assert shared_images(transfer, np.arange(10), private, np.arange(40)) == 3
    assert shared_images(transfer, np.arange(10), private, np.arange(1, 39)) == 1  # 0 and 39 are no client's
    assert shared_images(transfer.astype(np.int16), np.arange(10), private, np.arange(40)) == 0
