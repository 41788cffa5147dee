"""``flwr run .`` end to end: on Flower's simulation engine and on a SuperLink with SuperNodes.

Each test starts its own federation of separate processes (``tests/federation.py``): offline
(the SuperLink runs the app in this environment, ``--disable-runtime-dependency-installation``),
on free ports, in a temporary ``FLWR_HOME``, and stops every process it started on every exit
path (checked: no process of the federation is left). The runs use a small synthetic dataset
and must give the per-round numbers ``fedsim run`` gives for the same config and seed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim import load_config, run
from federation import BIN, PROJECT, LocalFederation

pytestmark = pytest.mark.slow

CONFIG = """
seed = 3
[data]
dataset = "synthetic"
synthetic_train = 480
synthetic_test = 160
[partition]
num_clients = {clients}
alpha = 0.5
[model]
name = "lenet5"
[train]
rounds = {rounds}
batch_size = 32
lr = 0.05
[evaluation]
federated_every = {federated_every}
"""


def write_config(folder: Path, clients: int = 6, rounds: int = 2, federated_every: int = 1) -> Path:
    path = folder / "experiment.toml"
    path.write_text(CONFIG.format(clients=clients, rounds=rounds, federated_every=federated_every))
    return path


def run_config(config: Path, output: Path, *overrides: str) -> str:
    """The ``--run-config`` value: fedsim's config file and overrides (``section.key=value;...``)."""
    joined = ";".join([f'output.dir="{output}"', *overrides])
    return f"config-file='{config}' overrides='{joined}'"


def fedsim_rounds(config: Path, output: Path, *overrides: str) -> pd.DataFrame:
    """The same experiment with ``fedsim run`` (in process: the executor does not change results)."""
    result = run(load_config(config, [f'output.dir="{output}"', "executor.kind=in-process", *overrides]),
                 progress=False)
    return result.rounds


def same_numbers(rounds: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Every per-round column but the wall-clock seconds is equal."""
    pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.drop(columns="wall_seconds"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:  # noqa: ANN001
    """The server's dataset cache (the SuperLink inherits the environment)."""
    folder = tmp_path / "server-cache"
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(folder))
    return folder


@pytest.mark.ray
def test_flwr_run_on_the_simulation_engine_with_any_node_count_equals_fedsim_run(tmp_path, cache) -> None:  # noqa: ANN001
    config = write_config(tmp_path)
    federation = LocalFederation(tmp_path / "flwr-home", simulation=True)
    with federation:
        sized = federation.flwr("federation", "simulation-config", "@none/default", "test", "--num-supernodes", "3")
        assert sized.returncode == 0, sized.stdout
        folder = federation.run_app(run_config(config, tmp_path / "runs"))
    assert federation.leftovers() == []
    assert folder.parent == tmp_path / "runs" and (folder / "summary.json").is_file()
    same_numbers(pd.read_csv(folder / "rounds.csv"), fedsim_rounds(config, tmp_path / "reference"))
    workers = pd.read_csv(folder / "workers.csv")
    assert sorted(set(workers["worker"])) == [0, 1, 2], "every simulated SuperNode is a worker"
    assert (workers.groupby(["round", "phase"])["clients"].sum() == 6).all()


def test_superlink_and_supernodes_with_their_own_data_equal_fedsim_run(tmp_path, cache) -> None:  # noqa: ANN001
    config = write_config(tmp_path)
    federation = LocalFederation(tmp_path / "flwr-home")
    with federation:
        for k in range(2):
            federation.add_node(f"node{k}", f"partition-id={k} num-partitions=2 data-dir='{tmp_path / f'node{k}'}'")
        folder = federation.run_app(run_config(config, tmp_path / "runs"))
    assert federation.leftovers() == []
    same_numbers(pd.read_csv(folder / "rounds.csv"), fedsim_rounds(config, tmp_path / "reference"))
    clients = pd.read_csv(folder / "clients.csv")
    assert (clients["status"] == "ok").all() and len(clients) == 2 * 2 * 6  # 2 rounds x (train, evaluate) x 6
    workers = pd.read_csv(folder / "workers.csv")
    assert (workers.groupby("worker")["clients"].first() == 3).all(), "shard k hosts clients k, k+2, k+4"
    for k in range(2):  # each node prepared the dataset itself and keeps its copy of the run
        node = tmp_path / f"node{k}"
        assert len(list((node / "cache").iterdir())) == 1
        (copy,) = (node / "runs").iterdir()
        assert {p.name for p in copy.iterdir()} >= {"spec.json", "config.toml", "partition.npz"}


def wait_for_round(runs: Path, server_round: int, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until the run being written under ``runs`` has finished ``server_round``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        for table in runs.glob(".*staging*/rounds.csv"):
            rows = pd.read_csv(table)
            if len(rows) and rows["round"].max() >= server_round:
                return
        time.sleep(0.5)
    raise AssertionError(f"round {server_round} did not finish within {seconds:.0f} s")


def test_nodes_that_join_late_or_leave_are_counted_as_failed_clients(tmp_path, cache) -> None:  # noqa: ANN001
    config = write_config(tmp_path, clients=6, rounds=4, federated_every=0)
    runs = tmp_path / "runs"
    federation = LocalFederation(tmp_path / "flwr-home")
    node = {k: f"partition-id={k} num-partitions=3 data-dir='{tmp_path / f'node{k}'}'" for k in range(3)}
    with federation:
        federation.add_node("node0", node[0])
        federation.add_node("node1", node[1])  # node 2 is not there yet
        process = subprocess.Popen(
            [str(BIN / "flwr"), "run", ".", "test", "--stream", "--run-config",
             run_config(config, runs, "runtime.node_wait=5", "train.min_success_fraction=0.3",
                        "executor.round_timeout=90")],
            cwd=PROJECT, env=federation.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            wait_for_round(runs, 1, process)
            federation.add_node("node2", node[2])  # joins late: serves from the next round on
            wait_for_round(runs, 2, process)
            federation.stop("node1")  # leaves: its shard's clients fail from then on
            out, _ = process.communicate(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert federation.leftovers() == []
    assert process.returncode == 0, out[-4000:]
    (folder,) = runs.iterdir()
    clients = pd.read_csv(folder / "clients.csv")
    failed = clients[clients["status"] == "failed"]
    by_round = {r: sorted(group["client_id"]) for r, group in failed.groupby("round")}
    assert by_round[1] == [2, 5], "shard 2 had no node in round 1"
    assert "no node hosts its shard" in failed[failed["round"] == 1]["error"].iloc[0]
    assert 4 in by_round and by_round[4] == [1, 4], "node 1 left: its shard fails in the last round"
    assert all(set(ids) <= {1, 2, 4, 5} for ids in by_round.values())
    rounds = pd.read_csv(folder / "rounds.csv").set_index("round")
    assert rounds.loc[1, "clients_failed"] == 2 and rounds.loc[4, "clients_failed"] == 2
    assert np.isfinite(rounds.loc[4, "test_accuracy"]), "the run went on with the nodes it had"
