"""The server side of client hooks: round extensions that hooks bring along.

* :class:`HookStatistics` writes what every hook reported (``hook.<name>.<metric>`` entries of
  the clients' MetricRecords) to the run's ``hooks.csv``, one row per client, hook and metric.
* :class:`PeerCommittee` serves the ``crucial`` hook's ``committee = "peers"``: it keeps the
  first ``size`` successful client models of a round (by client id) and attaches them to every
  training task of the next round as ``peer-<client id>`` ArrayRecords.

A hook names its own extension with :meth:`~fedsim.clients.hooks.base.Hook.round_extension`;
:func:`round_extensions` collects them for the configured hooks.
"""

from __future__ import annotations

import copy
from typing import Any

from flwr.app import Array, ArrayRecord

from fedsim.core.extension import PHASE_TRAIN, RoundExtension, RoundRecord, RunContext
from fedsim.core.protocol import ClientReply, ClientTask, attach_peers, hook_metrics
from fedsim.outputs.recorder import RunRecorder

from .base import Hook


class HookStatistics(RoundExtension):
    """Hook statistics of every successful training reply -> ``hooks.csv``."""

    def __init__(self) -> None:
        self.recorder: RunRecorder | None = None

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self.recorder = run.recorder
        return {}

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        assert self.recorder is not None, "on_run_start comes first"
        rows = [{"round": record.server_round, "client_id": reply.client_id, "hook": hook, "metric": metric,
                 "value": value} for reply in replies for hook, metric, value in hook_metrics(reply.metrics)]
        self.recorder.add_hook_stats(sorted(rows, key=lambda r: (r["client_id"], r["hook"], r["metric"])))


class PeerCommittee(RoundExtension):
    """The previous round's client models, sent with the next round's training tasks."""

    needs_client_arrays = True

    def __init__(self, size: int) -> None:
        self.size = size
        self.peers: list[tuple[int, ArrayRecord]] = []

    def on_configure(self, server_round: int, phase: str, tasks: list[ClientTask]) -> None:
        if phase == PHASE_TRAIN and self.peers:
            attach_peers([t.message for t in tasks], self.peers)

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        # copies: some strategies consume the replies' arrays while aggregating
        chosen = sorted(replies, key=lambda r: r.client_id)[: self.size]
        self.peers = [(r.client_id, copy.deepcopy(r.arrays)) for r in chosen]

    def state(self) -> dict[str, Any]:
        return {"peers": [(cid, {k: arrays[k].numpy() for k in arrays.keys()}) for cid, arrays in self.peers]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.peers = [(int(cid), ArrayRecord({k: Array(v) for k, v in values.items()}))
                      for cid, values in state["peers"]]


def round_extensions(hooks: list[Hook]) -> list[RoundExtension]:
    """The server-side extensions the configured ``hooks`` need (none without hooks)."""
    if not hooks:
        return []
    own = [ext for hook in hooks if (ext := hook.round_extension()) is not None]
    return [HookStatistics(), *own]
