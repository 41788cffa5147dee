"""fedsim's round loop: the one place that drives a Flower strategy round by round.

Flower's ``Strategy.start()`` is closed (no per-round callback, unseeded node sampling), so
fedsim calls the strategy's variation points itself -- ``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate`` -- and around them does
only what every run needs: asking its scheduler for the round's training (seeded sampling by
client id; with a simulated clock also deadlines, over-selection or asynchronous buffers:
:mod:`fedsim.timing.scheduler`), per-client rows, failure accounting, screening of client updates (non-finite values, wrong shapes), the
federated-evaluation schedule, bytes communicated, one row per round streamed to the run
directory, a checkpoint every ``checkpoint_every`` rounds (:mod:`fedsim.core.checkpoint`) and a stop
at the next safe point after Ctrl-C (:mod:`fedsim.ops.interrupt`). Everything a particular method needs happens in round
extensions (:mod:`fedsim.core.extension`); where clients run is the executor's business
(:mod:`fedsim.runs.executors`), which clients train and when is the scheduler's. Any ``flwr.serverapp.strategy`` strategy plugs in unchanged.

Randomness outside the clients' own seeded generators (Flower's differential-privacy noise
draws from NumPy's global generator, its node sampling from ``random``) is seeded at the
start of every round from (seed, round), so a run resumed from a checkpoint draws exactly
what the uninterrupted run drew.

Strategies address clients through a :class:`ClientGrid`: its "node ids" are the sampled
client ids, so a strategy built with ``fraction = 1`` addresses exactly the sample, whatever
its own sampling code does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.core.checkpoint import Checkpoint
from fedsim.core.arrays import nonfinite_keys, nonfinite_update
from fedsim.errors import RunError
from fedsim.runs.executors import Executor
from fedsim.core.extension import PHASE_EVALUATE, PHASE_TRAIN, ExtensionChain, RoundExtension, RoundRecord, RunContext
from fedsim.core.protocol import (
    CLIENT_SECONDS,
    COMPILE_SECONDS,
    ENGINE,
    ENGINE_LABELS,
    EVAL_ACCURACY,
    EVAL_LOSS,
    NUM_EXAMPLES,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    INVALID_UPDATE,
    ClientReply,
    ClientTask,
    array_bytes,
    failed_reply,
)
from fedsim.ops.interrupt import check_stop
from fedsim.outputs.recorder import RunRecorder
from fedsim.core.sampling import EVALUATE, due, sample_clients
from fedsim.timing.scheduler import Dispatch, Scheduler, SynchronousScheduler, TrainingRound


class AggregationError(RunError):
    """The strategy produced no global model from a round's successful replies."""


class TooFewClientsError(RunError):
    """Fewer sampled clients succeeded in a round than ``train.min_success_fraction``."""


class DivergenceError(RunError):
    """The global model has NaN or infinite values: the run diverged."""


@dataclass(frozen=True)
class LoopSettings:
    """The round loop's parameters, derived from the experiment config once."""

    seed: int
    rounds: int
    num_clients: int
    clients_per_round: int
    clients_per_eval: int
    federated_every: int  # 0 = no federated evaluation
    min_success_fraction: float
    base_config: dict = field(default_factory=dict)  # added to every strategy's ConfigRecord
    checkpoint_every: int = 0  # rounds between checkpoints (0: none); the last round always gets one
    lr: float | None = None  # the clients' learning rate, named when the run diverges


class ClientGrid(Grid):
    """The grid a strategy sees: the sampled clients' ids as node ids, and nothing to send with.

    Strategies only list nodes and build messages here; the loop sends them through its
    executor.
    """

    def __init__(self, client_ids: Iterable[int]) -> None:
        self._client_ids = list(client_ids)

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's signature
        raise RuntimeError("a ClientGrid belongs to fedsim's round loop")

    @property
    def run(self):  # noqa: ANN201
        raise RuntimeError("a ClientGrid belongs to fedsim's round loop")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: ANN001
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._client_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise RuntimeError("strategies do not send in fedsim's round loop: the executor does")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise RuntimeError("strategies do not send in fedsim's round loop: the executor does")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise RuntimeError("strategies do not send in fedsim's round loop: the executor does")


def client_rows(server_round: int, phase: str, replies: list[ClientReply],
                times: dict[int, dict] | None = None) -> list[dict]:
    """One ``clients.csv`` row per task (ok or failed), sorted by client id.

    ``times``: simulated-time columns by client id (:class:`fedsim.timing.TrainingRound`).
    """
    rows = []
    times = times or {}
    for reply in replies:
        row = {"round": server_round, "phase": phase, "client_id": reply.client_id, **times.get(reply.client_id, {})}
        if not reply.ok:
            rows.append({**row, "status": "failed", "error": reply.error})
            continue
        metrics = reply.metrics
        rows.append({**row, "status": "ok", "num_examples": int(metrics[NUM_EXAMPLES]),
                     "loss": float(metrics[TRAIN_LOSS if phase == PHASE_TRAIN else EVAL_LOSS]),
                     "accuracy": float(metrics[TRAIN_ACCURACY if phase == PHASE_TRAIN else EVAL_ACCURACY]),
                     "seconds": float(metrics.get(CLIENT_SECONDS, np.nan)) if phase == PHASE_TRAIN else np.nan,
                     "engine": ENGINE_LABELS.get(int(metrics[ENGINE]), "") if ENGINE in metrics else ""})
    return sorted(rows, key=lambda r: r["client_id"])


def dropped_rows(server_round: int, training: TrainingRound) -> list[dict]:
    """``clients.csv`` rows of the round's dropped clients: their status, reason and times.

    A dropped client trained anyway (``time.policy.train_dropped``) keeps its training metrics.
    """
    rows = []
    for drop in training.dropped:
        row = {"round": server_round, "phase": PHASE_TRAIN, "client_id": drop.client_id, **drop.times}
        if drop.reply is not None:
            (trained,) = client_rows(server_round, PHASE_TRAIN, [drop.reply], {drop.client_id: drop.times})
            row = trained
        rows.append({**row, "status": drop.status, "error": drop.reason})
    return rows


def weighted_mean(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over successful rows, weighted by their examples (NaN when none)."""
    good = [r for r in rows if r["status"] == "ok" and np.isfinite(r[key])]
    total = sum(r["num_examples"] for r in good)
    return float(sum(r[key] * r["num_examples"] for r in good) / total) if total else float("nan")


def _tasks(messages: Iterable[Message]) -> list[ClientTask]:
    """The strategy's messages as tasks, in client-id order.

    Flower's strategies list the sampled nodes in the order of Python's global ``random``;
    sorting makes the order of the replies -- and so the floating-point sum of an aggregate --
    depend on (seed, round) alone.
    """
    return sorted((ClientTask(int(m.metadata.dst_node_id), m) for m in messages), key=lambda t: t.client_id)


def seed_round(seed: int, server_round: int) -> None:
    """Seed ``random``, NumPy's and torch's global generators from (seed, round)."""
    words = np.random.SeedSequence([seed, server_round, 0x5EED]).generate_state(2)
    random.seed(int(words[0]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[1]))


def screen_updates(tasks: list[ClientTask], replies: list[ClientReply], reference: ArrayRecord) -> list[ClientReply]:
    """Successful replies whose arrays cannot be aggregated become failures with the reason.

    A reply's arrays must be finite, and where they share names with the arrays the round
    sent (weight averaging) they must have the same names and shapes: one client's NaN or a
    wrong shape would otherwise poison or crash the aggregate. Replies without arrays (a
    streaming worker summed them after its own check) pass.
    """
    screened = []
    expected = {key: reference[key].shape for key in reference.keys()}
    for task, reply in zip(tasks, replies):
        reason = ""
        if reply.ok and reply.message.content.array_records:
            arrays = reply.arrays
            shapes = {key: arrays[key].shape for key in arrays.keys()}
            if set(shapes) & set(expected):
                missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
                wrong = [f"{k}: {shapes[k]} instead of {expected[k]}" for k in shapes
                         if k in expected and tuple(shapes[k]) != tuple(expected[k])]
                if missing or extra or wrong:
                    reason = (f"its update does not match the global model (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, shapes {wrong[:3]})")
            bad = nonfinite_keys(arrays) if not reason else []
            if bad:
                reason = nonfinite_update(bad)
        screened.append(failed_reply(task, reason, INVALID_UPDATE) if reason else reply)
    return screened


def check_finite(server_round: int, arrays: ArrayRecord, lr: float | None) -> None:
    """Raise :class:`DivergenceError` naming the round if ``arrays`` hold NaN or Inf."""
    bad = nonfinite_keys(arrays)
    if bad:
        hint = f" (train.lr = {lr:g})" if lr is not None else ""
        raise DivergenceError(
            f"round {server_round}: the global model has NaN or infinite values in {len(bad)} of "
            f"{len(list(arrays.keys()))} arrays ({', '.join(bad[:3])}) after aggregation: the run diverged. "
            f"Likely cause: a learning rate too high for this model{hint}, or a strategy setting "
            "(e.g. a server learning rate) that amplifies updates; lower it and run again"
        )


def _flush(record: RoundRecord, recorder: RunRecorder) -> None:
    if record.client_rows:
        recorder.add_clients(record.client_rows)
        record.client_rows = []


def _check_success(server_round: int, replies: list[ClientReply], needed_fraction: float) -> None:
    ok = sum(r.ok for r in replies)
    needed = int(np.ceil(needed_fraction * len(replies)))
    if ok < max(needed, 1):
        by_reason: dict[str, list[int]] = {}
        for r in sorted(replies, key=lambda r: r.client_id):
            if not r.ok:
                by_reason.setdefault(r.error, []).append(r.client_id)
        errors = "; ".join(f"client{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids[:20]))}"
                           f"{' ...' if len(ids) > 20 else ''}: {reason}" for reason, ids in by_reason.items())
        raise TooFewClientsError(
            f"round {server_round}: only {ok} of {len(replies)} sampled clients succeeded "
            f"(train.min_success_fraction = {needed_fraction} needs {needed}). "
            f"Failures: {errors[:2000]}. Each failure is in clients.csv; to go on with fewer clients, lower "
            "train.min_success_fraction"
        )


def run_rounds(
    strategy: Strategy,
    executor: Executor,
    initial_arrays: ArrayRecord,
    settings: LoopSettings,
    recorder: RunRecorder,
    extensions: list[RoundExtension] | None = None,
    on_round: Callable[[dict], None] | None = None,
    resume: Checkpoint | None = None,
    scheduler: Scheduler | None = None,
) -> ArrayRecord:
    """Run ``settings.rounds`` rounds of ``strategy`` through ``executor``; return the final arrays.

    ``scheduler`` decides each round's training (:mod:`fedsim.timing.scheduler`); by default
    ``clients_per_round`` clients sampled by (seed, round), all waited for.

    With ``resume``, the run continues after the checkpoint's round: the global arrays, the
    strategy's attributes, the extensions' state, the tables and the RNG states are put back
    first, so the remaining rounds are those of the uninterrupted run, bit for bit (CPU).
    """
    s = settings
    scheduler = scheduler or SynchronousScheduler(s.seed, s.num_clients, s.clients_per_round)
    chain = ExtensionChain([*(extensions or []), scheduler])  # the scheduler's state is checkpointed too

    def finish(row: dict) -> None:
        recorder.add_round(row)
        if on_round:
            on_round(row)

    def checkpoint(server_round: int) -> None:
        Checkpoint.capture(server_round, arrays, strategy, chain, recorder).write(recorder.folder)

    arrays = initial_arrays
    first = 1
    if resume is not None:
        first = resume.server_round + 1
        chain.on_run_start(RunContext(s.rounds, s.num_clients, recorder, resume.server_round), arrays)
        arrays = resume.restore(strategy, chain, recorder)
    else:
        initial = chain.on_run_start(RunContext(s.rounds, s.num_clients, recorder), arrays)
        if initial:
            finish({"round": 0, "bytes_down": 0, "bytes_up": 0, "wall_seconds": 0.0, **initial})
        if s.checkpoint_every:
            checkpoint(0)

    for server_round in range(first, s.rounds + 1):
        check_stop()
        started = time.perf_counter()
        seed_round(s.seed, server_round)
        record = RoundRecord(server_round, {"round": server_round})

        current = arrays

        def configure(round_: int, ids: list[int], current: ArrayRecord = current) -> list[ClientTask]:
            tasks = _tasks(strategy.configure_train(round_, current, ConfigRecord(dict(s.base_config)),
                                                    ClientGrid(ids)))
            chain.on_configure(round_, PHASE_TRAIN, tasks)
            return tasks

        def run(tasks: list[ClientTask], current: ArrayRecord = current) -> list[ClientReply]:
            replies = screen_updates(tasks, executor.execute(tasks), current)
            check_stop()
            return replies

        training = scheduler.train_round(server_round, Dispatch(configure, run))
        replies = training.arrived
        rows = client_rows(server_round, PHASE_TRAIN, replies, training.times) + dropped_rows(server_round, training)
        recorder.add_clients(sorted(rows, key=lambda r: r["client_id"]))  # before the check: they stay in clients.csv
        if replies:
            _check_success(server_round, replies, s.min_success_fraction)
        ok = [r for r in replies if r.ok]
        bytes_up = sum(r.upload_bytes for r in ok)  # before aggregation: it may consume the arrays
        chain.on_train_replies(record, ok)
        _flush(record, recorder)
        if ok:  # a round in which every sampled client dropped out leaves the model as it was
            new_arrays, _ = strategy.aggregate_train(server_round, executor.aggregation_inputs(training.to_strategy))
            if new_arrays is None:
                raise AggregationError(
                    f"round {server_round}: strategy {type(strategy).__name__} returned no aggregate "
                    f"from {len(ok)} successful replies; check its requirements (e.g. Bulyan needs "
                    "n >= 4 * num_malicious_nodes + 3 clients per round, Krum n > 2f + 2)"
                )
            check_finite(server_round, new_arrays, s.lr)
            arrays = new_arrays
        record.row.update({
            "clients_sampled": len(training.dispatched), "clients_succeeded": len(ok),
            "clients_failed": len(replies) - len(ok),
            "clients_vectorized": sum(int(r.metrics.get(ENGINE, 0)) == 1 for r in ok),
            "compile_seconds": sum(float(r.metrics.get(COMPILE_SECONDS, 0.0)) for r in ok),
            "train_loss": weighted_mean(rows, "loss"), "train_accuracy": weighted_mean(rows, "accuracy"),
            "bytes_down": array_bytes(t.message for t in training.dispatched), "bytes_up": bytes_up,
            **training.row,
        })

        if due(s.federated_every, server_round, s.rounds):
            eval_sampled = sample_clients(s.seed, server_round, EVALUATE, s.num_clients, s.clients_per_eval)
            eval_tasks = _tasks(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(s.base_config)),
                                                            ClientGrid(eval_sampled)))
            chain.on_configure(server_round, PHASE_EVALUATE, eval_tasks)
            record.row["bytes_down"] += array_bytes(t.message for t in eval_tasks)
            eval_replies = executor.execute(eval_tasks)
            check_stop()
            eval_rows = client_rows(server_round, PHASE_EVALUATE, eval_replies)
            record.client_rows.extend(eval_rows)
            strategy.aggregate_evaluate(server_round, [r.message for r in eval_replies])
            record.row["fed_eval_loss"] = weighted_mean(eval_rows, "loss")
            record.row["fed_eval_accuracy"] = weighted_mean(eval_rows, "accuracy")
            chain.on_evaluate_replies(record, [r for r in eval_replies if r.ok])
            _flush(record, recorder)

        chain.on_round_end(record, arrays)
        _flush(record, recorder)
        record.row["wall_seconds"] = time.perf_counter() - started
        finish(record.row)
        if s.checkpoint_every and (server_round % s.checkpoint_every == 0 or server_round == s.rounds):
            checkpoint(server_round)
    chain.on_run_end(arrays)
    return arrays
