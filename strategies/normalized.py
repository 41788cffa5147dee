"""FedNova (``fednova``): normalized averaging by each client's effective number of local steps.

Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020, as NIID-Bench implements it (Li, Diao,
Chen and He, "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022).
Clients run plain local SGD and report the steps they took (``train-steps``); the server, over
the sampled clients S whose training succeeded, with x the global model the round started
from, y_i client i's model, tau_i its steps, n_i its examples and rho the clients' SGD momentum
(``train.momentum``)::

    a_i     = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)     (rho = 0: a_i = tau_i)
    d_i     = (x - y_i) / a_i
    p_i     = n_i / sum_S n
    tau_eff = sum_S p_i a_i
    x'      = x - tau_eff sum_S p_i d_i

a_i is the sum of the momentum buffer's weights on the step's gradients over tau_i steps (a
client's optimiser starts each round with an empty buffer). Weight decay is ignored in a_i, as
NIID-Bench ignores it. Partial participation is this renormalisation over S: NIID-Bench also
computes whole-population weights but never uses them. With equal tau_i and rho = 0,
``x - tau sum p_i (x - y_i) / tau = sum p_i y_i``: FedAvg.

Arithmetic: float64, client by client in client-id order (so the result does not depend on how
the clients were split among workers), each array cast back to its dtype. Floating arrays,
BatchNorm's running means and variances included, take the formula above (NIID-Bench applies
it to the whole state dict). Integer arrays (BatchNorm's ``num_batches_tracked``) are counters,
not steps: they take the p_i-weighted mean of the clients' values, rounded, as fedsim's
averaging family does (NIID-Bench truncates ``tau_eff d`` to an integer instead). A client that
took no step (tau_i = 0, so a_i = 0) left x unchanged: its d_i is 0.

Where it does not apply (refused by the registry and the run's checks, with the setting named):
streaming workers (a partial sum of d_i needs the round's tau_eff; the per-client replies are
needed), the DP wrappers (their noise is calibrated to a mean of clipped updates, and
tau_eff / a_i can scale a clipped update beyond the clipping norm), asynchronous aggregation
(FedBuff and FedAsync are strategies of their own) and latent distillation (no weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from fedsim.core.protocol import TRAIN_STEPS, ClientReply
from fedsim.core.stack import StackedUpdate, stack_of_records

from .averaging import reply_order_key

Result = tuple[ArrayRecord | None, MetricRecord | None]


def effective_steps(steps: int, momentum: float) -> float:
    """a_i: the weight SGD with ``momentum`` puts on a step's worth of gradient over ``steps`` steps.

    ``(tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)``, which is ``tau`` for ``rho = 0``; for
    rho = 0.9: 1 step -> 1, 2 steps -> 2.9 (1 + 0.9 on the first gradient, 1 on the second).
    """
    if steps < 0:
        raise ValueError(f"steps = {steps}: must be >= 0")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum = {momentum}: must be in [0, 1)")
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


def normalized_average(start: ArrayRecord, updates: Sequence[StackedUpdate], examples: Sequence[float],
                       effective: Sequence[float]) -> ArrayRecord:
    """FedNova's new global model from ``start`` (x) and the clients' models (y_i, in the order given).

    ``examples``: n_i; ``effective``: a_i (:func:`effective_steps`). See the module for the
    formula and how integer arrays are treated; dtypes are kept.
    """
    n = np.asarray(examples, dtype=np.float64)
    a = np.asarray(effective, dtype=np.float64)
    if not len(updates) or len(n) != len(updates) or len(a) != len(updates):
        raise ValueError(f"need n_i and a_i per update: {len(updates)} updates, {len(n)} n_i, {len(a)} a_i")
    if (n < 0).any() or n.sum() <= 0 or (a < 0).any():
        raise ValueError(f"need n_i >= 0 with a positive sum and a_i >= 0, got n = {n.tolist()}, a = {a.tolist()}")
    layout = updates[0].layout
    if any(u.layout != layout for u in updates):
        raise ValueError("updates of different layouts (names, shapes or dtypes) cannot be aggregated")
    if set(start.keys()) != set(layout.names):
        raise ValueError(f"the global model's arrays {sorted(start.keys())} are not the updates' {sorted(layout.names)}")
    p = (n / n.sum()).tolist()
    tau_eff = 0.0
    for p_i, a_i in zip(p, a.tolist()):
        tau_eff += p_i * a_i
    rows = updates[0].stack.rows
    out: dict[str, Array] = {}
    for dtype, members in layout.groups.items():
        device = rows[dtype].device
        x = torch.cat([torch.from_numpy(np.array(start[name].numpy())).reshape(-1) for name, *_ in members])
        x = x.to(device=device, dtype=torch.float64)
        total = torch.zeros_like(x)
        floating = rows[dtype].is_floating_point()
        for update, p_i, a_i in zip(updates, p, a.tolist()):
            y = update.stack.rows[dtype][update.index].to(torch.float64)
            if not floating:
                total.add_(y * p_i)  # the counters' weighted mean
            elif a_i > 0:
                total.add_((x - y) / a_i * p_i)  # p_i d_i
        new = (x - tau_eff * total) if floating else torch.round(total)
        flat = new.to(getattr(torch, dtype)).cpu().numpy()
        for name, begin, size, shape in members:
            out[name] = Array(flat[begin : begin + size].reshape(shape).copy())
    return ArrayRecord({name: out[name] for name in layout.names})


class FedNova(FedAvg):
    """FedNova (Wang et al., NeurIPS 2020) as NIID-Bench implements it; see :mod:`fedsim.strategies.normalized`.

    Parameters
    ----------
    momentum : float
        The clients' local SGD momentum rho, in [0, 1). Run by name, it is ``train.momentum``
        (the registry fills it in; another value is refused).
    **kwargs
        Flower's ``FedAvg`` arguments; ``weighted_by_key`` (default ``num-examples``) gives n_i.
    """

    def __init__(self, momentum: float, **kwargs) -> None:  # noqa: ANN003 - FedAvg's arguments
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum = {momentum}: must be in [0, 1)")
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.current_arrays: ArrayRecord | None = None  # x: the global model this round's clients start from

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def _start(self) -> ArrayRecord:
        if self.current_arrays is None:
            raise AggregationError("FedNova needs the round's global model: call `configure_train` before "
                                   "aggregating")
        return self.current_arrays

    def _inputs(self, contents: list[RecordDict], client_ids: list[int | None]) -> tuple[list[float], list[float]]:
        """n_i and a_i of each reply, read from its first MetricRecord as FedAvg reads its weight."""
        examples, effective = [], []
        for content, client_id in zip(contents, client_ids):
            metrics = next(iter(content.metric_records.values()))
            if TRAIN_STEPS not in metrics:
                raise AggregationError(f"FedNova needs each client's local step count ({TRAIN_STEPS!r} in its "
                                       f"metrics); the reply of client {client_id} has none")
            examples.append(float(metrics[self.weighted_by_key]))  # type: ignore[arg-type]
            effective.append(effective_steps(int(metrics[TRAIN_STEPS]), self.momentum))  # type: ignore[arg-type]
        return examples, effective

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        """The per-client path: Flower messages with their ``ArrayRecord``\\ s, by partition id."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        valid = sorted(valid, key=reply_order_key)
        contents = [m.content for m in valid]
        records = [next(iter(c.array_records.values())) for c in contents]
        examples, effective = self._inputs(contents, [reply_order_key(m)[1] for m in valid])
        arrays = normalized_average(self._start(), stack_of_records(records).views(), examples, effective)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        """:meth:`aggregate_train` on stacked updates, read in place: the same arithmetic in the same order."""
        valid = sorted((r for r in replies if r.ok), key=lambda r: r.client_id)
        if not valid:
            return None, None
        if any(r.update is None for r in valid):
            raise ValueError("aggregate_stacked needs every reply's stacked update; use aggregate_train")
        contents = [r.content for r in valid]
        validate_message_reply_consistency(contents, self.weighted_by_key, check_arrayrecord=False)
        examples, effective = self._inputs(contents, [r.client_id for r in valid])
        arrays = normalized_average(self._start(), [r.update for r in valid], examples, effective)  # type: ignore[misc]
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
