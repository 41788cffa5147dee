"""End to end: the run directory, failures, and the Flower (Ray) executor against the in-process one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedsim.runs.experiment import run
from fedsim.core.sampling import TRAIN, sample_clients
from fedsim.core.screening import TooFewClientsError


@pytest.mark.ray
def test_run_directory_is_complete_accuracy_rises_and_sampling_reproduces(small_config) -> None:
    config = small_config(**{"train.fraction_train": 0.5, "output.name": "first", "executor.kind": "flower",
                             "output.figures": True})
    result = run(config, progress=False)
    folder = result.path
    for name in ("config.toml", "spec.json", "partition.npz", "partition_counts.csv", "rounds.csv",
                 "clients.csv", "summary.json", "confusion_matrix.csv", "final_model.pt",
                 "figures/accuracy.png", "figures/loss.png", "figures/label_distribution.png"):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".first.staging-*")), "staging folder was published"

    rounds = result.rounds
    assert rounds["round"].tolist() == [0, 1, 2, 3]
    assert (rounds.loc[1:, "clients_sampled"] == 5).all()
    assert (rounds.loc[1:, "bytes_up"] > 0).all() and (rounds.loc[1:, "bytes_down"] > 0).all()
    final = rounds["test_accuracy"].iloc[-1]
    assert final > 0.3, f"accuracy {final} not above chance (0.1)"
    assert final > rounds["test_accuracy"].iloc[0]
    assert rounds[["test_precision", "test_recall", "test_f1", "fed_eval_accuracy"]].iloc[-1].notna().all()

    train_rows = result.clients[result.clients["phase"] == "train"]
    for r in (1, 2, 3):
        ids = sorted(train_rows.loc[train_rows["round"] == r, "client_id"])
        assert ids == sample_clients(config.seed, r, TRAIN, 10, 5), "server sampled by seeded partition id"
    assert (train_rows["status"] == "ok").all()
    assert train_rows["num_examples"].sum() > 0

    assert int(result.confusion_matrix.to_numpy().sum()) == 200  # rows = true labels of the test set
    assert result.summary["final_test_accuracy"] == pytest.approx(final)
    assert json.loads((folder / "summary.json").read_text())["client_failures"] == 0

    # the in-process executor gives the same run, bit for bit (same threads per client as a Ray worker)
    again = run(small_config(**{"train.fraction_train": 0.5, "output.name": "second"}), progress=False)
    pd.testing.assert_series_equal(again.clients["client_id"], result.clients["client_id"])
    pd.testing.assert_frame_equal(again.rounds.drop(columns="wall_seconds"), rounds.drop(columns="wall_seconds"))
    pd.testing.assert_frame_equal(again.clients.drop(columns="seconds"), result.clients.drop(columns="seconds"))


def test_failing_clients_are_recorded_and_the_round_continues(small_config) -> None:
    config = small_config(**{"train.rounds": 2, "faults.fail_clients": [2, 5],
                             "evaluation.federated_every": 0, "output.name": "flaky", "output.format": "parquet"})
    result = run(config, progress=False)
    assert (result.path / "rounds.parquet").is_file() and (result.path / "clients.parquet").is_file()
    assert not (result.path / "rounds.csv").exists()
    failed = result.clients[result.clients["status"] == "failed"]
    assert sorted(set(failed["client_id"])) == [2, 5]
    assert len(failed) == 4  # two clients x two rounds
    assert failed["error"].str.contains("failed on purpose").all()
    assert (result.rounds.loc[1:, "clients_succeeded"] == 8).all()
    assert result.summary["client_failures"] == 4


def test_too_many_failures_stop_with_a_clear_error_and_no_result(small_config, tmp_path: Path) -> None:
    config = small_config(**{"train.rounds": 2, "faults.fail_clients": list(range(1, 10)),
                             "output.name": "broken"})
    with pytest.raises(TooFewClientsError, match=r"round 1: only 1 of 10 sampled clients succeeded"):
        run(config, progress=False)
    runs = tmp_path / "runs"
    assert not (runs / "broken").exists()
    assert "TooFewClientsError" in (runs / "broken.failed" / "error.txt").read_text()


@pytest.mark.ray
def test_flower_executor_records_failures_like_the_in_process_one(small_config) -> None:
    failing = sample_clients(0, 1, TRAIN, 10, 4)[0]  # sampled in round 1
    overrides = {"train.rounds": 2, "faults.fail_clients": [failing], "train.clients_per_round": 4,
                 "evaluation.federated_every": 0, "hooks": [{"name": "crucial", "committee": "peers", "k": 2, "theta": 1}]}
    on_ray = run(small_config(**overrides, **{"output.name": "ray", "executor.kind": "flower"}), progress=False)
    local = run(small_config(**overrides, **{"output.name": "local"}), progress=False)
    pd.testing.assert_frame_equal(on_ray.rounds.drop(columns="wall_seconds"), local.rounds.drop(columns="wall_seconds"))
    failed = on_ray.clients[on_ray.clients["status"] == "failed"]
    assert len(failed) >= 1 and set(failed["client_id"]) == {failing}
    assert failed["error"].str.contains(f"client {failing} failed on purpose").all()
    same = ["round", "phase", "client_id", "status", "num_examples", "loss", "accuracy"]  # error texts: Ray adds its trace
    pd.testing.assert_frame_equal(on_ray.clients[same], local.clients[same])


@pytest.mark.ray
def test_cohort_workers_on_an_existing_ray_cluster(small_config) -> None:
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    ray_cli = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as probe:  # a free port on this machine for the head
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                              f"--temp-dir={ray_dir}", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        overrides = {"train.rounds": 2, "train.fraction_train": 0.5}
        on_cluster = run(small_config(**overrides, **{"output.name": "cluster", "executor.kind": "cohort",
                                                      "executor.workers": 2,
                                                      "runtime.ray_address": f"127.0.0.1:{port}"}), progress=False)
        local = run(small_config(**overrides, **{"output.name": "local"}), progress=False)
        pd.testing.assert_frame_equal(on_cluster.rounds.drop(columns="wall_seconds"),
                                      local.rounds.drop(columns="wall_seconds"))
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(ray_dir, ignore_errors=True)
