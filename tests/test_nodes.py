"""Nodes joining a run (fast, in process): own data by shard, shared storage, bad node configs.

The grid here runs each node's ClientApp in this process with that node's ``node_config``, as
a SuperNode started with ``--node-config`` would; ``test_deployment.py`` does the same with
real SuperLink and SuperNode processes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from test_cohort import LocalGrid, node_pool

from fedsim.runs.server import execute
from fedsim.clients.node import NodeConfigError, NodeHosting, mirror_folder
from fedsim.config import ConfigError
from fedsim.runs.executors import CohortExecutor, NodeError
from fedsim.runs.experiment import run
from fedsim.frontends.flower_app import APP_DIR, config_from_run_config, resolve_config_file
from fedsim.runs.prepare import prepare
from fedsim.core.spec import PartitionIndex


class NodesGrid(LocalGrid):
    """Nodes 100, 101, ... with the given node configs."""

    def __init__(self, node_configs: list[dict]) -> None:
        super().__init__(len(node_configs))
        self.contexts = {100 + k: Context(run_id=0, node_id=100 + k, node_config=dict(cfg), state=RecordDict(),
                                          run_config={}) for k, cfg in enumerate(node_configs)}


def own_data(tmp_path: Path, shards: int, present: list[int] | None = None, **extra: object) -> list[dict]:
    return [{"partition-id": k, "num-partitions": shards, "data-dir": str(tmp_path / f"node{k}"), **extra}
            for k in (range(shards) if present is None else present)]


def run_on(config, grid, wait: float = 5.0):  # noqa: ANN001, ANN201 - (state, run folder)
    config.executor.kind = "cohort"
    prepared = prepare(config)
    sizes = np.diff(PartitionIndex.load(prepared.staging).train_offsets)
    state = execute(prepared, CohortExecutor(node_pool(grid, prepared, wait=wait), sizes, timeout=30), progress=False)
    return state, prepared.staging


@pytest.mark.slow  # keeps the fast set under a minute
def test_nodes_with_their_own_data_host_their_shard_and_give_the_same_numbers(small_config, tmp_path) -> None:  # noqa: ANN001
    overrides = {"train.rounds": 2, "train.fraction_train": 0.7, "faults.fail_clients": [4]}
    reference = run(small_config(**overrides, **{"output.name": "reference"}), progress=False)
    grid = NodesGrid(own_data(tmp_path, 3))
    state, folder = run_on(small_config(**overrides, **{"output.name": "nodes"}), grid)
    assert state.error is None, state.error
    rounds = pd.read_csv(folder / "rounds.csv")
    pd.testing.assert_frame_equal(rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"))
    clients = pd.read_csv(folder / "clients.csv")
    failed = clients[clients["status"] == "failed"]
    assert len(failed) and set(failed["client_id"]) == {4}, "the fault configured on the server reaches the node"
    assert failed["error"].str.contains("client 4 failed on purpose").all()
    workers = pd.read_csv(folder / "workers.csv")
    for (server_round, phase), load in workers.groupby(["round", "phase"]):
        sampled = clients[(clients["round"] == server_round) & (clients["phase"] == phase)]["client_id"]
        expected = sampled.groupby(sampled % 3).size()
        assert dict(zip(load["worker"], load["clients"])) == expected.to_dict(), "worker k = shard k: clients c % 3 == k"
    for k in range(3):  # each node prepared the dataset itself and keeps its copy of the run
        copy = mirror_folder(tmp_path / f"node{k}", str(folder.resolve()))
        assert {p.name for p in copy.iterdir()} >= {"spec.json", "config.toml", "partition.npz"}
        assert str(tmp_path / f"node{k}" / "cache") in (copy / "spec.json").read_text()


def test_a_shard_without_a_node_fails_its_clients_with_the_reason(small_config, tmp_path) -> None:  # noqa: ANN001
    grid = NodesGrid(own_data(tmp_path, 3, present=[0, 1]))
    with pytest.warns(UserWarning, match=r"without a node for shard\(s\) \[2\] of 3"):
        state, folder = run_on(small_config(**{"train.rounds": 1, "evaluation.federated_every": 0,
                                                "train.min_success_fraction": 0.3}), grid, wait=0.2)
    assert state.error is None, state.error
    clients = pd.read_csv(folder / "clients.csv")
    failed = clients[clients["status"] == "failed"]
    assert sorted(failed["client_id"]) == [2, 5, 8]
    assert failed["error"].str.contains("no node hosts its shard").all()


@pytest.mark.parametrize("configs, message", [
    (lambda t: own_data(t, 2) + own_data(t, 2, present=[1]), "both say partition-id = 1"),
    (lambda t: own_data(t, 2) + [{"partition-id": 0, "num-partitions": 5}], "give every node a data-dir, or none"),
    (lambda t: own_data(t, 3)[:2] + own_data(t, 2, present=[1]), "says num-partitions = 2 but the run's other"),
    (lambda t: own_data(t, 11), "the run has 10 clients: some nodes would host none"),
    (lambda t: own_data(t, 2, **{"data-file": str(t / "absent.npz")}), "data-file = .*no such file on this node"),
    (lambda t: [{"partition-id": "a", "num-partitions": 2, "data-dir": str(t)}], "partition-id = 'a'"),
])
def test_nodes_that_cannot_serve_the_run_stop_it_naming_the_problem(small_config, tmp_path, configs,  # noqa: ANN001
                                                                     message) -> None:
    state, _ = run_on(small_config(**{"train.rounds": 1}), NodesGrid(configs(tmp_path)))
    assert isinstance(state.error, NodeError)
    assert re.search(message, str(state.error)), str(state.error)


def test_a_node_whose_dataset_differs_from_the_servers_is_refused(small_config, tmp_path) -> None:  # noqa: ANN001
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(0)
    np.savez(other, x_train=rng.integers(0, 255, (600, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, 600), x_test=rng.integers(0, 255, (200, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 200))
    state, _ = run_on(small_config(**{"train.rounds": 1}), NodesGrid(own_data(tmp_path, 2, **{"data-file": str(other)})))
    assert isinstance(state.error, NodeError)
    assert "copy of the dataset" in str(state.error) and "differs from the server's" in str(state.error)


def test_a_shared_storage_node_that_cannot_read_the_run_directory_says_what_to_do(small_config, tmp_path,  # noqa: ANN001
                                                                                   monkeypatch) -> None:
    import fedsim.clients.app as app

    monkeypatch.setattr(app, "SPEC_FILE", "no-such-file.json")  # as on another machine
    state, _ = run_on(small_config(**{"train.rounds": 1}), NodesGrid([{"partition-id": 0, "num-partitions": 1}]))
    assert isinstance(state.error, NodeError)
    assert "cannot read the run directory" in str(state.error) and "data-dir" in str(state.error)


@pytest.mark.parametrize("node_config, message", [
    ({"data-file": "x.npz"}, "data-file = 'x.npz' needs data-dir"),
    ({"data-dir": "/d", "num-partitions": 2}, "partition-id = None"),
    ({"data-dir": "/d", "partition-id": 2, "num-partitions": 2}, "need 0 <= partition-id < num-partitions"),
])
def test_node_config_errors_name_the_key(node_config, message) -> None:  # noqa: ANN001
    with pytest.raises(NodeConfigError, match=message):
        NodeHosting.from_node_config(node_config)
    assert not NodeHosting.from_node_config({"partition-id": 4, "num-partitions": 9}).own_data  # Flower's simulation


def test_flwr_run_config_file_is_found_in_the_app_folder_then_the_working_directory(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    app, work = tmp_path / "app", tmp_path / "work"
    (app / "configs").mkdir(parents=True)
    work.mkdir()
    (app / "configs" / "a.toml").write_text("[train]\nrounds = 7\n")
    (work / "b.toml").write_text("[train]\nrounds = 8\n")
    monkeypatch.chdir(work)
    assert resolve_config_file("configs/a.toml", app) == app / "configs" / "a.toml"
    assert resolve_config_file("b.toml", app) == work / "b.toml"
    config = config_from_run_config({"config-file": "configs/a.toml", "overrides": "train.lr=0.5; partition.alpha=0.1"},
                                    app)
    assert (config.train.rounds, config.train.lr, config.partition.alpha) == (7, 0.5, 0.1)
    with pytest.raises(ConfigError, match=r"config-file = 'c.toml': no such file in the app's folder"):
        resolve_config_file("c.toml", app)
    # the default app folder is the project root (the one holding pyproject.toml), not the package
    assert resolve_config_file("configs/quickstart.toml") == APP_DIR / "configs" / "quickstart.toml"
    assert (APP_DIR / "pyproject.toml").is_file()


@pytest.mark.slow  # a subprocess importing torch and Flower
def test_a_copy_of_the_source_tree_imports_every_module_from_itself(tmp_path) -> None:  # noqa: ANN001
    """``flwr run .`` installs a copy of the project and puts it first on ``sys.path``."""
    root = Path(__file__).resolve().parent.parent
    for folder in ("fedsim", "clients", "strategies", "datasets"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fedsim.frontends.flower_app, fedsim.clients.app, "
            "fedsim.strategies.registry, fedsim.datasets; "
            "print(*[m.__file__ for m in (fedsim, fedsim.clients, fedsim.strategies, fedsim.datasets)])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=tmp_path.parent).stdout.split()
    assert len(out) == 4 and all(path.startswith(str(tmp_path)) for path in out), out


def test_each_node_joins_once_late_joiners_serve_and_refused_nodes_are_not_asked_again(small_config,  # noqa: ANN001
                                                                                      tmp_path) -> None:
    configs = own_data(tmp_path, 3) + [{"partition-id": 0, "num-partitions": 3},  # 103: no data-dir (refused)
                                       own_data(tmp_path, 3, present=[1])[0]]  # 104: node 1 restarted
    grid = NodesGrid(configs)
    listed = [100, 101]
    grid.get_node_ids = lambda: list(listed)  # the SuperLink's list of connected nodes
    prepared = prepare(small_config(**{"train.rounds": 1}))
    pool = node_pool(grid, prepared, wait=0.3)
    with pytest.warns(UserWarning, match=r"shard\(s\) \[2\] of 3"):
        pool.start()
    joins = lambda: sum(m.metadata.message_type == "query" for m in grid.messages)  # noqa: E731
    assert pool.hosted() == {0: 100, 1: 101} and joins() == 2, "each node asked once while waiting"
    listed.append(102)
    pool.refresh()
    assert pool.hosted() == {0: 100, 1: 101, 2: 102} and joins() == 3
    listed.append(103)
    with pytest.warns(UserWarning, match="reads the run directory but the run's other nodes do not"):
        pool.refresh()
    pool.refresh()
    assert joins() == 4 and 103 in pool.refused, "a node that cannot serve is not asked again"
    listed.append(104)
    with pytest.warns(UserWarning, match="node 104 joins for shard 1, which node 101 hosted"):
        pool.refresh()
    assert pool.hosted() == {0: 100, 1: 104, 2: 102}
    listed.remove(100)  # node 100 left
    pool.refresh()
    assert pool.hosted() == {1: 104, 2: 102} and joins() == 5
