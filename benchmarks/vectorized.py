"""The vectorized engine vs the sequential one: per model and cohort size, and a whole run.

Two measurements, each printing ratios of medians measured side by side in one invocation
(this machine is noisy; repetitions are interleaved):

* ``engine`` (default): K clients of one architecture, ``--samples`` synthetic samples each,
  one local epoch of batch-10 SGD with momentum, on ``--device``. Sides: ``sequential``
  (:func:`fedsim.clients.training.train` one client after another), ``sequential+compile``
  (the same with the model ``torch.compile``-d: the fair baseline on a GPU), ``vectorized``
  (:class:`fedsim.clients.lockstep.engine.LockstepTrainer`, eager) and ``vectorized+compile``
  (the whole lockstep step compiled; the compile time is reported on its own, not in the
  medians). Prints seconds per cohort, clients per second and, on CUDA, the fraction of
  wall time the GPU was busy (kernel time from the profiler). ``--unequal`` gives clients
  sizes spread around ``--samples`` and also times the alternative to fedsim's
  group-by-batch-size steps: padding every batch to full size and masking padded samples out
  of the loss (for models without BatchNorm, where padding would corrupt the statistics).
  ``--augment TRANSFORM`` gives clients uint8 images that the ``augment`` hook transforms
  online (then normalised), as with hooks in a run, and adds the side ``vectorized+client-augment``:
  the lockstep engine with one augmentation call per client and step instead of one per step
  group (how it prepared batches before the cohort call).
* ``run``: a real fedsim run on the cohort executor (Flower + Ray), sequential vs vectorized
  (+ compile): seconds per round after the first (the first compiles), and the compile time.
  Each engine runs in its best shape on the same CPUs: the sequential engine with one
  single-threaded worker per CPU (the default), the vectorized one with one worker holding
  every CPU (its lockstep steps are large enough to use them all; ``--vectorized-cpus``).

    python benchmarks/vectorized.py                                  # engine: lenet5, resnet8; K = 10, 50, 100
    python benchmarks/vectorized.py --models lenet5 --cohorts 50 --unequal
    python benchmarks/vectorized.py --models lenet5 --cohorts 50 --augment flip_crop --no-compile
    python benchmarks/vectorized.py run --clients 1000 --per-round 100 --rounds 4
    python benchmarks/vectorized.py round --models lenet5 --clients 1000 --per-round 100 --rounds 4

* ``round``: a whole vectorized round (in-process executor; cohort executor with one worker
  holding every CPU) against the limit, the same number of clients trained in lockstep with
  nothing else: the ratio, and the machinery per client in ms.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fedsim.clients import training
from fedsim.clients.hooks import AugmentHook, HookContext, LocalData
from fedsim.clients.hooks.augmentation import TRANSFORMS
from fedsim.clients.lockstep.engine import LockstepClient, LockstepTrainer
from fedsim.clients.preparation import PrepareBatch, batch_preparation
from fedsim.runs.experiment import run
from fedsim.ops.logs import quiet_flower
from fedsim.models import build_model
from fedsim.core.recipe import SGDRecipe
from fedsim.config.validation import load_config


# ------------------------------------------------------------------------------ engine level

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, for --augment


def make_clients(k: int, samples: int, unequal: bool, device: torch.device,
                 images: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic clients: float inputs, or (``images``) uint8 images to prepare per batch."""
    rng = torch.Generator().manual_seed(0)
    sizes = [samples] * k if not unequal else \
        torch.randint(max(2, samples // 2), samples * 3 // 2 + 1, (k,), generator=rng).tolist()
    return [(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=rng).to(device) if images
             else torch.randn(n, 3, 32, 32, generator=rng).to(device),
             torch.randint(0, 10, (n,), generator=rng).to(device)) for n in sizes]


def online_augment(transform: str, client_id: int, x: torch.Tensor, y: torch.Tensor) -> PrepareBatch:
    """Client ``client_id``'s batch preparation with the ``augment`` hook online, as a run builds it."""
    hooks = [AugmentHook(transform=transform, mode="online")]
    ctx = HookContext(seed=0, server_round=1, client_id=client_id, device=x.device, global_model=None,
                      normalize=lambda xb: training.normalize(xb, MEAN, STD), build_model=None,
                      recipe=None, peers=[])
    hooks[0].prepare(LocalData(x, y, 10), ctx)
    return batch_preparation(hooks, ctx, MEAN, STD)


def preparations(data: list, augment: str | None, per_client: bool = False) -> list[PrepareBatch | None]:
    """Fresh preparations of the clients' batches (None: their data are the inputs); ``per_client``
    wraps each in a plain function, which the lockstep engine calls per client and step."""
    if augment is None:
        return [None] * len(data)
    prepared = [online_augment(augment, k, x, y) for k, (x, y) in enumerate(data)]
    return [(lambda xb, p=p: p(xb)) for p in prepared] if per_client else prepared


def sequential(model: torch.nn.Module, data: list, recipe: SGDRecipe, augment: str | None = None) -> None:
    start = copy.deepcopy(model.state_dict())
    for k, ((x, y), prepare) in enumerate(zip(data, preparations(data, augment))):
        model.load_state_dict(start)
        training.train(model, x, y, recipe, training.seeded_generator(0, 1, k), prepare_batch=prepare)


def lockstep_clients(model: torch.nn.Module, data: list, augment: str | None = None,
                     per_client: bool = False) -> list[LockstepClient]:
    state = model.state_dict()
    return [LockstepClient(x, y, state, training.seeded_generator(0, 1, k), prepare)
            for k, ((x, y), prepare) in enumerate(zip(data, preparations(data, augment, per_client)))]


def masked_padding(model: torch.nn.Module, data: list, recipe: SGDRecipe) -> None:
    """The alternative to grouping by batch size: pad each step's batches to full size, mask the loss."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: torch.stack([p.detach()] * len(data)) for n, p in model.named_parameters()}
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    plans = [training_plan(len(y), recipe, k) for k, (_, y) in enumerate(data)]
    b = recipe.batch_size

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(functional_call(model, p, (x,)), y, reduction="none")
        return (per_sample * w).sum() / w.sum().clamp(min=1)

    step = vmap(grad_and_value(loss))
    device = data[0][0].device
    for s in range(max(len(p) for p in plans)):
        xs, ys, ws = [], [], []
        for (x, y), plan in zip(data, plans):
            idx = plan[s] if s < len(plan) else torch.zeros(0, dtype=torch.long)
            pad = b - len(idx)
            full = torch.cat([idx, torch.zeros(pad, dtype=torch.long)]).to(device)
            xs.append(x[full]), ys.append(y[full])
            ws.append(torch.cat([torch.ones(len(idx)), torch.zeros(pad)]).to(device))
        grads, _ = step(params, torch.stack(xs), torch.stack(ys), torch.stack(ws))
        active = (torch.stack(ws).sum(1) > 0).float()
        for n in names:  # clients without a batch must not move: where(active)
            shape = (-1,) + (1,) * (params[n].dim() - 1)
            buf = momentum[n].mul(recipe.momentum).add(grads[n])
            momentum[n] = torch.where(active.view(shape) > 0, buf, momentum[n])
            params[n] = params[n] - recipe.lr * momentum[n] * active.view(shape)


def training_plan(n: int, recipe: SGDRecipe, k: int) -> list[torch.Tensor]:
    from fedsim.clients.lockstep.engine import batch_plan

    return batch_plan(n, recipe, training.seeded_generator(0, 1, k), False)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def gpu_busy(fn: Callable[[], object]) -> float:
    """Fraction of ``fn``'s wall time during which CUDA kernels ran (the profiler's kernel time)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    kernel_us = sum(e.device_time_total for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernel_us / 1e6 / wall


def engine_benchmark(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = SGDRecipe(epochs=1, batch_size=args.batch_size, lr=0.05, momentum=0.9)
    rows = []
    for name in args.models.split(","):
        for k in (int(c) for c in args.cohorts.split(",")):
            torch.manual_seed(0)
            model = build_model(name, 10, 0, 3).to(device)
            augment = args.augment
            data = make_clients(k, args.samples, args.unequal, device, images=augment is not None)
            eager = LockstepTrainer(model, (3, 32, 32))
            compiled = LockstepTrainer(model, (3, 32, 32), compile=True)
            compiled_model = copy.deepcopy(model)
            compiled_model.forward = torch.compile(compiled_model.forward)
            sides: dict[str, Callable[[], object]] = {
                "sequential": lambda: sequential(model, data, recipe, augment),
                "vectorized": lambda: eager.train(lockstep_clients(model, data, augment), recipe),
            }
            if augment is not None:
                sides["vectorized+client-augment"] = lambda: eager.train(
                    lockstep_clients(model, data, augment, per_client=True), recipe)
            if args.compile:
                sides["sequential+compile"] = lambda: sequential(compiled_model, data, recipe, augment)
                sides["vectorized+compile"] = lambda: compiled.train(lockstep_clients(model, data, augment), recipe)
            if args.unequal and not eager.functional.has_batchnorm and augment is None:
                sides["padded+masked"] = lambda: masked_padding(model, data, recipe)
            warm = {side: timed(fn, device) for side, fn in sides.items()}  # first calls compile
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.repetitions):
                for side, fn in sides.items():
                    times[side].append(timed(fn, device))
            row = {"model": name, "clients": k, "samples": sum(len(y) for _, y in data) // k, "device": str(device),
                   "compile_seconds": {s: round(warm[s] - statistics.median(times[s]), 1)
                                       for s in sides if s.endswith("compile")}}
            base = statistics.median(times["sequential"])
            for side in sides:
                median = statistics.median(times[side])
                row[side] = {"seconds": median, "clients_per_s": k / median, "speedup": base / median}
                if device.type == "cuda":
                    row[side]["gpu_busy"] = gpu_busy(sides[side])
            rows.append(row)
            print_row(row, list(sides))
    return rows


def print_row(row: dict, sides: list[str]) -> None:
    cells = ", ".join(f"{s} {row[s]['seconds']:.3f}s ({row[s]['speedup']:.2f}x"
                      + (f", GPU busy {row[s]['gpu_busy']:.0%}" if "gpu_busy" in row[s] else "") + ")" for s in sides)
    print(f"{row['model']:>12} K={row['clients']:<4} n={row['samples']:<4} {cells}"
          + (f"  compile {row['compile_seconds']}" if row["compile_seconds"] else ""), flush=True)


# ------------------------------------------------------------------------------ whole runs


def run_config(args: argparse.Namespace, out: Path, name: str, engine: str, compile_step: bool,  # noqa: ANN201
               cpus: float, executor: str = "cohort"):
    return load_config(None, {
        "executor.kind": executor, "runtime.num_cpus_per_client": cpus, "runtime.device": args.device,
        "engine.kind": engine, "engine.compile": compile_step,
        "data.dataset": "synthetic", "data.synthetic_train": args.clients * args.samples, "data.synthetic_test": 100,
        "partition.scheme": "iid", "partition.num_clients": args.clients, "partition.val_fraction": 0.0,
        "model.name": args.models.split(",")[0], "train.rounds": args.rounds, "train.clients_per_round": args.per_round,
        "train.batch_size": args.batch_size, "train.lr": 0.05,
        "evaluation.centralized_every": 0, "evaluation.federated_every": 0,
        "output.dir": str(out), "output.name": name, "output.figures": False,
    })


def run_benchmark(args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="fedsim-vectorized-"))
    cpus = os.cpu_count() or 1
    # each engine in its best shape on the same CPUs: the sequential engine's tiny batches use one
    # thread well, so one single-threaded worker per CPU; a lockstep step uses every thread, so one
    # worker with all CPUs (--vectorized-cpus)
    vectorized_cpus = args.vectorized_cpus or cpus
    sides = {"sequential": ("sequential", False, 1.0),
             "sequential, vectorized's shape": ("sequential", False, vectorized_cpus),
             "vectorized": ("vectorized", False, vectorized_cpus),
             "vectorized+compile": ("vectorized", True, vectorized_cpus)}
    rounds: dict[str, list[float]] = {s: [] for s in sides}
    compile_seconds: dict[str, list[float]] = {s: [] for s in sides}
    try:
        for repetition in range(args.repetitions):
            for side, (engine, compile_step, side_cpus) in sides.items():
                with quiet_flower(False):
                    result = run(run_config(args, out, f"{side}-{repetition}", engine, compile_step, side_cpus),
                                 progress=False)
                trained = result.rounds[result.rounds["round"] > 0]
                rounds[side] += trained["wall_seconds"].iloc[1:].tolist()  # the first round compiles
                compile_seconds[side].append(float(trained["compile_seconds"].sum()))
                shutil.rmtree(result.path)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(rounds["sequential"])
    summary = {"workload": vars(args), "sides": {}}
    print(f"{args.models.split(',')[0]}, {args.clients} clients x {args.samples} samples, {args.per_round} per round, "
          f"batch {args.batch_size}, cohort executor on {cpus} CPUs (sequential: {cpus} workers x 1 CPU; "
          f"vectorized: {cpus / vectorized_cpus:g} worker(s) x {vectorized_cpus:g} CPUs):")
    for side in sides:
        median = statistics.median(rounds[side])
        summary["sides"][side] = {"round_seconds": median, "ratio_to_sequential": median / base,
                                  "clients_per_s": args.per_round / median,
                                  "compile_seconds_per_run": statistics.median(compile_seconds[side])}
        print(f"  {side:>30}: {median:.3f} s/round ({median / base:.2f}x sequential's time), "
              f"{args.per_round / median:.0f} clients/s; compile {statistics.median(compile_seconds[side]):.1f} s "
              "(summed over workers, round 1)")
    return summary


def round_benchmark(args: argparse.Namespace) -> dict:
    """A vectorized round against the same clients' training alone: the ratio and the machinery per client.

    Sides, interleaved per repetition: a whole run with the in-process executor and one with the
    cohort executor (one worker holding every CPU), both on the vectorized engine; and the
    limit, ``training alone``: :class:`LockstepTrainer` on ``--per-round`` clients of
    ``--samples`` samples (the same model, batches and SGD), data already on the device, nothing
    else. Every side uses all CPUs' threads. Machinery per client = (round - training alone) /
    clients per round.
    """
    out = Path(tempfile.mkdtemp(prefix="fedsim-round-"))
    cpus = os.cpu_count() or 1
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    name = args.models.split(",")[0]
    recipe = SGDRecipe(epochs=1, batch_size=args.batch_size, lr=0.05, momentum=0.9)
    torch.manual_seed(0)
    model = build_model(name, 10, 0, 3).to(device)
    data = make_clients(args.per_round, args.samples, False, device)
    trainer = LockstepTrainer(model, (3, 32, 32))
    trainer.train(lockstep_clients(model, data), recipe)  # warm-up
    rounds: dict[str, list[float]] = {"in-process": [], "cohort": [], "training alone": []}
    try:
        for repetition in range(args.repetitions):
            for side, executor in (("in-process", "in-process"), ("cohort", "cohort")):
                config = run_config(args, out, f"{side}-{repetition}", "vectorized", False, float(cpus), executor)
                with quiet_flower(False):
                    result = run(config, progress=False)
                trained = result.rounds[result.rounds["round"] > 0]
                rounds[side] += trained["wall_seconds"].iloc[1:].tolist()  # the first round warms up
                shutil.rmtree(result.path)
            for _ in range(args.rounds - 1):
                rounds["training alone"].append(timed(lambda: trainer.train(lockstep_clients(model, data), recipe),
                                                      device))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    limit = statistics.median(rounds["training alone"])
    summary = {"workload": vars(args), "cpus": cpus, "device": str(device), "sides": {}}
    if device.type == "cuda":  # kernel time over a whole in-process run's wall time (round 1 and start-up included)
        config = run_config(args, out, "profiled", "vectorized", False, float(cpus), "in-process")
        with quiet_flower(False):
            summary["gpu_busy_whole_run"] = gpu_busy(lambda: shutil.rmtree(run(config, progress=False).path))
        print(f"  GPU busy during a whole in-process run: {summary['gpu_busy_whole_run']:.0%}")
    print(f"{name}, {args.clients} clients x {args.samples} samples, {args.per_round} per round, batch "
          f"{args.batch_size}, momentum 0.9, vectorized engine, {cpus} CPUs, {device}; rounds 2-{args.rounds} x "
          f"{args.repetitions} repetitions (medians):")
    for side, times in rounds.items():
        median = statistics.median(times)
        machinery = (median - limit) / args.per_round * 1000
        summary["sides"][side] = {"round_seconds": median, "ratio_to_training": median / limit,
                                  "machinery_ms_per_client": machinery}
        print(f"  {side:>15}: {median:.3f} s/round, {median / limit:.2f}x the training alone"
              + (f", {machinery:.1f} ms of machinery per client" if side != "training alone" else ""), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=("engine", "run", "round"), default="engine")
    parser.add_argument("--models", default="lenet5,resnet8")
    parser.add_argument("--cohorts", default="10,50,100", help="engine: clients trained together")
    parser.add_argument("--samples", type=int, default=50, help="samples per client")
    parser.add_argument("--unequal", action="store_true", help="engine: client sizes spread around --samples")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--augment", choices=TRANSFORMS, help="engine: uint8 images augmented online by the "
                        "augment hook; adds the side with one augmentation call per client and step")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="engine: skip compiled sides")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="engine: torch threads (0 = torch's default)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000, help="run: population")
    parser.add_argument("--per-round", type=int, default=100, help="run: clients per round")
    parser.add_argument("--rounds", type=int, default=4, help="run: rounds per run (the first compiles)")
    parser.add_argument("--vectorized-cpus", type=float, default=0,
                        help="run: CPUs per worker for the vectorized sides (0 = all: one worker)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = {"engine": engine_benchmark, "run": run_benchmark, "round": round_benchmark}
    results = modes[args.mode](args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
