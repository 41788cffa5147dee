"""fedsim: federated-learning simulation on Flower + Ray.

The Python API mirrors the CLI::

    import fedsim
    config = fedsim.load_config("configs/quickstart.toml", ["train.rounds=3"])
    report = fedsim.partition(config)          # label distribution of the partition
    result = fedsim.run(config)                # run directory + pandas tables
    result.rounds, result.clients, result.summary

The package is layered (``docs/architecture.md``): ``fedsim.core`` (the round loop and what server
and clients share), ``fedsim.config`` (the experiment config), ``fedsim.runs`` (a run from its plan
to its results), ``fedsim.methods``, ``fedsim.timing``, ``fedsim.outputs``, ``fedsim.frontends``,
``fedsim.ops``, and ``fedsim.models``, ``fedsim.datasets``, ``fedsim.strategies``,
``fedsim.clients``. Attributes are imported lazily so that worker processes only load what they use.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

__version__ = "0.2.0"

# Run from a source tree (a Flower App Bundle that ``flwr run .`` installed puts the project
# folder first on ``sys.path``), the subpackages ``fedsim.clients``, ``fedsim.datasets`` and
# ``fedsim.strategies`` are the top-level folders next to this one: search them there, so
# that every module comes from that one copy. An installed fedsim has them inside; no-op.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "clients").is_dir() and (_SOURCE_ROOT / "clients" / "__init__.py").is_file():
    __path__.append(str(_SOURCE_ROOT))  # noqa: F821 - the package's own __path__

_API = {
    "ExperimentConfig": "fedsim.config",
    "ConfigError": "fedsim.config",
    "RenamedKeyWarning": "fedsim.config",
    "load_config": "fedsim.config.validation",
    "run": "fedsim.runs.experiment",
    "resume": "fedsim.runs.experiment",
    "FedsimError": "fedsim.errors",
    "InputError": "fedsim.errors",
    "RunError": "fedsim.errors",
    "RunInterrupted": "fedsim.ops.interrupt",
    "compare": "fedsim.frontends.comparison",
    "ComparisonResult": "fedsim.frontends.comparison",
    "partition": "fedsim.frontends.partition_report",
    "PartitionReport": "fedsim.frontends.partition_report",
    "load_run": "fedsim.outputs.results",
    "RunResult": "fedsim.outputs.results",
    "plot_run": "fedsim.outputs.plots",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


__all__ = sorted(_API)
