"""Shared fixtures: quiet Flower, a private dataset cache, small synthetic configs."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

from pathlib import Path

import pytest

from fedsim.config import ExperimentConfig
from fedsim.config.validation import load_config


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session decodes datasets into its own cache folder."""
    cache = tmp_path_factory.mktemp("fedsim-cache")
    os.environ["FEDSIM_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def _task_identity() -> None:
    """Tests build Flower messages outside a Flower runtime, which needs a task identity."""
    from fedsim.clients.runner import ensure_task_identity

    ensure_task_identity()


@pytest.fixture
def small_config(tmp_path: Path):
    """A factory for a fast synthetic experiment writing into ``tmp_path`` (in-process executor)."""

    def make(**overrides: object) -> ExperimentConfig:
        base = {
            "data.dataset": "synthetic",
            "data.synthetic_train": 600,
            "data.synthetic_test": 200,
            "partition.num_clients": 10,
            "partition.scheme": "dirichlet",
            "partition.alpha": 1.0,
            "partition.min_partition_size": 5,
            "model.name": "lenet5",
            "train.rounds": 3,
            "train.lr": 0.05,
            "train.batch_size": 16,
            "output.dir": str(tmp_path / "runs"),
            # drawing a run's figures costs more than training these runs; tests of figures ask for them
            "output.figures": False,
            "runtime.num_cpus_per_client": 1.0,
            # the fast set runs in process; FEDSIM_TEST_EXECUTOR=cohort runs it on Ray cohort workers
            "executor.kind": os.environ.get("FEDSIM_TEST_EXECUTOR", "in-process"),
        }
        base.update(overrides)
        return load_config(None, base)

    return make
