"""Round extensions: code that takes part in every round without being a strategy.

The round loop (:mod:`fedsim.core.loop`) does only what every run needs; what a particular method
needs around the rounds -- central evaluation of a global model, a committee of the previous
round's client models, evaluating every client's own model, a distillation method's per-client
views -- is a :class:`RoundExtension` that lives next to that method. Compare PyTorch
Lightning's callbacks and pfl-research's ``TrainingProcessCallback``.

The loop calls the stages of every extension in the order the extensions were given:

==========================  =====================================================================
``on_run_start``            before round 1; may return metrics of the initial model (a round-0 row)
``on_configure``            after the strategy built a phase's tasks, before they are sent;
                            may add content or config to the tasks' messages
``on_train_replies``        the round's successful training replies, *before* aggregation (some
                            strategies consume the replies' arrays); may add client rows
``on_evaluate_replies``     the successful federated-evaluation replies; may update the phase's
                            client rows or fill round metrics
``on_round_end``            after aggregation and evaluation, with the new global arrays; may fill
                            round metrics (e.g. the test-set evaluation)
``on_run_end``              after the last round, with the final arrays
``state`` / ``load_state``  what a checkpoint stores to resume the extension exactly
==========================  =====================================================================

Rows follow the run directory's fixed schema (:data:`fedsim.outputs.recorder.ROUND_COLUMNS`,
``CLIENT_COLUMNS``), so tables of different methods line up; an extension with other results
writes a file of its own into ``run.recorder.folder`` or puts run-level facts into
``run.recorder.extras`` (``summary.json``). ``state()`` / ``load_state()`` are what a
checkpoint (:mod:`fedsim.core.checkpoint`) stores to resume an extension exactly: plain values,
NumPy arrays, tensors and ``ArrayRecord``s. A resumed run calls ``on_run_start`` again (with
``run.resumed_after`` set: files the extension appends to are already there, and no round-0
metrics are wanted), then ``load_state``.

A leaf module apart from the protocol and the recorder, so clients' hooks and strategies can
define extensions without importing the server side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

from fedsim.core.protocol import ClientReply, ClientTask
from fedsim.outputs.recorder import RunRecorder

PHASE_TRAIN = "train"
PHASE_EVALUATE = "evaluate"


@dataclass
class RunContext:
    """What extensions learn when the run starts."""

    rounds: int
    num_clients: int
    recorder: RunRecorder  # run-level facts go to recorder.extras, the confusion matrix to set_confusion
    resumed_after: int = 0  # 0: a new run; r: the run continues from its checkpoint after round r


@dataclass
class RoundRecord:
    """The round in progress: its ``rounds.csv`` row and the ``clients.csv`` rows not yet written."""

    server_round: int
    row: dict[str, Any]
    client_rows: list[dict[str, Any]] = field(default_factory=list)

    def rows_of(self, phase: str) -> list[dict[str, Any]]:
        """The pending client rows of ``phase`` (e.g. to add a column to them)."""
        return [r for r in self.client_rows if r["phase"] == phase]


class RoundExtension:
    """Base class: every stage does nothing; subclasses override what they need.

    ``needs_client_arrays``: the extension reads each client's uploaded arrays in
    ``on_train_replies`` (so workers must not pre-aggregate them: ``executor.streaming``).
    """

    needs_client_arrays = False

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        return {}

    def on_configure(self, server_round: int, phase: str, tasks: list[ClientTask]) -> None:
        return None

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        return None

    def on_evaluate_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        return None

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        return None

    def on_run_end(self, arrays: ArrayRecord) -> None:
        return None

    stateful = True  # False: keeps nothing between rounds and takes no part in checkpoints

    def state(self) -> dict[str, Any]:
        """Everything needed to resume this extension (plain values and numpy arrays)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


class ExtensionChain(RoundExtension):
    """Several extensions called in order, seen by the loop as one."""

    def __init__(self, extensions: Sequence[RoundExtension] = ()) -> None:
        self.extensions = list(extensions)

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ext in self.extensions:
            metrics.update(ext.on_run_start(run, arrays))
        return metrics

    def on_configure(self, server_round: int, phase: str, tasks: list[ClientTask]) -> None:
        for ext in self.extensions:
            ext.on_configure(server_round, phase, tasks)

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        for ext in self.extensions:
            ext.on_train_replies(record, replies)

    def on_evaluate_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        for ext in self.extensions:
            ext.on_evaluate_replies(record, replies)

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        for ext in self.extensions:
            ext.on_round_end(record, arrays)

    def on_run_end(self, arrays: ArrayRecord) -> None:
        for ext in self.extensions:
            ext.on_run_end(arrays)

    def _checkpointed(self) -> dict[str, RoundExtension]:
        """The stateful extensions by checkpoint key: stateless ones (``stateful = False``) are left
        out, so adding one does not change the keys of the checkpoints runs already wrote."""
        stateful = [ext for ext in self.extensions if ext.stateful]
        return {f"{i}:{type(ext).__name__}": ext for i, ext in enumerate(stateful)}

    def state(self) -> dict[str, Any]:
        return {key: ext.state() for key, ext in self._checkpointed().items()}

    def load_state(self, state: dict[str, Any]) -> None:
        expected = self._checkpointed()
        if sorted(state) != sorted(expected):
            raise ValueError(f"extension state for {sorted(state)} does not match this run's extensions "
                             f"{list(expected)}")
        for key, ext in expected.items():
            ext.load_state(state[key])
