"""Say when a run goes nowhere: rounds in which no client's update was aggregated.

A round whose selected clients all dropped out (every one missed ``time.policy.deadline``, or
went offline before it finished) or in which no client was online to be selected leaves the
global model as it was. ``rounds.csv`` records it honestly (``clients_succeeded = 0``), but a run
whose every round is like that would otherwise end like a successful one. The
:class:`RoundsWithoutClients` extension reads the round's counts from its ``rounds.csv`` row
(``clients_sampled``, ``clients_succeeded``, ``clients_failed``, ``clients_dropped``: the loop's
own counts, not counted again) and

* warns **once per run**, the first time a round aggregates no client, with the counts and the
  reason ("round 3 aggregated no client: 10 selected, 10 missed the 1e-06 s deadline
  (time.policy.deadline); the model did not change");
* warns at the end of the run with a summary ("12 of 40 rounds aggregated no client: every
  selected client missed the 1e-06 s deadline (time.policy.deadline)");
* records ``rounds_without_clients`` (the count) and ``rounds_without_clients_causes`` (count
  per cause) in ``summary.json`` -- only when there was such a round, so the summaries of runs
  that always aggregated something are unchanged.

Both warnings are :class:`NoClientAggregatedWarning` (a ``UserWarning``: filter it with
``warnings.filterwarnings("ignore", category=NoClientAggregatedWarning)``); the command line
prints them as one ``fedsim: warning: ...`` line each. They are shown every time (not once per
call site, Python's default), so every run of a comparison or a notebook says so, and a blanket
``warnings.simplefilter("ignore")`` -- what a run sets to hide Flower's and Ray's warnings --
does not hide them (:func:`warn`).

The reason comes from the run's settings, because the round's row counts clients, not why each
dropped out: on a clock without an availability model a dropped client missed the deadline; with
availability and no deadline it went offline; with both it did one or the other. Rounds whose
arrived clients all *failed* never reach this extension: too few successes stop the run
(:class:`~fedsim.core.screening.TooFewClientsError`, naming each failure).

The counts live in the recorder's ``extras``, which checkpoints store, so a resumed run's summary
counts the rounds before the interruption too; the extension itself keeps no state
(``stateful = False``: checkpoints written without it still resume).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord

from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.outputs.recorder import RunRecorder

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.runs.plan import RunPlan

COUNT_KEY = "rounds_without_clients"  # summary.json: how many rounds aggregated no client
CAUSES_KEY = "rounds_without_clients_causes"  # summary.json: cause -> number of such rounds


class NoClientAggregatedWarning(UserWarning):
    """A round aggregated no client's update (the model did not change), or the run's summary of such rounds."""


warnings.filterwarnings("always", category=NoClientAggregatedWarning)  # every run says so, not only the first


class RoundsWithoutClients(RoundExtension):
    """Warns when rounds aggregate no client, and counts them into ``summary.json`` (see the module).

    ``deadline``: the synchronous deadline in simulated seconds (0: none); ``availability``:
    whether clients can go offline (an availability model other than ``always``); ``run``: the run
    directory's name, so that the warnings of a comparison's runs say which run they are about.
    """

    stateful = False  # the counts are in the recorder's extras, which checkpoints keep

    def __init__(self, deadline: float = 0.0, availability: bool = False, run: str = "") -> None:
        self.deadline = deadline
        self.availability = availability
        self.run = run
        self.recorder: RunRecorder | None = None
        self.rounds = 0
        self.warned = False

    @classmethod
    def of(cls, plan: RunPlan) -> RoundsWithoutClients:
        """The watcher for a prepared run: its deadline, whether clients can go offline, its name."""
        time = plan.config.time
        return cls(float(time.policy.deadline) if time.clocked else 0.0, time.availability.kind != "always",
                   plan.final.name)

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self.recorder, self.rounds = run.recorder, run.rounds
        return {}

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        row = record.row
        if int(row.get("clients_succeeded") or 0) > 0 or self.recorder is None:
            return
        selected, dropped = int(row.get("clients_sampled") or 0), int(row.get("clients_dropped") or 0)
        failed = int(row.get("clients_failed") or 0)
        cause = self.cause(selected, dropped, failed)
        extras = self.recorder.extras
        causes = dict(extras.get(CAUSES_KEY) or {})  # a new dict: a checkpoint may hold the old one
        causes[cause] = causes.get(cause, 0) + 1
        extras[COUNT_KEY] = int(extras.get(COUNT_KEY) or 0) + 1
        extras[CAUSES_KEY] = causes
        if not self.warned:
            self.warned = True
            detail = self.detail(selected, dropped, failed)
            warn(f"{self._prefix()}round {record.server_round} aggregated no client: {detail}; the model did not "
                 "change")

    def on_run_end(self, arrays: ArrayRecord) -> None:
        line = summary_line(self.recorder.extras if self.recorder else {}, self.rounds)
        if line:
            warn(self._prefix() + line)

    def _prefix(self) -> str:
        return f"run {self.run}: " if self.run else ""

    # ------------------------------------------------------------------ why

    def _dropout(self) -> str:
        """What a dropped client did, as far as the run's settings tell."""
        if self.deadline > 0 and not self.availability:
            return f"missed the {self.deadline:g} s deadline (time.policy.deadline)"
        if self.availability and not self.deadline > 0:
            return "went offline before it finished (time.availability)"
        if self.deadline > 0:
            return f"missed the {self.deadline:g} s deadline or went offline (time.policy.deadline, time.availability)"
        return "dropped out"

    def cause(self, selected: int, dropped: int, failed: int) -> str:
        """The round's cause, as the summary says it (also the key of ``rounds_without_clients_causes``)."""
        if selected == 0:
            return "no client was online to be selected (time.availability)"
        if dropped == selected:
            return f"every selected client {self._dropout()}"
        if failed == selected:
            return "every selected client failed"
        return "no selected client's update arrived in the round"

    def detail(self, selected: int, dropped: int, failed: int) -> str:
        """The round's counts and reason, for the first warning."""
        if selected == 0:
            return "no client was online to be selected (time.availability)"
        parts = [f"{selected} selected"]
        if dropped:
            parts.append(f"{dropped} {self._dropout()}")
        if failed:
            parts.append(f"{failed} failed")
        if selected > dropped + failed:
            parts.append(f"{selected - dropped - failed} still training (their updates arrive in a later round)")
        return ", ".join(parts)


def warn(text: str) -> None:
    """Warn ``text`` as a :class:`NoClientAggregatedWarning`, also while a run hides other warnings.

    During a run, fedsim's quiet mode (:func:`fedsim.ops.logs.quiet_flower`) hides Flower's and
    Ray's warnings with a blanket ``simplefilter("ignore")``; this warning is checked against the
    filters without such blanket ignores, so a filter naming its category still silences it.
    """
    with warnings.catch_warnings():
        warnings.filters[:] = [f for f in warnings.filters if not _blanket_ignore(f)]
        warnings.warn(text, NoClientAggregatedWarning, stacklevel=3)


def _blanket_ignore(entry: tuple) -> bool:
    """A ``warnings.simplefilter("ignore")`` entry: every warning, everywhere."""
    action, message, category, module, lineno = entry
    return action == "ignore" and message is None and category is Warning and module is None and not lineno


def summary_line(extras: dict, rounds: int) -> str:
    """``"12 of 40 rounds aggregated no client: every selected client missed the 1e-06 s deadline
    (time.policy.deadline)"`` from a run's extras ("" when every round aggregated some client)."""
    count = int(extras.get(COUNT_KEY) or 0)
    if not count:
        return ""
    causes: dict[str, int] = dict(extras.get(CAUSES_KEY) or {})
    why = next(iter(causes)) if len(causes) == 1 else "; ".join(f"{n} rounds: {cause}" for cause, n in causes.items())
    return f"{count} of {rounds} rounds aggregated no client: {why}"
