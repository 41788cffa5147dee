"""fedsim as a Flower App, for users who live in the Flower CLI (``flwr run .``).

``pyproject.toml`` registers ``server_app`` and ``client_app`` below as the project's Flower
app. The ServerApp reads the ``[tool.flwr.app.config]`` values ``config-file`` (a fedsim TOML
config, relative to the project that ``flwr run`` shipped) and ``overrides``
(``"section.key=value"`` pairs separated by ``;``, as ``fedsim run --set``), both changeable
with ``flwr run . --run-config``, prepares the run exactly like ``fedsim run`` (validation,
dataset cache, partition, run directory) and drives the same round loop, so a run gives the
numbers ``fedsim run`` gives for the same config. With ``executor.kind = "cohort"`` (the
default) every node of the federation is a worker: on Flower's simulation runtime, or on
SuperNodes that read the run directory, each runs a share of the round's clients, whatever
their number; SuperNodes with their own data (``--node-config "partition-id=K
num-partitions=N data-dir=..."``, :mod:`fedsim.clients.node`) run the clients of their shard.
With ``"flower"`` the federation needs one node per client.

**Bad input** (a missing ``config-file``, an override without ``=``, a bad value, a dataset that
is not there) is logged as one line, ``fedsim: error: <what, naming the key or file>``, without
a traceback, and the run ends as *failed*. Flower 1.41 gives a ServerApp no exit status of its
own: an exception leaving ``main`` marks the run ``finished:failed`` (``flwr ls`` shows the
message) and ends Flower's ServerApp / simulation process with Flower's exit code (201 / 700),
while ``flwr run`` itself exits 0 once it has started the run (``--stream`` too). Flower logs
that exception with its traceback; for fedsim's own, already logged input errors
(:class:`LoggedInputError`) :class:`OneLineInputErrors` drops that duplicate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.clients.app import client_app
from fedsim.config import ConfigError, ExperimentConfig
from fedsim.config.validation import load_config
from fedsim.errors import InputError

if TYPE_CHECKING:
    from fedsim.runs.plan import RunPlan

server_app = ServerApp()
FLOWER_LOGGER = "flwr"  # the logger Flower's runtimes log through (flwr.common.logger.FLOWER_LOGGER)


APP_DIR = Path(__file__).resolve().parents[2]  # the app's folder (fedsim/frontends/ -> the project root, or Flower's copy of it)


def resolve_config_file(name: str, app_dir: Path = APP_DIR) -> Path:
    """A ``config-file`` as given: absolute, else relative to the app's folder (the project that
    ``flwr run`` shipped, ``configs/`` included), else to the working directory."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for base in (app_dir, Path.cwd()):
        if (base / path).is_file():
            return base / path
    raise ConfigError(f"config-file = {name!r}: no such file in the app's folder {app_dir} or in the working "
                      f"directory {Path.cwd()}; give a path inside the project (e.g. 'configs/quickstart.toml') "
                      "or an absolute one")


def config_from_run_config(run_config: dict, app_dir: Path = APP_DIR) -> ExperimentConfig:
    """Build the experiment config from a Flower run config (``config-file`` and ``overrides``)."""
    name = str(run_config.get("config-file", "") or "")
    overrides = [o.strip() for o in str(run_config.get("overrides", "") or "").split(";") if o.strip()]
    return load_config(resolve_config_file(name, app_dir) if name else None, overrides)


class LoggedInputError(InputError):
    """Bad input that the ServerApp has already logged as one line (Flower need not log it again)."""


class OneLineInputErrors(logging.Filter):
    """On Flower's logger: drops Flower's report of a :class:`LoggedInputError` (its traceback) --
    the error's one line is already in the log. Every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, LoggedInputError)


def one_line(error: BaseException) -> str:
    """An input error's message on one line: ``invalid configuration: a = 1: ...; b = 2: ...``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    head, rest = lines[0], lines[1:]
    return f"{head} {'; '.join(rest)}" if rest and head.endswith(":") else "; ".join(lines)


def report_input_error(error: InputError) -> LoggedInputError:
    """Log ``error`` as one ERROR line on Flower's logger (no traceback); the error to raise instead,
    which Flower records as the run's failure without logging it again."""
    logger = logging.getLogger(FLOWER_LOGGER)
    if not any(isinstance(f, OneLineInputErrors) for f in logger.filters):
        logger.addFilter(OneLineInputErrors())
    text = one_line(error)
    logger.error("fedsim: error: %s", text)
    return LoggedInputError(text)


def prepare_from_context(grid: Grid, context: Context) -> RunPlan:
    """The run's config from Flower's run config, checked against the federation, and the prepared run."""
    from fedsim.runs.prepare import prepare

    config = config_from_run_config(dict(context.run_config))
    nodes = len(list(grid.get_node_ids()))  # the one-client-per-node check; the cohort executor waits for them
    if config.executor.kind == "flower" and nodes and nodes != config.partition.num_clients:
        raise ConfigError(
            f"the federation runs {nodes} nodes but partition.num_clients = "
            f"{config.partition.num_clients} and executor.kind = 'flower' needs one node per "
            "client; use executor.kind = 'cohort' (every node hosts a share of the clients)"
        )
    if config.executor.kind == "in-process":
        raise ConfigError("executor.kind = 'in-process' runs no Flower nodes; under flwr run use "
                          "'cohort' or 'flower'")
    return prepare(config)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Prepare the run, execute the rounds, publish the run directory."""
    from fedsim.outputs import rundir
    from fedsim.runs.server import execute, flower_executor
    from fedsim.runs.experiment import finalize
    from fedsim.ops.interrupt import RunInterrupted

    try:
        plan = prepare_from_context(grid, context)
    except InputError as error:  # nothing was written: one line, the run ends as failed
        raise report_input_error(error) from None
    try:
        outcome = execute(plan, flower_executor(grid, plan, workers=0), progress=False)
        if outcome.error is not None:
            raise outcome.error
        final = finalize(plan, outcome.final_arrays, outcome.recorder.confusion, outcome.recorder.extras)
    except (RunInterrupted, KeyboardInterrupt):
        kept = rundir.mark_interrupted(plan.staging, plan.final)
        print(f"fedsim: interrupted; resume with: fedsim run --resume {kept}")
        raise
    except BaseException as error:
        if plan.staging.exists():
            rundir.mark_failed(plan.staging, plan.final, error)
        raise
    print(f"fedsim run directory: {final.resolve()}")


__all__ = ["client_app", "server_app"]
