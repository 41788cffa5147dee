"""Reference runs: their tables are committed, and every change must reproduce them bit for bit.

The tables under ``tests/reference/`` were written by the code before the core was reshaped
(one run plan, settings owned by their modules, a loop of named phases, a layered tree). A
restructuring must not change a single number: each reference run is repeated here (in
process, CPU) and its ``rounds.csv``, ``clients.csv``, ``hooks.csv`` and ``summary.json`` are
compared exactly with the committed copies, wall-clock columns aside.

To write the tables anew (only when a change of results is intended and explained in its
commit)::

    FEDSIM_WRITE_REFERENCE=1 .venv/bin/pytest tests/test_reference_runs.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim import compare, load_config, run

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "reference"
WRITE = os.environ.get("FEDSIM_WRITE_REFERENCE") == "1"
VOLATILE = {"rounds.csv": ["wall_seconds"], "clients.csv": ["seconds"], "hooks.csv": []}
VOLATILE_SUMMARY = ("wall_seconds",)

SMALL = {
    "data.dataset": "synthetic", "data.synthetic_train": 600, "data.synthetic_test": 200,
    "partition.num_clients": 10, "partition.scheme": "dirichlet", "partition.alpha": 1.0,
    "partition.min_partition_size": 5, "model.name": "lenet5", "train.rounds": 3, "train.lr": 0.05,
    "train.batch_size": 16, "executor.kind": "in-process", "runtime.num_cpus_per_client": 1.0,
}
DP_ARGS = {
    "dp-fixed-server": ":noise_multiplier=0.001:clipping_norm=50.0",
    "dp-fixed-client": ":noise_multiplier=0.001:clipping_norm=50.0",
    "dp-adaptive-server": ":noise_multiplier=0.001",
    "dp-adaptive-client": ":noise_multiplier=0.001",
}
STRATEGIES = [  # every synchronous weight-averaging strategy, as the comparison tests run them
    "fedavg", "uniform", "ema", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
    "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg", *[name + args for name, args in DP_ARGS.items()],
    "fedprox:proximal_mu=0.1", "centralized",
]

# name -> (config file or None, overrides on top of SMALL when there is no file)
RUNS: dict[str, tuple[str | None, dict]] = {
    "quickstart": ("configs/quickstart.toml", {"executor.kind": "in-process"}),
    "latent_distill_mixed": (None, {
        "strategy.name": "latent-distill", "model.representation_dim": 16,
        "model.architectures": ["lenet5", "niid_cnn"], "latent_distill.transfer_size": 120,
        "train.fraction_train": 0.5}),
    "latent_distill_teacher": (None, {
        "strategy.name": "latent-distill", "model.representation_dim": 16,
        "model.architectures": ["lenet5", "niid_cnn"], "latent_distill.transfer_size": 120,
        "latent_distill.teacher": "server", "latent_distill.teacher_epochs": 2, "train.rounds": 2}),
    "crucial_hooks": (None, {
        "train.rounds": 2, "evaluation.federated_every": 0,
        "hooks": [{"name": "crucial", "k": 3, "theta": 2, "tiny_epochs": 1},
                  {"name": "augment", "target": "crucial"}, {"name": "kd", "alpha": 0.5}]}),
    "vectorized": (None, {
        "engine.kind": "vectorized", "strategy.name": "fedprox", "strategy.kwargs.proximal_mu": 0.1,
        "train.momentum": 0.9, "train.weight_decay": 0.0001, "hooks": [{"name": "select", "rho": 0.5}]}),
    "deadline_over_selection": (None, {
        "time.devices.kind": "tiers", "time.devices.round_jitter": 0.3, "time.policy.deadline": 1.0,
        "time.policy.over_selection": 0.4, "time.availability.kind": "daily",
        "time.availability.on_hours": 20.0, "train.clients_per_round": 5, "evaluation.federated_every": 0,
        "train.rounds": 4}),
    "fedbuff_timed": (None, {
        "time.devices.kind": "tiers", "strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3,
        "train.clients_per_round": 6, "train.rounds": 5, "evaluation.federated_every": 0}),
    "faults": (None, {"faults.fail_clients": [1, 4], "train.rounds": 2}),
    "one_shot": (None, {"train.mode": "one-shot", "train.rounds": 1, "train.local_epochs": 2}),
}


def config_of(name: str, tmp_path: Path):  # noqa: ANN201 - ExperimentConfig
    path, overrides = RUNS[name]
    if path is None:
        overrides = {**SMALL, **overrides}
    return load_config(ROOT / path if path else None,
                       {**overrides, "output.dir": str(tmp_path / "runs"), "output.name": name,
                        "output.figures": False})


def comparable(folder: Path) -> dict[str, object]:
    """A run directory's results, wall-clock values aside."""
    tables: dict[str, object] = {}
    for table, volatile in VOLATILE.items():
        path = folder / table
        if path.is_file():
            frame = pd.read_csv(path)
            tables[table] = frame.drop(columns=[c for c in volatile if c in frame])
    summary = json.loads((folder / "summary.json").read_text())
    tables["summary.json"] = {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY}
    return tables


def keep(folder: Path, target: Path) -> None:
    """Copy a run's comparable files into the reference folder ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for table, value in comparable(folder).items():
        if table == "summary.json":
            (target / table).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
        else:
            value.to_csv(target / table, index=False)  # type: ignore[union-attr]


def assert_same(folder: Path, target: Path) -> None:
    """``folder``'s results equal the committed ones exactly (NaN equals NaN)."""
    now = comparable(folder)
    written = {path.name for path in target.iterdir()}
    assert set(now) == written, f"{folder.name}: tables {sorted(now)} but the reference has {sorted(written)}"
    for table, value in now.items():
        if table == "summary.json":
            expected = json.loads((target / table).read_text())
            assert json.loads(json.dumps(value, sort_keys=True)) == expected, f"{folder.name}: summary.json differs"
            continue
        expected = pd.read_csv(target / table)
        # through CSV and back, as the reference was: every float keeps its shortest exact repr
        actual = pd.read_csv(__import__("io").StringIO(value.to_csv(index=False)))  # type: ignore[union-attr]
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, obj=f"{folder.name}/{table}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_reference_run_is_reproduced_bit_for_bit(name: str, tmp_path: Path) -> None:
    result = run(config_of(name, tmp_path), progress=False)
    if WRITE:
        keep(result.path, REFERENCE / name)
    assert_same(result.path, REFERENCE / name)
    assert np.isfinite(result.summary["final_test_accuracy"])


@pytest.mark.slow
def test_every_compared_strategy_is_reproduced_bit_for_bit(tmp_path: Path) -> None:
    config = load_config(None, {**SMALL, "partition.num_clients": 6, "data.synthetic_train": 360,
                                "train.rounds": 2, "train.fraction_train": 0.5, "evaluation.federated_every": 0,
                                "output.dir": str(tmp_path / "runs"), "output.name": "all"})
    result = compare(config, STRATEGIES, progress=False)
    summary = result.summary.set_index("strategy")
    assert (summary["status"] == "ok").all(), summary[summary["status"] != "ok"]["error"].to_dict()
    for label in STRATEGIES:
        folder = result.path / "runs" / summary.loc[label, "run_dir"].split("/")[-1]
        target = REFERENCE / "strategies" / folder.name
        if WRITE:
            keep(folder, target)
        assert_same(folder, target)
