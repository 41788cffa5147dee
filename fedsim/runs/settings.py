"""Where a run's clients execute: ``[runtime]`` (Flower's simulation runtime, Ray resources) and
``[executor]`` (which executor, its workers and time limits)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.settings import Section, problem, problems, setting

if TYPE_CHECKING:  # type-only: the plan is resolved in this package, above the settings
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan

EXECUTOR_NAMES = ("cohort", "flower", "in-process")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
NEVER_WAITS = "fedsim never waits without a limit"


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


@dataclass
class RuntimeSettings(Section):
    """Flower's simulation runtime (Ray backend): resources per client, devices, start-up."""

    num_cpus_per_client: float = setting(1.0, "Ray CPUs per client (per worker with `executor.kind = "
                                         "\"cohort\"`), also the torch threads a client trains with; more than "
                                         "this machine has is refused before Ray starts")
    num_gpus_per_client: float = setting(0.0, "Ray GPUs per client or worker (fractions share one GPU, e.g. 0.25 "
                                         "lets four workers share it)")
    device: str = setting("auto", "`auto` (CUDA when visible; on Ray workers only with a GPU share, "
                          "`num_gpus_per_client > 0`), `cpu`, `cuda` or `cuda:N`")
    ray_num_cpus: int = setting(0, "CPUs Ray may use (0 = all)")
    ray_address: str = setting("", "run on an existing Ray cluster (`host:port` of a head started with "
                               "`ray start --head`; other machines join with `ray start --address ...`) instead of "
                               "starting Ray here; needs `executor.workers > 0`, fedsim on every machine and the "
                               "dataset cache and output folder on a shared path")
    node_wait: float = setting(300.0, "seconds to wait at the start for the federation's nodes (Ray's start-up; "
                               "under `flwr run` every shard's SuperNode); a node that joins later serves from "
                               "the next round")

    def check(self, prefix: str = "runtime") -> list[str]:
        return problems(prefix, [
            (self.num_cpus_per_client > 0, "num_cpus_per_client", self.num_cpus_per_client, "must be > 0"),
            (self.num_gpus_per_client >= 0, "num_gpus_per_client", self.num_gpus_per_client,
             "must be >= 0 (fractions share one GPU)"),
            (_valid_device(self.device), "device", self.device, f"allowed: {DEVICES_HELP}"),
            (self.ray_num_cpus >= 0, "ray_num_cpus", self.ray_num_cpus, "must be >= 0 (0 = all CPUs)"),
            (0 < self.node_wait < math.inf, "node_wait", self.node_wait,
             f"must be a finite number of seconds > 0 ({NEVER_WAITS})"),
        ])

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        """Per-client resources this machine cannot give, refused before Ray starts.

        Ray would otherwise accept the request and wait forever for a CPU or GPU that does not
        exist. On an existing cluster (``runtime.ray_address``) the cluster's resources are not
        known here, and neither the in-process executor nor the centralized baseline asks Ray
        for anything.
        """
        if self.ray_address or config.executor.kind == "in-process" or not plan.mode.federated:
            return []
        cpus = self.ray_num_cpus or os.cpu_count() or 1
        e: list[str] = []
        if self.num_cpus_per_client > cpus:
            e.append(problem("runtime.num_cpus_per_client", self.num_cpus_per_client,
                             f"this machine gives Ray {cpus} CPU(s) (runtime.ray_num_cpus or all CPUs); "
                             f"ask for at most {cpus}"))
        if self.num_gpus_per_client > 0:
            import torch

            gpus = torch.cuda.device_count()
            if self.num_gpus_per_client > gpus:
                e.append(problem("runtime.num_gpus_per_client", self.num_gpus_per_client,
                                 f"this machine has {gpus} visible GPU(s); use 0 on a machine without a GPU"
                                 if gpus == 0 else f"this machine has {gpus} visible GPU(s); ask for at most {gpus}"))
        return e


@dataclass
class ExecutorSettings(Section):
    """Which executor runs the clients' tasks (:mod:`fedsim.runs.executors`), and its limits."""

    kind: str = setting("cohort", "where client tasks run, with the same results whichever: `cohort` (Ray "
                        "workers, each round one message per worker with its share of the clients), `flower` "
                        "(one simulated node per client, one message per client: stock Flower's way), "
                        "`in-process` (the ClientApp called in fedsim's process; no Ray)")
    workers: int = setting(0, "`cohort`: worker nodes; 0 = as many as the resources allow (CPUs Ray may use / "
                           "`runtime.num_cpus_per_client`, and GPUs / `num_gpus_per_client` when > 0)")
    round_timeout: float = setting(3600.0, "seconds to wait for one round's replies (finite: fedsim never waits "
                                   "without a limit)")
    client_timeout: float = setting(0.0, "seconds one client may take on a worker; a client that takes longer is "
                                    "interrupted and recorded as failed while the worker goes on (0 = "
                                    "`round_timeout`)")
    streaming: bool = setting(False, "`cohort`: each worker replies with the weighted mean of its clients' "
                              "models instead of every model; only for strategies whose aggregate is exactly a "
                              "weighted mean (`fedavg`, `fedprox`, `fedavgm`, `fedadam`, `fedyogi`, `fedadagrad`) "
                              "and runs that need no client's own model; equal up to float summation order")

    def check(self, prefix: str = "executor") -> list[str]:
        return problems(prefix, [
            (self.kind in EXECUTOR_NAMES, "kind", self.kind, f"allowed: {', '.join(EXECUTOR_NAMES)}"),
            (self.workers >= 0, "workers", self.workers, "must be >= 0 (0 = as many as the resources allow)"),
            (0 < self.round_timeout < math.inf, "round_timeout", self.round_timeout,
             f"must be a finite number of seconds > 0 ({NEVER_WAITS})"),
            (0 <= self.client_timeout < math.inf, "client_timeout", self.client_timeout,
             "must be a finite number of seconds >= 0 (0 = executor.round_timeout)"),
            (not self.streaming or self.kind == "cohort", "streaming", self.streaming,
             "streaming aggregation happens in cohort workers: set executor.kind = 'cohort'"),
        ])

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        ray_address = config.runtime.ray_address
        e = problems("executor", [
            (not ray_address or self.kind != "cohort" or self.workers > 0, "workers", self.workers,
             "on an existing Ray cluster (runtime.ray_address) say how many workers to run: fedsim cannot "
             "see the cluster's CPUs before it connects"),
        ])
        if ray_address and self.kind == "in-process":
            e.append(problem("runtime.ray_address", ray_address,
                             "the in-process executor runs no Ray; use executor kind cohort or flower"))
        if self.streaming:
            e += self._streaming_problems(config, plan)
        return e

    @staticmethod
    def _streaming_problems(config: ExperimentConfig, plan: RunPlan) -> list[str]:
        """Streaming needs a weighted-mean strategy and nothing that reads each client's arrays."""
        e: list[str] = []
        if plan.strategy.known and not plan.strategy.error and plan.strategy.stream_key is None:
            from fedsim.strategies import STRATEGIES, STREAMABLE

            streamable = [n for n, e in STRATEGIES.items() if e.cls in STREAMABLE and n != config.strategy.name]
            e.append(problem("executor.streaming", True, f"strategy {config.strategy.name!r} does not aggregate a "
                             f"weighted mean of the client models; streaming works with: {', '.join(streamable)}"))
        if plan.evaluates_client_models:
            e.append(problem("executor.streaming", True, "every client's model is evaluated (one-shot mode or "
                             "evaluation.client_models): the models must travel; turn streaming off"))
        if plan.hooks_needing_client_arrays:
            e.append(problem("executor.streaming", True, f"hook(s) {', '.join(plan.hooks_needing_client_arrays)} "
                             "use other clients' models: turn streaming off"))
        return e
