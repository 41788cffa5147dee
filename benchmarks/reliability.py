"""What the safety net costs: checkpoints every round, and screening every client update.

Two sides of the same run, interleaved (this machine is noisy) and compared by median round time
measured in one invocation: ``output.checkpoint_every = 0`` (no checkpoints) and ``= 1`` (the
default: a checkpoint after every round: global model, strategy state, extension state, tables'
positions, RNG states; npz + JSON, fsync'ed, renamed into place). The loop screens every
update for NaN/Inf and shape mismatches on both sides; its cost is measured on its own as the
time :func:`fedsim.core.screening.screen_updates` takes per reply.

    python benchmarks/reliability.py                       # LeNet-5, fedadam, 3 repetitions
    python benchmarks/reliability.py --model resnet18 --rounds 3

Workload (defaults): LeNet-5, FedAdam (three model-sized arrays of server state), 50 synthetic
clients x 50 samples, 10 per round, 5 rounds, the in-process executor, no evaluation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import ArrayRecord, Message, RecordDict

from fedsim.runs.experiment import run
from fedsim.core.screening import screen_updates
from fedsim.models import build_model
from fedsim.core.protocol import ClientReply, ClientTask, reply
from fedsim.config.validation import load_config


def config(args: argparse.Namespace, folder: Path, checkpoint_every: int, name: str):  # noqa: ANN201
    return load_config(None, {
        "data.dataset": "synthetic", "data.synthetic_train": args.clients * args.samples,
        "data.synthetic_test": 200, "partition.scheme": "iid", "partition.num_clients": args.clients,
        "model.name": args.model, "train.rounds": args.rounds, "train.clients_per_round": args.per_round,
        "strategy.name": args.strategy, "evaluation.centralized_every": 0, "evaluation.federated_every": 0,
        "executor.kind": "in-process", "output.dir": str(folder), "output.name": name,
        "output.figures": False, "output.checkpoint_every": checkpoint_every, "seed": args.seed,
    })


def screening_seconds(model: str, replies: int) -> float:
    """Seconds :func:`screen_updates` takes per reply of ``model``'s size."""
    arrays = ArrayRecord(build_model(model, 10, 0, 3).state_dict())
    tasks = [ClientTask(i, Message(RecordDict(), dst_node_id=i + 1, message_type="train")) for i in range(replies)]
    answers = [ClientReply(i, reply(t.message, i, {"n": 1}, arrays)) for i, t in enumerate(tasks)]
    started = time.perf_counter()
    screened = screen_updates(tasks, answers, arrays)
    assert all(r.ok for r in screened)
    return (time.perf_counter() - started) / replies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--strategy", default="fedadam")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rounds: dict[int, list[float]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory(prefix="fedsim-reliability-") as tmp:
        for repetition in range(args.repetitions):
            for every in (0, 1):
                result = run(config(args, Path(tmp), every, f"r{repetition}-c{every}"), progress=False)
                rounds[every].extend(result.rounds.loc[result.rounds["round"] > 0, "wall_seconds"].tolist())
    off, on = statistics.median(rounds[0]), statistics.median(rounds[1])
    print(f"workload: {args.model}, {args.strategy}, {args.clients} clients x {args.samples} samples, "
          f"{args.per_round} per round, {args.rounds} rounds, in-process, {args.repetitions} repetitions")
    print(f"median round, no checkpoints:        {off * 1000:8.1f} ms")
    print(f"median round, checkpoint every round: {on * 1000:8.1f} ms")
    print(f"ratio (checkpoint every round / none): {on / off:.3f}")
    per_reply = screening_seconds(args.model, 20)
    print(f"screening one update (NaN/Inf, shapes): {per_reply * 1e6:.0f} us "
          f"({per_reply * args.per_round / off * 100:.2f}% of a round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
