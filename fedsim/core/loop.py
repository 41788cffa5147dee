"""fedsim's round loop: the one place that drives a Flower strategy round by round.

Flower's ``Strategy.start()`` is closed (no per-round callback, unseeded node sampling), so
fedsim calls the strategy's variation points itself -- ``configure_train``,
``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate`` -- in a round of named
phases (:meth:`RoundLoop.run_round`):

1. **schedule and train** -- the scheduler (:mod:`fedsim.core.schedule`) picks the clients and,
   on a simulated clock, when each finishes; the loop answers its requests: tasks from the
   strategy and the extensions, training by the executor, each update screened;
2. **screen** -- every client's row is written, and too few successes stop the run;
3. **aggregate** -- the strategy turns the successful updates into the new global model;
4. **evaluate** -- federated evaluation on its own schedule (:class:`~fedsim.core.schedule.EvaluationSchedule`);
5. **record** -- the round extensions fill the round's row (the central evaluation is one), and
   the row is written;
6. **checkpoint** -- every ``checkpoint_every`` rounds and after the last.

The loop names no method: what a particular method needs around the rounds happens in round
extensions (:mod:`fedsim.core.extension`), where clients run is the executor's business
(:mod:`fedsim.core.executor`), which clients train and when is the scheduler's. Any
``flwr.serverapp.strategy`` strategy plugs in unchanged.

Randomness outside the clients' own seeded generators (Flower's differential-privacy noise
draws from NumPy's global generator, its node sampling from ``random``) is seeded at the
start of every round from (seed, round), so a run resumed from a checkpoint draws exactly
what the uninterrupted run drew. Strategies address clients through a :class:`ClientGrid`:
its "node ids" are the sampled client ids, so a strategy built with ``fraction = 1`` addresses
exactly the sample, whatever its own sampling code does.
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

from fedsim.ops.interrupt import check_stop
from fedsim.outputs.recorder import RunRecorder

from .checkpoint import Checkpoint
from .executor import Executor
from .extension import PHASE_EVALUATE, PHASE_TRAIN, ExtensionChain, RoundExtension, RoundRecord, RunContext
from .protocol import ClientReply, ClientTask, array_bytes
from .rows import client_rows, training_rows, weighted_mean
from .schedule import EvaluationSchedule, Scheduler, TrainingRound, drive
from .screening import AggregationError, check_finite, check_success, screen_updates
from .stack import StackAggregation


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


def tasks_of(messages: Iterable[Message]) -> list[ClientTask]:
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


@dataclass
class RoundLoop:
    """Runs ``rounds`` rounds of ``strategy`` through ``executor`` (see the module for the phases).

    ``task_config`` is added to every task's ``config`` record (where clients find the run's
    files, their time limit); ``extensions`` take part in every round, in order.
    """

    strategy: Strategy
    executor: Executor
    scheduler: Scheduler
    evaluation: EvaluationSchedule
    recorder: RunRecorder
    rounds: int
    seed: int
    num_clients: int
    extensions: list[RoundExtension] = field(default_factory=list)
    task_config: dict = field(default_factory=dict)
    min_success_fraction: float = 0.5
    checkpoint_every: int = 0  # rounds between checkpoints (0: none); the last round always gets one
    lr: float | None = None  # the clients' learning rate, named when the run diverges
    on_round: Callable[[dict], None] | None = None  # called with every rounds.csv row as it is written

    def __post_init__(self) -> None:
        self.chain = ExtensionChain(self.extensions)

    def run(self, initial_arrays: ArrayRecord, resume: Checkpoint | None = None) -> ArrayRecord:
        """Every round; return the final arrays.

        With ``resume``, the run continues after the checkpoint's round: the global arrays, the
        strategy's attributes, the extensions' and the scheduler's state, the tables and the RNG
        states are put back first, so the remaining rounds are those of the uninterrupted run,
        bit for bit (CPU).
        """
        arrays, first = self._start(initial_arrays, resume)
        for server_round in range(first, self.rounds + 1):
            arrays = self.run_round(server_round, arrays)
        self.chain.on_run_end(arrays)
        return arrays

    def run_round(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """One round, phase by phase; returns the new global arrays."""
        check_stop()
        started = time.perf_counter()
        seed_round(self.seed, server_round)
        record = RoundRecord(server_round, {"round": server_round})
        # 1. schedule and train: the scheduler picks the clients, the executor trains them
        training = drive(self.scheduler.train_round(server_round),
                         lambda ids: self._configure_train(server_round, arrays, ids),
                         lambda tasks: self._train(tasks, arrays))
        # 2. screen: every training row is kept, then too few successes stop the run
        succeeded = self._screen(record, training)
        # 3. aggregate: a round in which nobody succeeded leaves the model as it was
        new_arrays = self._aggregate(server_round, training, succeeded) if succeeded else arrays
        record.row.update(self._training_summary(server_round, training, succeeded))
        # 4. evaluate: federated evaluation, when its schedule says so
        if self.evaluation.due(server_round):
            self._evaluate(record, new_arrays)
        # 5. record: the extensions fill the round's row (central evaluation among them), then it is written
        self.chain.on_round_end(record, new_arrays)
        self._flush(record)
        record.row["wall_seconds"] = time.perf_counter() - started
        self._finish(record.row)
        # 6. checkpoint
        if self.checkpoint_every and (server_round % self.checkpoint_every == 0 or server_round == self.rounds):
            self._checkpoint(server_round, new_arrays)
        return new_arrays

    # ------------------------------------------------------------------ the run's start and its outputs

    def _start(self, arrays: ArrayRecord, resume: Checkpoint | None) -> tuple[ArrayRecord, int]:
        """The arrays to start from and the first round: a new run records round 0, a resumed one restores."""
        if resume is not None:
            self.chain.on_run_start(RunContext(self.rounds, self.num_clients, self.recorder, resume.server_round),
                                    arrays)
            return resume.restore(self.strategy, self.chain, self.recorder, self.scheduler), resume.server_round + 1
        initial = self.chain.on_run_start(RunContext(self.rounds, self.num_clients, self.recorder), arrays)
        if initial:  # e.g. the initial model's test accuracy
            self._finish({"round": 0, "bytes_down": 0, "bytes_up": 0, "wall_seconds": 0.0, **initial})
        if self.checkpoint_every:
            self._checkpoint(0, arrays)
        return arrays, 1

    def _finish(self, row: dict) -> None:
        self.recorder.add_round(row)
        if self.on_round:
            self.on_round(row)

    def _flush(self, record: RoundRecord) -> None:
        """Write the client rows the round's phases and extensions have added."""
        if record.client_rows:
            self.recorder.add_clients(record.client_rows)
            record.client_rows = []

    def _checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        Checkpoint.capture(server_round, arrays, self.strategy, self.chain, self.recorder,
                           self.scheduler).write(self.recorder.folder)

    # ------------------------------------------------------------------ the phases

    def _configure_train(self, server_round: int, arrays: ArrayRecord, client_ids: list[int]) -> list[ClientTask]:
        """The scheduler's :class:`~fedsim.core.schedule.Configure`: the strategy's tasks, then the extensions'."""
        tasks = tasks_of(self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(self.task_config)),
                                                       ClientGrid(client_ids)))
        self.chain.on_configure(server_round, PHASE_TRAIN, tasks)
        return tasks

    def _train(self, tasks: list[ClientTask], arrays: ArrayRecord) -> list[ClientReply]:
        """The scheduler's :class:`~fedsim.core.schedule.Train`: executed, and each update screened."""
        replies = screen_updates(tasks, self.executor.execute(tasks), arrays)
        check_stop()
        return replies

    def _screen(self, record: RoundRecord, training: TrainingRound) -> list[ClientReply]:
        """Write the training rows (failures stay in clients.csv even if the run stops here), check the
        success fraction and hand the successful replies to the extensions; return them."""
        self.recorder.add_clients(training_rows(record.server_round, training))
        if training.arrived:
            check_success(record.server_round, training.arrived, self.min_success_fraction)
        succeeded = [r for r in training.arrived if r.ok]
        record.row["bytes_up"] = sum(r.upload_bytes for r in succeeded)  # before aggregation: it may consume them
        self.chain.on_train_replies(record, succeeded)
        self._flush(record)
        return succeeded

    def _aggregate(self, server_round: int, training: TrainingRound, succeeded: list[ClientReply]) -> ArrayRecord:
        """The strategy's aggregate of what reached it; a missing or diverged aggregate stops the run.

        A strategy that aggregates stacked updates (:class:`~fedsim.core.stack.StackAggregation`)
        reads them in place when every reply has one; any other strategy gets Flower messages
        with per-client ``ArrayRecord`` objects (or a streaming executor's partial aggregates).
        """
        replies = training.to_strategy
        if (isinstance(self.strategy, StackAggregation) and replies
                and all(r.ok and r.update is not None for r in replies)):
            arrays, _ = self.strategy.aggregate_stacked(server_round, replies)
        else:
            arrays, _ = self.strategy.aggregate_train(server_round, self.executor.aggregation_inputs(replies))
        if arrays is None:
            raise AggregationError(
                f"round {server_round}: strategy {type(self.strategy).__name__} returned no aggregate "
                f"from {len(succeeded)} successful replies; check its requirements (e.g. Bulyan needs "
                "n >= 4 * num_malicious_nodes + 3 clients per round, Krum n > 2f + 2)"
            )
        check_finite(server_round, arrays, self.lr)
        return arrays

    def _training_summary(self, server_round: int, training: TrainingRound, succeeded: list[ClientReply]) -> dict:
        """The round's rounds.csv columns about training (how clients were trained is an extension's:
        ``fedsim.clients.lockstep.columns.EngineColumns``)."""
        rows = training_rows(server_round, training)
        return {
            "clients_sampled": len(training.dispatched), "clients_succeeded": len(succeeded),
            "clients_failed": len(training.arrived) - len(succeeded),
            "train_loss": weighted_mean(rows, "loss"), "train_accuracy": weighted_mean(rows, "accuracy"),
            "bytes_down": array_bytes(t.message for t in training.dispatched), **training.row,
        }

    def _evaluate(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        """Federated evaluation of the new global model on the schedule's clients."""
        server_round = record.server_round
        tasks = tasks_of(self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(self.task_config)),
                                                          ClientGrid(self.evaluation.sample(server_round))))
        self.chain.on_configure(server_round, PHASE_EVALUATE, tasks)
        record.row["bytes_down"] += array_bytes(t.message for t in tasks)
        replies = self.executor.execute(tasks)
        check_stop()
        rows = client_rows(server_round, PHASE_EVALUATE, replies)
        record.client_rows.extend(rows)
        self.strategy.aggregate_evaluate(server_round, [r.message for r in replies])
        record.row["fed_eval_loss"] = weighted_mean(rows, "loss")
        record.row["fed_eval_accuracy"] = weighted_mean(rows, "accuracy")
        self.chain.on_evaluate_replies(record, [r for r in replies if r.ok])
        self._flush(record)
