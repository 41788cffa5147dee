"""The code examples of docs/architecture.md, run for real.

Each example in the page is a fenced block preceded by ``<!-- example: NAME -->``. The tests read
the blocks from the page (so page and test cannot drift apart), execute them -- Python blocks with
``exec``, diffs by applying them to the repository's current files in memory -- and check what
they do on tiny synthetic runs with the in-process executor.
"""

from __future__ import annotations

import re
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedsim.datasets.cache as cache_module
import fedsim.datasets.settings as settings_module
import fedsim.datasets.sources as sources_module
import fedsim.strategies.registry as registry_module
from fedsim.config import ConfigError
from fedsim.datasets import materialize
from fedsim.runs.executors import InProcessExecutor
from fedsim.runs.experiment import run
from fedsim.runs.plan import initial_model
from fedsim.core.sampling import TRAIN, sample_clients
from fedsim.core.spec import PartitionIndex

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)\n```\n", re.S)


def examples() -> dict[str, tuple[str, str]]:
    """Example name -> (fence language, code), in page order."""
    found: dict[str, tuple[str, str]] = {}
    for match in EXAMPLE.finditer(DOC.read_text()):
        assert match.group(1) not in found, f"example {match.group(1)!r} appears twice"
        found[match.group(1)] = (match.group(2), match.group(3) + "\n")
    return found


def code_of(name: str, language: str = "python") -> str:
    kind, code = examples()[name]
    assert kind == language, f"example {name!r} is a {kind} block, expected {language}"
    return code


def module_from_example(name: str, module_name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Execute example ``name`` as module ``module_name`` (importable until the test ends)."""
    module = types.ModuleType(module_name)
    module.__file__ = str(DOC)
    monkeypatch.setitem(sys.modules, module_name, module)
    exec(compile(code_of(name), f"{DOC}:{name}", "exec"), module.__dict__)
    return module


def run_example(name: str, namespace: dict) -> dict:
    exec(compile(code_of(name), f"{DOC}:{name}", "exec"), namespace)
    return namespace


def apply_diff(diff: str) -> dict[str, str]:
    """Apply a unified diff to the repository's files in memory: path -> patched text.

    Hunks are placed by their context and removed lines (which must occur exactly once, at line
    starts), not by line numbers, so unrelated edits elsewhere in a file do not matter.
    """
    files: dict[str, str] = {}
    hunks: list[tuple[str, list[str], list[str]]] = []
    path = ""
    for line in diff.splitlines():
        if line.startswith("--- "):
            continue
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].removeprefix("b/")
            files.setdefault(path, (ROOT / path).read_text())
        elif line.startswith("@@"):
            hunks.append((path, [], []))
        else:
            tag, body = (line[:1], line[1:]) if line else (" ", "")
            assert tag in " +-", f"not a diff line: {line!r}"
            _, old, new = hunks[-1]
            if tag in " -":
                old.append(body)
            if tag in " +":
                new.append(body)
    for path, old, new in hunks:
        before, after = "\n" + "\n".join(old) + "\n", "\n" + "\n".join(new) + "\n"
        text = "\n" + files[path]
        assert text.count(before) == 1, f"{path} no longer matches the page's diff here:{before}"
        files[path] = text.replace(before, after)[1:]
    return files


def exec_patched(module_name: str, path: str, files: dict[str, str]) -> dict:
    """Execute a patched file under its module's name; return the new module namespace."""
    namespace = {"__name__": module_name, "__package__": module_name.rpartition(".")[0],
                 "__file__": str(ROOT / path)}
    exec(compile(files[path], f"{ROOT / path} (patched by {DOC.name})", "exec"), namespace)
    return namespace


def final_model(result) -> dict[str, torch.Tensor]:  # noqa: ANN001 - a RunResult
    return torch.load(result.path / "final_model.pt", weights_only=True)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(np.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum().item() for k in a)))


# ----------------------------------------------------------------------------------------------


def test_every_example_on_the_page_is_tested() -> None:
    assert list(examples()) == [
        "layering", "strategy", "strategy-registry", "hook", "hook-config", "extension", "extension-run",
        "executor", "executor-run", "dataset-loader", "dataset-registry",
    ]


def test_layering_script_passes_and_catches_violations(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    script = run_example("layering", {"__name__": "layering"})
    graph = script["import_graph"](ROOT)
    assert {"fedsim.core.loop", "fedsim.core.protocol", "fedsim.clients.handler", "fedsim.strategies.registry",
            "fedsim.datasets.settings", "fedsim.models.cnn", "fedsim.runs.executors.inprocess"} <= set(graph)
    assert graph["fedsim.runs.server"] >= {"fedsim.core.loop", "fedsim.runs.executors", "fedsim.runs.plan"}
    assert not graph["fedsim.timing.settings"] & {"fedsim.config", "fedsim.runs.plan"}, "type-only imports are no edges"
    assert script["problems"](graph) == []

    broken = {module: set(imported) for module, imported in graph.items()}
    broken["fedsim.strategies.averaging"].add("fedsim.clients.training")
    broken["fedsim.core.protocol"].add("fedsim.core.loop")
    found = script["problems"](broken)
    assert any("fedsim.strategies must not import fedsim.clients" in p for p in found)
    assert any(p.startswith("fedsim.core.protocol imports fedsim.core.loop: fedsim.core.protocol may import only") for p in found)
    assert any(p.startswith("import cycle:") and "fedsim.core.loop" in p for p in found)

    monkeypatch.chdir(ROOT)  # as a script, from the repository root
    with pytest.raises(SystemExit) as exited:
        run_example("layering", {"__name__": "__main__"})
    assert exited.value.code == 0
    assert "layering OK" in capsys.readouterr().out


@pytest.mark.slow  # keeps the fast set under a minute
def test_strategy_example_aggregates_with_a_server_learning_rate(small_config, monkeypatch) -> None:  # noqa: ANN001
    module_from_example("strategy", "fedsim.strategies.damped", monkeypatch)
    files = apply_diff(code_of("strategy-registry", "diff"))
    registry = exec_patched("fedsim.strategies.registry", "strategies/registry.py", files)
    assert "damped-fedavg" in registry["STRATEGY_NAMES"]
    monkeypatch.setitem(registry_module.STRATEGIES, "damped-fedavg", registry["STRATEGIES"]["damped-fedavg"])
    assert "server_lr" in registry_module.strategy_arguments("damped-fedavg")
    with pytest.raises(ConfigError, match="server_lr = 2"):
        small_config(**{"strategy.name": "damped-fedavg", "strategy.kwargs.server_lr": 2.0})

    one_round = {"train.rounds": 1, "evaluation.federated_every": 0, "output.figures": False}
    config = small_config(**one_round, **{"output.name": "fedavg"})
    fedavg = run(config, progress=False)
    damped = run(small_config(**one_round, **{"output.name": "damped", "strategy.name": "damped-fedavg",
                                             "strategy.kwargs.server_lr": 0.5}), progress=False)
    start = initial_model(config, materialize(config.data)).state_dict()
    averaged, stepped = final_model(fedavg), final_model(damped)
    assert stepped.keys() == start.keys()
    for key, w in start.items():  # halfway from the initial model to FedAvg's aggregate
        torch.testing.assert_close(stepped[key], w + 0.5 * (averaged[key] - w), rtol=1e-5, atol=1e-6)
    assert distance(stepped, start) == pytest.approx(0.5 * distance(averaged, start), rel=1e-4)
    assert distance(averaged, start) > 0

    frozen = run(small_config(**{"train.rounds": 2, "output.name": "frozen", "output.figures": False,
                                 "strategy.name": "damped-fedavg", "strategy.kwargs.server_lr": 0.0}),
                 progress=False)
    assert all(torch.equal(final_model(frozen)[k], w) for k, w in start.items()), "server_lr = 0 never moves"
    assert frozen.rounds["test_accuracy"].nunique() == 1
    assert (frozen.rounds.loc[1:, "clients_succeeded"] == 10).all()


def test_hook_example_trains_on_the_kept_share_and_reports_it(small_config, monkeypatch) -> None:  # noqa: ANN001
    module_from_example("hook", "myhooks", monkeypatch)
    hooks = tomllib.loads(code_of("hook-config", "toml"))["hooks"]
    assert hooks == [{"name": "myhooks:KeepFraction", "fraction": 0.25}]
    # the example's module exists only in this process (a Ray worker could not import it)
    result = run(small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "output.figures": False,
                                 "hooks": hooks, "executor.kind": "in-process"}), progress=False)

    stats = pd.read_csv(result.path / "hooks.csv")
    assert set(stats["hook"]) == {"keep_fraction"} and set(stats["metric"]) == {"kept", "of"}
    reported = stats.pivot_table(index=["round", "client_id"], columns="metric", values="value")
    assert len(reported) == 2 * 10  # every client, both rounds
    split = PartitionIndex.load(result.path)
    for (_, client_id), row in reported.iterrows():
        assert row["of"] == len(split.train_of(client_id))
        assert row["kept"] == int(row["of"] * 0.25)
    train = result.clients[result.clients["phase"] == "train"].set_index(["round", "client_id"])
    assert (train["num_examples"] == reported["kept"].reindex(train.index)).all(), "trained on the kept share"


def test_extension_example_sees_every_stage_and_measures_updates(small_config) -> None:  # noqa: ANN001
    definitions = run_example("extension", {"__name__": "docs_extension"})
    settings = {"train.clients_per_round": 1, "evaluation.clients_per_eval": 2, "output.figures": False}
    config = small_config(**settings, **{"train.rounds": 2, "output.name": "norms"})
    namespace = run_example("extension-run", {"UpdateNorms": definitions["UpdateNorms"], "config": config})
    norms, result = namespace["norms"], namespace["result"]

    per_round = ["on_configure:train", "on_train_replies", "on_configure:evaluate", "on_evaluate_replies",
                 "on_round_end"]
    assert norms.stages == ["on_run_start", *per_round, *per_round, "on_run_end"]
    assert {r: sorted(n) for r, n in norms.norms.items()} == {
        r: sample_clients(config.seed, r, TRAIN, 10, 1) for r in (1, 2)}

    # one client per round: FedAvg's aggregate is that client's model, so the norms are the steps
    first = run(small_config(**settings, **{"train.rounds": 1, "output.name": "first"}), progress=False)
    start = initial_model(config, materialize(config.data)).state_dict()
    w1, w2 = final_model(first), final_model(result)
    (n1,), (n2,) = norms.norms[1].values(), norms.norms[2].values()
    assert n1 == pytest.approx(distance(w1, start), rel=1e-6)
    assert n2 == pytest.approx(distance(w2, w1), rel=1e-6)

    table = pd.read_csv(result.path / "update_norms.csv")
    assert table["round"].tolist() == [1, 2]
    assert result.summary["max_update_norm"] == pytest.approx(max(n1, n2))
    assert norms.state() == {"norms": norms.norms}


@pytest.mark.slow  # keeps the fast set under a minute
def test_executor_example_reverses_the_order_and_changes_nothing(small_config, monkeypatch) -> None:  # noqa: ANN001
    definitions = run_example("executor", {"__name__": "docs_executor"})
    outer: list[list[int]] = []
    inner: list[list[int]] = []

    class Watched(definitions["ReversedExecutor"]):
        def execute(self, tasks):  # noqa: ANN001, ANN201
            outer.append([t.client_id for t in tasks])
            replies = super().execute(tasks)
            assert [r.client_id for r in replies] == outer[-1], "replies in task order"
            return replies

    original = InProcessExecutor.execute

    def watched_inner(self, tasks):  # noqa: ANN001, ANN202
        inner.append([t.client_id for t in tasks])
        return original(self, tasks)

    monkeypatch.setattr(InProcessExecutor, "execute", watched_inner)
    settings = {"train.fraction_train": 0.5, "evaluation.clients_per_eval": 3, "output.figures": False}
    namespace = run_example("executor-run", {"ReversedExecutor": Watched,
                                             "config": small_config(**settings, **{"output.name": "reversed"})})
    assert inner == [list(reversed(tasks)) for tasks in outer]
    assert len(outer) == 2 * 3 and all(len(tasks) > 1 for tasks in outer)  # train + evaluate, 3 rounds

    monkeypatch.setattr(InProcessExecutor, "execute", original)
    reference = run(small_config(**settings, **{"output.name": "in-order"}), progress=False)
    reversed_run = namespace["result"]
    pd.testing.assert_frame_equal(reversed_run.rounds.drop(columns="wall_seconds"),
                                  reference.rounds.drop(columns="wall_seconds"))
    pd.testing.assert_frame_equal(reversed_run.clients.drop(columns="seconds"),
                                  reference.clients.drop(columns="seconds"))
    assert all(torch.equal(final_model(reversed_run)[k], w) for k, w in final_model(reference).items())


@pytest.mark.slow  # keeps the fast set under a minute
def test_dataset_example_runs_a_new_dataset_end_to_end(small_config, monkeypatch) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="data.dataset = 'stripes'"):
        small_config(**{"data.dataset": "stripes"})

    loader = run_example("dataset-loader", dict(vars(sources_module)))["load_stripes"]
    monkeypatch.setattr(sources_module, "load_stripes", loader, raising=False)  # added to sources.py
    files = apply_diff(code_of("dataset-registry", "diff"))
    assert set(files) == {"datasets/settings.py", "datasets/cache.py"}
    settings = exec_patched("fedsim.datasets.settings", "datasets/settings.py", files)
    cache = exec_patched("fedsim.datasets.cache", "datasets/cache.py", files)
    monkeypatch.setattr(settings_module, "DATASET_NAMES", settings["DATASET_NAMES"])
    monkeypatch.setattr(cache_module, "_cache_key", cache["_cache_key"])
    monkeypatch.setattr(cache_module, "_read_source", cache["_read_source"])

    config = small_config(**{"data.dataset": "stripes", "partition.scheme": "iid", "train.local_epochs": 2,
                             "output.figures": False})
    key, _ = cache["_cache_key"](config.data)
    assert key.startswith("stripes-")
    bigger = small_config(**{"data.dataset": "stripes", "data.synthetic_train": 700})
    assert cache["_cache_key"](bigger.data)[0] != key, "the cache key follows the loader's settings"

    dataset = materialize(config.data)
    assert dataset.folder.name == key and dataset.class_names == ("horizontal", "vertical")
    assert np.load(dataset.folder / "x_train.npy", mmap_mode="r").shape == (600, 32, 32, 1)
    result = run(config, progress=False)
    assert result.summary["dataset"] == "stripes"
    assert result.partition_counts.columns.tolist() == ["horizontal", "vertical"]
    assert int(result.partition_counts.to_numpy().sum()) == 600
    assert int(result.confusion_matrix.to_numpy().sum()) == 200
    assert result.rounds["test_accuracy"].iloc[-1] > 0.9, "the stripes are learnable"
