"""Big clients with online augmentation: a fedsim round against a plain PyTorch loop of the same work.

Workload (NIID-Bench's CIFAR-10 setup, Li, Diao, Chen and He, "Federated Learning on Non-IID
Data Silos: An Experimental Study", ICDE 2022): 10 clients, Dirichlet(0.5) label skew, the
"simple CNN" (``niid_cnn``), batch 64, SGD lr 0.01 momentum 0.9, every client every round,
``--epochs`` local epochs (NIID-Bench: 10), online ``flip_crop`` augmentation (the ``augment``
hook: random crop with 4 pixels of zero padding and a horizontal flip, per sample).

Sides, interleaved per repetition, each with one torch thread:

* ``fedsim``: a whole run with the in-process executor and the sequential engine; its round
  times are rounds.csv's ``wall_seconds`` of rounds 2.. (round 1 opens the dataset);
* ``plain loop``: the same clients (the run's own partition), model, initial weights, recipe and
  per-sample augmentation written as a plain PyTorch loop (a batch is padded once, each sample
  cropped at its own offsets and flipped, normalised, then an SGD step), then FedAvg of the
  state dicts. No framework, no checkpoints, no evaluation.

The ratio is fedsim's median round over the plain loop's. Data: CIFAR-10 as an ``.npz``
(``--data-dir``, default ``$FEDSIM_DATA_DIR``).

    python benchmarks/augment.py --data-dir /path/to/cifar10            # 2 local epochs
    python benchmarks/augment.py --data-dir /path/to/cifar10 --epochs 10 --repetitions 1
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
import torch.nn.functional as F

from fedsim.config.validation import load_config
from fedsim.core.spec import PartitionIndex
from fedsim.datasets import CachedDataset
from fedsim.ops.logs import quiet_flower
from fedsim.runs.experiment import run
from fedsim.runs.plan import initial_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def config_for(args: argparse.Namespace, out: Path, name: str):  # noqa: ANN201 - an ExperimentConfig
    return load_config(None, {
        "seed": args.seed, "executor.kind": "in-process", "runtime.num_cpus_per_client": 1.0,
        "engine.kind": "sequential", "data.dataset": "npz", "data.data_dir": str(args.data_dir),
        "data.path": "cifar10.npz", "partition.scheme": "dirichlet", "partition.num_clients": 10,
        "partition.alpha": 0.5, "partition.val_fraction": 0.0, "model.name": "niid_cnn",
        "train.rounds": args.rounds, "train.clients_per_round": 10, "train.local_epochs": args.epochs,
        "train.batch_size": 64, "train.lr": 0.01, "train.momentum": 0.9,
        "hooks": [{"name": "augment", "transform": "flip_crop", "mode": "online"}],
        "evaluation.centralized_every": 0, "evaluation.federated_every": 0,
        "output.dir": str(out), "output.name": name, "output.figures": False,
    })


def fedsim_rounds(config) -> tuple[list[float], Path]:  # noqa: ANN001
    with quiet_flower(False):
        result = run(config, progress=False)
    trained = result.rounds[result.rounds["round"] > 0]
    return trained["wall_seconds"].iloc[1:].tolist(), result.path


def flip_crop(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (4 pixels of zero padding) and horizontal flip, as a user would write it."""
    n, _, h, w = xb.shape
    padded = F.pad(xb, (4, 4, 4, 4))
    top, left = torch.randint(0, 9, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(h)
    cols = torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w)) + left[:, None]
    return padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def plain_round(model: torch.nn.Module, clients: list[tuple[torch.Tensor, torch.Tensor]], epochs: int,
                seed: int) -> float:
    """One FedAvg round of the same work as a plain PyTorch loop; its seconds."""
    started = time.perf_counter()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    total = sum(len(y) for _, y in clients)
    summed = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in start.items()}
    for k, (x, y) in enumerate(clients):
        model.load_state_dict(start)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(seed * 1000 + k)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(y), 64):
                idx = order[i : i + 64]
                xb = (flip_crop(x[idx], generator).float() / 255 - mean) / std
                loss = F.cross_entropy(model(xb), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        for name, value in model.state_dict().items():
            summed[name] += value.double() * len(y)
    model.load_state_dict({k: (v / total).to(start[k].dtype) for k, v in summed.items()})
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDSIM_DATA_DIR", "data")),
                        help="the folder holding cifar10.npz")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs (NIID-Bench: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="fedsim rounds per repetition (the first is not timed)")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if not (args.data_dir / "cifar10.npz").is_file():
        parser.error(f"--data-dir {args.data_dir}: no cifar10.npz there")
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="fedsim-augment-"))
    times: dict[str, list[float]] = {"fedsim": [], "plain loop": []}
    try:
        for repetition in range(args.repetitions):
            config = config_for(args, out, f"run-{repetition}")
            rounds, path = fedsim_rounds(config)
            times["fedsim"] += rounds
            torch.set_num_threads(1)
            if repetition == 0:  # the same clients and initial model as the run
                partition = PartitionIndex.load(path)
                arrays = CachedDataset.open(config_dataset(config)).load(mmap=True)
                clients = [(torch.from_numpy(np.ascontiguousarray(arrays["x_train"][np.sort(partition.train_of(c))]))
                            .permute(0, 3, 1, 2).contiguous(),
                            torch.from_numpy(np.asarray(arrays["y_train"][np.sort(partition.train_of(c))]).astype(np.int64)))
                           for c in range(partition.num_clients)]
            shutil.rmtree(path)
            model = initial_model(config, CachedDataset.open(config_dataset(config)))
            for _ in range(max(1, args.rounds - 1)):
                times["plain loop"].append(plain_round(model, clients, args.epochs, args.seed))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    fedsim, plain = statistics.median(times["fedsim"]), statistics.median(times["plain loop"])
    sizes = [len(y) for _, y in clients]
    print(f"NIID-Bench round: CIFAR-10, 10 clients ({min(sizes)}-{max(sizes)} samples), Dirichlet(0.5), niid_cnn, "
          f"{args.epochs} local epochs, batch 64, online flip + crop, one torch thread; "
          f"{args.repetitions} repetitions (medians):")
    print(f"  fedsim (in-process, sequential): {fedsim:.2f} s/round  {times['fedsim']}")
    print(f"  plain PyTorch loop:              {plain:.2f} s/round  {times['plain loop']}")
    print(f"  ratio: {fedsim / plain:.3f}x the plain loop")
    if args.json:
        args.json.write_text(json.dumps({"workload": {k: str(v) for k, v in vars(args).items()},
                                         "seconds": times, "ratio": fedsim / plain}, indent=2))
    return 0


def config_dataset(config) -> Path:  # noqa: ANN001
    """The cache folder fedsim materialised the run's dataset into."""
    from fedsim.datasets import materialize

    return materialize(config.data).folder


if __name__ == "__main__":
    sys.exit(main())
