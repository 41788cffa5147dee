"""fedsim as a Flower App, for users who live in the Flower CLI (``flwr run .``).

``pyproject.toml`` registers ``server_app`` and ``client_app`` below as the project's Flower
app. The ServerApp reads the ``[tool.flwr.app.config]`` values ``config-file`` (a fedsim TOML
config, relative to the working directory) and ``overrides`` (``"section.key=value"`` pairs
separated by ``;``), prepares the run exactly like ``fedsim run`` (validation, dataset cache,
partition, run directory) and drives the same round loop. With ``simulation.executor =
"cohort"`` every node of the federation is a worker hosting a share of the clients, whatever
their number; with ``"flower"`` the federation needs one node per client.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.clients.app import client_app
from fedsim.config import ExperimentConfig
from fedsim.validation import load_config

server_app = ServerApp()


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    """Build the experiment config from a Flower run config."""
    path = str(run_config.get("config-file", "") or "") or None
    overrides = [o for o in str(run_config.get("overrides", "") or "").split(";") if o.strip()]
    return load_config(path, overrides)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Prepare the run, execute the rounds, publish the run directory."""
    from fedsim import rundir
    from fedsim.app import execute, flower_executor, run_state
    from fedsim.experiment import finalize
    from fedsim.interrupt import RunInterrupted
    from fedsim.prepare import prepare

    config = config_from_run_config(dict(context.run_config))
    nodes = len(list(grid.get_node_ids()))
    if config.simulation.executor == "flower" and nodes and nodes != config.partition.num_clients:
        raise ValueError(
            f"the federation runs {nodes} nodes but partition.num_clients = "
            f"{config.partition.num_clients} and simulation.executor = 'flower' needs one node per "
            "client; use simulation.executor = 'cohort' (every node hosts a share of the clients)"
        )
    if config.simulation.executor == "in-process":
        raise ValueError("simulation.executor = 'in-process' runs no Flower nodes; under flwr run use "
                         "'cohort' or 'flower'")
    prepared = prepare(config)
    state = run_state(prepared)
    try:
        execute(prepared, state, flower_executor(grid, prepared, workers=max(nodes, 1)), progress=False)
        if state.error is not None:
            raise state.error
        final = finalize(prepared, state.final_arrays, state.recorder.confusion, state.recorder.extras)
    except (RunInterrupted, KeyboardInterrupt):
        kept = rundir.mark_interrupted(prepared.staging, prepared.final)
        print(f"fedsim: interrupted; resume with: fedsim run --resume {kept}")
        raise
    except BaseException as error:
        if prepared.staging.exists():
            rundir.mark_failed(prepared.staging, prepared.final, error)
        raise
    print(f"fedsim run directory: {final}")


__all__ = ["client_app", "server_app"]
