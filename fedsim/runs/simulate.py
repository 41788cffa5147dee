"""Start Flower's simulation runtime (Ray backend) for a ServerApp and fedsim's ClientApp."""

from __future__ import annotations

import logging
import os

from flwr.serverapp import ServerApp

from fedsim.config import ExperimentConfig
from fedsim.ops.logs import quiet_flower
from fedsim.ops.reaper import start_reaper


WORKER_RESTARTS = 100  # how often Ray brings back a dead worker process in one run
WORKER_TASK_RETRIES = 1  # how often a task whose worker died runs again on the restarted one


def worker_count(config: ExperimentConfig) -> int:
    """Cohort executor: ``simulation.workers``, or as many as the per-client resources allow.

    The automatic count is the CPUs Ray may use divided by ``num_cpus_per_client`` (and, with
    ``num_gpus_per_client > 0``, the visible GPUs divided by it), at least 1 and at most the
    number of clients.
    """
    sim = config.simulation
    if sim.workers > 0:
        return min(sim.workers, config.partition.num_clients)
    cpus = sim.ray_num_cpus or os.cpu_count() or 1
    count = int(cpus // sim.num_cpus_per_client)
    if sim.num_gpus_per_client > 0:
        import torch

        count = min(count, int(torch.cuda.device_count() // sim.num_gpus_per_client))
    return max(1, min(count, config.partition.num_clients))


def node_count(config: ExperimentConfig) -> int:
    """Simulated SuperNodes: one per client, or the cohort executor's workers."""
    return worker_count(config) if config.simulation.executor == "cohort" else config.partition.num_clients


def backend_config(config: ExperimentConfig, verbose: bool) -> dict:
    """Ray backend settings: per-client resources and a quiet Ray unless ``verbose``.

    With ``simulation.ray_address`` the runtime connects to that Ray cluster (started with
    ``ray start --head`` and joined by other machines) instead of starting Ray here; the
    cluster's machines need fedsim installed and the dataset cache and run directory on a
    shared path.
    """
    sim = config.simulation
    init_args: dict = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if sim.ray_address:
        init_args["address"] = sim.ray_address
    else:
        init_args["num_cpus"] = sim.ray_num_cpus or os.cpu_count() or 1
    return {
        # Flower passes these to Ray's actor options: a worker process that dies (killed, out of
        # memory, a crash in native code) is restarted by Ray, and the task it was running (and
        # any sent while it restarts) runs again once on the new process -- with the same seeds,
        # so the round's results do not change. A task that kills its worker twice fails: its
        # clients are recorded as failed for that round. Without this, Flower keeps the dead
        # actor in its pool and every later message to it fails.
        "client_resources": {"num_cpus": sim.num_cpus_per_client, "num_gpus": sim.num_gpus_per_client,
                             "max_restarts": WORKER_RESTARTS, "max_task_retries": WORKER_TASK_RETRIES},
        "init_args": init_args,
    }


def run_simulation(server_app: ServerApp, config: ExperimentConfig, verbose: bool = False) -> None:
    """Run ``server_app`` against :func:`node_count` simulated nodes hosting fedsim's ClientApp."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedsim.clients.app import client_app

    if not config.simulation.ray_address:  # Ray's processes will be this process's descendants
        start_reaper()
    with quiet_flower(verbose):
        flwr_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=node_count(config),
            backend_config=backend_config(config, verbose),
            verbose_logging=verbose,
        )
