"""Framework overhead: fedsim (Flower + Ray, and the in-process executor) vs a minimal FedAvg loop, same SGD steps.

Workload (defaults): LeNet-5, 100 clients x 50 synthetic samples, 20 clients per round,
5 rounds, no evaluation. Both sides train exactly the same clients (fedsim's seeded
sampler) with the same local loop (``fedsim.clients.training.train``) and the same
per-(seed, round, client) generators; the in-process loop averages state dicts with numpy.
The sides are named by ``--executors``: ``stock`` (stock Flower: Flower's ``FedAvg.start``, one
SuperNode per client, a ClientApp written the way Flower's tutorials write one -- a PyTorch
``DataLoader`` over the node's partition, loaded once per process), and fedsim's executors
``flower`` (Flower's simulation runtime, Ray, one node per client), ``cohort`` (the same
runtime, W worker nodes, one message per worker and round) and ``in-process`` (the ClientApp
called directly: the round loop, strategy and message costs without Ray). Stock Flower's round
times are the intervals between its ``evaluate_fn`` calls (after each aggregation); it samples
clients with its own generator, so its clients differ from fedsim's (same count and sizes). Repetitions are interleaved (every side, then the
loop, then again) because this machine is noisy, and the ratios compare medians measured in
the same invocation.

    python benchmarks/overhead.py                # defaults, 3 repetitions
    python benchmarks/overhead.py --repetitions 5 --clients 200 --per-round 40

Prints per-round medians, the overhead ratio (median fedsim round / median loop round) and
clients trained per second on each side; ``--json`` also writes the numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
import torch

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

from fedsim.clients.client import LocalClient
from fedsim.clients.worker import WorkerRun
from fedsim.config import ExperimentConfig
from fedsim.datasets import CachedDataset
from fedsim.runs.experiment import run
from fedsim.ops.logs import quiet_flower
from fedsim.models import build_model
from fedsim.runs.plan import initial_model
from fedsim.runs.prepare import prepare
from fedsim.core.sampling import TRAIN, sample_clients
from fedsim.runs.simulate import backend_config
from fedsim.core.spec import PartitionIndex, RunSpec
from fedsim.config.validation import load_config


def workload(args: argparse.Namespace, out: Path, name: str, executor: str = "flower") -> ExperimentConfig:
    return load_config(None, {
        "executor.kind": executor,
        "executor.workers": args.workers,
        "engine.kind": args.engine,
        "runtime.device": args.device,
        "runtime.num_gpus_per_client": args.gpus_per_client,
        "seed": args.seed,
        "data.dataset": "synthetic",
        "data.synthetic_train": args.clients * args.samples,
        "data.synthetic_test": 100,
        "partition.scheme": "iid",
        "partition.num_clients": args.clients,
        "partition.val_fraction": 0.0,
        "model.name": args.model,
        "train.rounds": args.rounds,
        "train.clients_per_round": args.per_round,
        "train.batch_size": args.batch_size,
        "train.lr": 0.05,
        "evaluation.centralized_every": 0,
        "evaluation.federated_every": 0,
        "output.dir": str(out),
        "output.name": name,
        "output.figures": False,
    })


SIDES = {"stock": "flower", "cohort+streaming": "cohort"}  # side name -> executor.kind


def fedsim_rounds(config: ExperimentConfig) -> tuple[list[float], float]:
    """Per-round wall seconds of a real fedsim run, and the whole run's wall time."""
    started = time.perf_counter()
    result = run(config, progress=False)
    total = time.perf_counter() - started
    rounds = result.rounds[result.rounds["round"] > 0]["wall_seconds"].tolist()
    shutil.rmtree(result.path)
    return rounds, total


# ------------------------------------------------------------------ stock Flower, as its tutorials write it

stock_client = ClientApp()
_STOCK_DATA: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _stock_partition(run_dir: str, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's training partition as normalised tensors, loaded once per process."""
    key = (run_dir, partition_id)
    if key not in _STOCK_DATA:
        spec = RunSpec.load(run_dir)
        arrays = CachedDataset.open(spec.dataset_folder).load(mmap=True)
        idx = np.sort(PartitionIndex.load(run_dir).train_of(partition_id))
        x = torch.from_numpy(np.asarray(arrays["x_train"][idx])).permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        _STOCK_DATA[key] = ((x - mean) / std, torch.from_numpy(np.asarray(arrays["y_train"][idx], dtype=np.int64)))
    return _STOCK_DATA[key]


@stock_client.train()
def stock_train(msg: Message, context: Context) -> Message:
    """Load the global model, train one epoch with a DataLoader, reply with weights and examples."""
    config = msg.content["config"]
    x, y = _stock_partition(str(config["run-dir"]), int(context.node_config["partition-id"]))
    model = build_model(str(config["model"]), int(config["num-classes"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    model.train()
    for _ in range(int(config["epochs"])):
        for xb, yb in DataLoader(TensorDataset(x, y), batch_size=int(config["batch-size"]), shuffle=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


def stock_rounds(config: ExperimentConfig) -> tuple[list[float], float]:
    """Per-round wall seconds of stock Flower (FedAvg.start, one SuperNode per client), and the whole run."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    prepared = prepare(config)  # the same partition and initial weights as fedsim's runs
    stamps: list[float] = []
    t = config.train
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001
        n = config.partition.num_clients
        strategy = FedAvg(fraction_train=t.clients_per_round / n, fraction_evaluate=0.0,
                          min_train_nodes=t.clients_per_round, min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_model(config, prepared.dataset).state_dict()),
                       num_rounds=t.rounds, train_config=ConfigRecord({
                           "run-dir": str(prepared.staging.resolve()), "model": config.model.name,
                           "num-classes": prepared.dataset.num_classes, "lr": t.lr, "epochs": t.local_epochs,
                           "batch-size": t.batch_size}),
                       evaluate_fn=lambda server_round, arrays: stamps.append(time.perf_counter()) or MetricRecord())

    started = time.perf_counter()
    try:
        with quiet_flower(False):
            flwr_run_simulation(server_app=server, client_app=stock_client, num_supernodes=config.partition.num_clients,
                                backend_config=backend_config(prepared, False), verbose_logging=False)
    finally:
        shutil.rmtree(prepared.staging, ignore_errors=True)
    return list(np.diff(stamps)), time.perf_counter() - started


def loop_rounds(config: ExperimentConfig) -> list[float]:
    """The same rounds in one process: sample, train each client in turn, average."""
    prepared = prepare(config)
    try:
        worker = WorkerRun.open(prepared.staging.resolve())
        model = worker.model()
        global_state = {k: v.detach().cpu().numpy().copy()
                        for k, v in initial_model(config, prepared.dataset).state_dict().items()}
        k = prepared.clients_per_round
        times = []
        for server_round in range(1, config.train.rounds + 1):
            started = time.perf_counter()
            total = {key: np.zeros_like(v, dtype=np.float64) for key, v in global_state.items()}
            weight = 0
            for client_id in sample_clients(config.seed, server_round, TRAIN, config.partition.num_clients, k):
                model.load_state_dict({key: torch.from_numpy(v) for key, v in global_state.items()})
                stats = LocalClient(client_id, worker).fit(model, server_round)
                for key, value in model.state_dict().items():
                    total[key] += value.detach().cpu().numpy() * stats.num_examples
                weight += stats.num_examples
            global_state = {key: np.asarray(v / weight).astype(global_state[key].dtype)  # 0-d buffers too
                            for key, v in total.items()}
            times.append(time.perf_counter() - started)
        return times
    finally:
        shutil.rmtree(prepared.staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50, help="samples per client")
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executors", default="stock,flower,cohort,in-process",
                        help="sides to measure, comma-separated: executor.kind values, 'stock' (stock Flower) "
                             "and 'cohort+streaming' (cohort workers sending partial means)")
    parser.add_argument("--workers", type=int, default=0, help="cohort executor workers (0 = automatic)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where clients and the loop train")
    parser.add_argument("--engine", default="sequential", choices=["sequential", "vectorized"],
                        help="how fedsim's workers train their clients")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="Ray GPU share per worker (cuda: e.g. 0.5 lets two workers share a GPU)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.rounds < 1 or not (1 <= args.per_round <= args.clients):
        parser.error("need repetitions >= 1, rounds >= 1 and 1 <= per-round <= clients")
    if args.device == "cuda" and not (torch.cuda.is_available() and args.gpus_per_client > 0):
        parser.error("--device cuda needs a visible GPU and --gpus-per-client > 0 (the Ray workers' share)")

    out = Path(tempfile.mkdtemp(prefix="fedsim-bench-"))
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    rounds_of: dict[str, list[float]] = {e: [] for e in executors}
    totals_of: dict[str, list[float]] = {e: [] for e in executors}
    loop_times: list[float] = []
    try:
        for rep in range(args.repetitions):
            line = []
            for executor in executors:
                measure = stock_rounds if executor == "stock" else fedsim_rounds
                config = workload(args, out, f"{executor}-{rep}", SIDES.get(executor, executor))
                config.executor.streaming = executor == "cohort+streaming"
                rounds, total = measure(config)
                rounds_of[executor] += rounds
                totals_of[executor].append(total)
                line.append(f"{executor} {np.round(rounds, 3).tolist()} (run {total:.1f} s)")
            loop_times += loop_rounds(workload(args, out, f"loop-{rep}"))
            print(f"repetition {rep + 1}/{args.repetitions}: " + ", ".join(line)
                  + f", loop {np.round(loop_times[-args.rounds:], 3).tolist()}", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    loop_median = statistics.median(loop_times)
    results: dict = {"workload": vars(args) | {"json": None}, "cpus": os.cpu_count(),
                     "loop_round_median_s": loop_median, "loop_clients_per_s": args.per_round / loop_median}
    for executor in executors:
        median = statistics.median(rounds_of[executor])
        results[executor] = {"round_median_s": median, "ratio_to_loop": median / loop_median,
                             "clients_per_s": args.per_round / median,
                             "run_median_s": statistics.median(totals_of[executor])}
    print(f"\nworkload: {args.model}, {args.clients} clients x {args.samples} samples, "
          f"{args.per_round} clients/round, {args.rounds} rounds, batch {args.batch_size}, "
          f"{args.repetitions} repetitions, {os.cpu_count()} CPUs")
    print(f"{'side':<12} {'median round':>13} {'ratio to loop':>14} {'clients/s':>10} {'whole run':>10}")
    for executor in executors:
        r = results[executor]
        print(f"{executor:<12} {r['round_median_s']:>11.3f} s {r['ratio_to_loop']:>13.2f}x "
              f"{r['clients_per_s']:>10.1f} {r['run_median_s']:>8.1f} s")
    print(f"{'loop':<12} {loop_median:>11.3f} s {1.0:>13.2f}x {results['loop_clients_per_s']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
