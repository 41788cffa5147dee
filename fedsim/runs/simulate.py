"""Start Flower's simulation runtime (Ray backend) for a ServerApp and fedsim's ClientApp.

fedsim starts Ray itself (:func:`start_ray`, with the arguments Flower's Ray backend would
use; Flower then uses the running Ray), because ``ray.init`` replaces the process's SIGTERM
handler with one that kills Ray's processes under the running driver -- which then aborts with
a crash dump and exit status 134. Started here, fedsim puts its own handler back
(:func:`fedsim.ops.interrupt.reclaim_signals`): SIGTERM stops a run on Ray like Ctrl-C, kept as
``<name>.interrupted``, exit status 143, Ray shut down in order by Flower.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from flwr.serverapp import ServerApp

from fedsim.ops.interrupt import reclaim_signals
from fedsim.ops.logs import quiet_flower, quiet_ray_teardown
from fedsim.ops.reaper import start_reaper

if TYPE_CHECKING:
    from .plan import RunPlan


WORKER_RESTARTS = 100  # how often Ray brings back a dead worker process in one run
WORKER_TASK_RETRIES = 1  # how often a task whose worker died runs again on the restarted one


def backend_config(plan: RunPlan, verbose: bool) -> dict:
    """Ray backend settings: per-client resources and a quiet Ray unless ``verbose``.

    With ``runtime.ray_address`` the runtime connects to that Ray cluster (started with
    ``ray start --head`` and joined by other machines) instead of starting Ray here; the
    cluster's machines need fedsim installed and the dataset cache and run directory on a
    shared path.
    """
    runtime = plan.config.runtime
    init_args: dict = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if runtime.ray_address:
        init_args["address"] = runtime.ray_address
    else:
        init_args["num_cpus"] = runtime.ray_num_cpus or os.cpu_count() or 1
    return {
        # Flower passes these to Ray's actor options: a worker process that dies (killed, out of
        # memory, a crash in native code) is restarted by Ray, and the task it was running (and
        # any sent while it restarts) runs again once on the new process -- with the same seeds,
        # so the round's results do not change. A task that kills its worker twice fails: its
        # clients are recorded as failed for that round. Without this, Flower keeps the dead
        # actor in its pool and every later message to it fails.
        "client_resources": {"num_cpus": runtime.num_cpus_per_client, "num_gpus": runtime.num_gpus_per_client,
                             "max_restarts": WORKER_RESTARTS, "max_task_retries": WORKER_TASK_RETRIES},
        "init_args": init_args,
    }


def start_ray(init_args: dict) -> None:
    """Start Ray (or join ``init_args["address"]``) as Flower's Ray backend would, keeping fedsim's
    SIGINT/SIGTERM handlers.

    The same call as ``RayBackend.init_ray`` of Flower 1.41: the dashboard off unless asked for,
    and this process's ``sys.path`` handed to Ray's workers as ``PYTHONPATH``. Does nothing
    when Ray already runs in this process.
    """
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **{"include_dashboard": False, **init_args})
    reclaim_signals()  # ray.init took SIGTERM over (see the module)


def run_simulation(server_app: ServerApp, plan: RunPlan, verbose: bool = False) -> None:
    """Run ``server_app`` against the plan's simulated nodes (``plan.nodes``) hosting fedsim's ClientApp."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedsim.clients.app import client_app

    if not plan.config.runtime.ray_address:  # Ray's processes will be this process's descendants
        start_reaper()
    backend = backend_config(plan, verbose)
    with quiet_flower(verbose), quiet_ray_teardown(verbose):
        start_ray(backend["init_args"])
        try:
            flwr_run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=plan.nodes,
                backend_config=backend,
                verbose_logging=verbose,
            )
        finally:  # Flower shuts Ray down when its runtime ends; not if it failed before starting it
            import ray

            if ray.is_initialized():
                ray.shutdown()
