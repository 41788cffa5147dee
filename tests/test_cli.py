"""The fedsim command line: clear errors with exit status 2 and nothing written; partition output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.frontends.cli import main


def test_bad_value_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    code = main(["run", "--set", "partition.alpha=-1", "--set", "train.rounds=2", "-o", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "partition.alpha = -1.0: must be > 0" in err
    assert not out.exists()


def test_dataset_problems_exit_2_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    code = main(["run", "--set", "data.dataset=npz", "--set", "data.path=missing.npz",
                 "--data-dir", str(tmp_path), "-o", str(out)])
    assert code == 2
    assert f"npz dataset not found at {tmp_path}/missing.npz" in capsys.readouterr().err
    assert not out.exists()
    code = main(["run", "--set", "partition.num_clients=700", "--set", "data.synthetic_train=600",
                 "-o", str(out)])
    assert code == 2
    assert "partition.num_clients = 700: must be <= the 600 training samples" in capsys.readouterr().err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "runs" / "keep"
    existing.mkdir(parents=True)
    (existing / "precious.txt").write_text("do not touch")
    code = main(["run", "-o", str(tmp_path / "runs"), "--name", "keep"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"run directory {existing} already exists" in err and "--overwrite" in err
    assert (existing / "precious.txt").read_text() == "do not touch"


def test_partition_command_prints_summary_and_saves_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["partition", "--set", "partition.num_clients=20", "--set", "partition.alpha=0.1",
                 "--set", "partition.min_partition_size=0", "-o", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "clients: 20   classes: 10   samples: 2000" in printed
    pngs = list(tmp_path.glob("partition-synthetic-dirichlet-n20-a0.1-s0.png"))
    csvs = list(tmp_path.glob("partition-synthetic-dirichlet-n20-a0.1-s0.csv"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 5000
    assert len(csvs) == 1 and len(csvs[0].read_text().splitlines()) == 21


@pytest.mark.slow  # subprocess runs
def test_console_script_exit_status(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fedsim")
    completed = subprocess.run([str(exe), "run", "--set", "train.lr=-0.1", "-o", str(tmp_path / "r")],
                               capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert completed.returncode == 2
    assert "train.lr = -0.1: must be > 0" in completed.stderr
    assert not (tmp_path / "r").exists()


def test_an_old_config_key_is_one_warning_line_naming_the_new_key(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["partition", "--set", "simulation.executor=in-process", "--set", "time.deadline=0",
                 "-o", str(tmp_path / "partitions")])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    assert "fedsim: warning: config key simulation.executor is deprecated: use executor.kind" in err
    assert "fedsim: warning: config key time.deadline is deprecated: use time.policy.deadline" in err
