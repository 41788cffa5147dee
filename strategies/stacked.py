"""Flower's strategies aggregating stacked client updates in torch (:class:`~fedsim.core.stack.StackAggregation`).

Flower's strategies read one ``ArrayRecord`` per client: the round loop would serialize every
client's row of its worker's stack (:mod:`fedsim.core.stack`) into one, and the strategy would
read each back and compute in NumPy one array at a time. The classes here are Flower's, by
the same names and with the same arguments, plus ``aggregate_stacked``: the same aggregate
computed in torch on the ``[K, P]`` per-dtype stack, on whatever device it lives. Flower's
``aggregate_train`` stays as it is (the per-client path: streaming partial means, replies
without a stack). Replies are taken in client-id order, as the loop hands them to
``aggregate_train``, so neither path depends on arrival order.

How the result relates to Flower's ``aggregate_train`` on the same replies (tested in
``tests/test_stacked_strategies.py``; the reference runs of ``tests/test_reference_runs.py``
are reproduced bit for bit). The rule throughout is NumPy's arithmetic: the same operations
in the same order and dtypes (float32 stays float32; an integer array such as
BatchNorm's ``num_batches_tracked`` comes out float64, as ``aggregate_arrayrecords`` and
``np.median`` make it -- unlike fedsim's own averaging, which keeps dtypes):

* ``fedavgm``, ``fedprox``, ``fedadam``, ``fedyogi``, ``fedadagrad`` -- bit for bit: the weighted
  mean is ``aggregate_arrayrecords``' float32 multiply-and-add client by client, and the server
  step (momentum, ``m_t``/``v_t``) is Flower's own code, run on that mean
  (:class:`_ServerStepOnMean`), so the optimizer state is the same whichever path a round takes.
* ``fedmedian`` -- bit for bit (the middle value, or the float32 mean of the middle two).
* ``krum``, ``multikrum`` -- the same selection, then the bitwise mean of the selected. Distances
  are float64 here (Flower's are float32 ``|a|^2 + |b|^2 - 2ab`` when every array is float32,
  which cancels badly), so a near-tie that Flower's rounding decides could be decided
  differently; exactly equal scores go to the lower client id (NumPy's default sort promises
  no order for them).
* ``fedtrimmedavg`` -- the kept values are summed in float32 in ascending order: bit for bit
  when at most 4 values are kept per coordinate (NumPy's partition then leaves them sorted),
  otherwise within float32 rounding of that sum (measured: at most 0.5 eps32 max|x|; tested
  against 4 eps32 max(1, |x|)).
* ``bulyan`` -- Multi-Krum selection as above, the median bit for bit, and the mean of the
  ``beta`` values closest to it summed in ascending distance, which is ``np.argpartition``'s
  order in the tests and in a check up to 61 selected clients (bit for bit; at 96, one value in
  20,000 was 1 ulp off). Where distances to the median tie at the ``beta`` boundary (integer
  buffers), another of the equally close values may be picked. A ``selection_rule`` other than
  Flower's ``select_multikrum`` goes down the per-client path.
* ``qfedavg`` -- bit for bit: every elementwise step in NumPy's dtypes and order, each client's
  ``||grad||^2`` by Flower's own ``l2_norm`` on views of the rows (:func:`flower_norm`).
* ``dp-*-server`` -- bit for bit: each client's update ``w_k - w_global`` is clipped on the
  stack with its norm from Flower's own ``get_norm`` (:func:`flower_norm`), the base strategy
  aggregates the clipped stack, and the noise is Flower's own function on the aggregate
  (NumPy's global generator: the same draws, in the same order, as the per-client path).
* ``dp-*-client`` -- the base's aggregate plus Flower's noise: as the base. Their clients' weights
  are clipped by the worker with the clipping mod's own arithmetic before they are stacked
  (:mod:`fedsim.clients.clipping`), so their replies carry a stack like any other.

On a CPU, two reductions are NumPy's own, on views of the stack: sorting (:func:`sorted_rows`,
an order of magnitude faster there than torch's) and the norms (whose float32 summation order
torch cannot reproduce). On another device they are torch's: the same sorted values, and norms
summed in float64, so q-FedAvg and a clipped update are then within float32 rounding of
Flower's (measured with those sums on the CPU: q-FedAvg's model 7e-10 off, a clipped DP
aggregate at most 0.5 eps32 max|x|) and a norm within ~1e-7 of the clipping norm could be
counted clipped on one path only.

A DP wrapper whose base cannot aggregate stacks (a Flower strategy built outside the
registry) falls back to the per-client path inside ``aggregate_stacked``. Flower's quirks are
kept: server-side clipping leaves a 0-d array (``num_batches_tracked``) unscaled, and what
Flower refuses the stacked path refuses too: q-FedAvg on integer arrays and server-side
clipping of an integer array of rank >= 1 (NumPy's in-place float multiply on int64 raises),
Bulyan with fewer than ``4f + 3`` clients (no aggregate), a zero update norm (division by zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO, WARN

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.qfedavg import get_train_loss, l2_norm
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_NORM_BIT, get_norm

from fedsim.core.protocol import ClientReply
from fedsim.core.stack import Layout, StackAggregation, UpdateStack

Result = tuple[ArrayRecord | None, MetricRecord | None]
_GRAM_CHUNK = 1 << 22  # float64 values per chunk of the distance computation (32 MiB)
_FLOATING = {"float16", "bfloat16", "float32", "float64"}


# ----------------------------------------------------------------------------- the round's stack


@dataclass(frozen=True)
class StackedRound:
    """A round's successful replies in client-id order and their rows: per dtype one ``[K, P]`` tensor."""

    replies: tuple[ClientReply, ...]
    layout: Layout
    rows: dict[str, torch.Tensor]

    @classmethod
    def of(cls, replies: Sequence[ClientReply]) -> StackedRound | None:
        """The replies that succeeded, sorted by client id (None if none did); rows read in place when
        they are one whole stack in that order, else gathered (one copy)."""
        valid = tuple(sorted((r for r in replies if r.ok), key=lambda r: r.client_id))
        if not valid:
            return None
        if any(r.update is None for r in valid):
            raise ValueError("aggregate_stacked needs every reply's stacked update; use aggregate_train")
        first = valid[0].update.stack
        layout = first.layout
        if any(r.update.layout != layout for r in valid):
            raise ValueError("updates of different layouts (names, shapes or dtypes) cannot be aggregated")
        if all(r.update.stack is first for r in valid) and [r.update.index for r in valid] == list(range(len(first))):
            return cls(valid, layout, dict(first.rows))
        rows = {dtype: torch.stack([r.update.stack.rows[dtype][r.update.index].to(tensor.device) for r in valid])
                for dtype, tensor in first.rows.items()}
        return cls(valid, layout, rows)

    def __len__(self) -> int:
        return len(self.replies)

    @property
    def device(self) -> torch.device:
        return next(iter(self.rows.values())).device

    @property
    def messages(self) -> list[Message]:
        return [r.message for r in self.replies]

    @property
    def contents(self) -> list[RecordDict]:
        return [r.content for r in self.replies]

    def weights(self, key: str) -> list[float]:
        """Each reply's weight, read as ``aggregate_arrayrecords`` reads it (the first MetricRecord)."""
        return [next(iter(content.metric_records.values()))[key] for content in self.contents]  # type: ignore[misc]

    def as_flower(self, dtype: str, order: Sequence[int] | None = None) -> torch.Tensor:
        """Rows of ``dtype`` (those in ``order``) in the dtype NumPy computes them in (:func:`numpy_dtype`)."""
        rows = self.rows[dtype] if order is None else self.rows[dtype][list(order)]
        return rows.to(numpy_dtype(rows.dtype))

    def named(self, flat: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-dtype flat values (one per coordinate of a row) cut into the arrays, in state-dict order."""
        cut = {name: flat[dtype][start : start + size]
               for dtype, members in self.layout.groups.items() for name, start, size, _ in members}
        return [cut[name] for name in self.layout.names]

    def flat(self, record: ArrayRecord, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``record``'s arrays (the global model) laid out as a row, per dtype group of the stack, as ``dtype``."""
        return {group: torch.cat([_tensor(record[name], self.device).reshape(-1).to(dtype) for name, *_ in members])
                for group, members in self.layout.groups.items()}

    def record(self, flat: dict[str, torch.Tensor]) -> ArrayRecord:
        """Per-dtype flat results (one value per coordinate of a row) as an ``ArrayRecord`` in state-dict order."""
        arrays: dict[str, Array] = {}
        for dtype, members in self.layout.groups.items():
            values = flat[dtype].detach().cpu().numpy()
            for name, start, size, shape in members:
                arrays[name] = Array(values[start : start + size].reshape(shape))
        return ArrayRecord({name: arrays[name] for name in self.layout.names})

    def weighted_mean(self, key: str, order: Sequence[int] | None = None) -> ArrayRecord:
        """``aggregate_arrayrecords`` of the replies in ``order`` (all, by client id, when None), by ``key``."""
        order = list(range(len(self))) if order is None else list(order)
        weights = self.weights(key)
        picked = [weights[i] for i in order]
        return self.record({dtype: flower_mean(rows, order, picked) for dtype, rows in self.rows.items()})


def _valid_round(strategy: flwr_strategy.FedAvg, replies: Sequence[ClientReply]) -> StackedRound | None:
    """:meth:`StackedRound.of`, with the metric checks of Flower's ``_check_and_log_replies``."""
    stacked = StackedRound.of(replies)
    if stacked is not None:
        validate_message_reply_consistency(stacked.contents, strategy.weighted_by_key, check_arrayrecord=False)
    return stacked


def _metrics(strategy: flwr_strategy.FedAvg, contents: list[RecordDict]) -> MetricRecord:
    return strategy.train_metrics_aggr_fn(contents, strategy.weighted_by_key)


def per_client(strategy: flwr_strategy.Strategy, server_round: int, replies: Sequence[ClientReply]) -> Result:
    """The per-client path: Flower's ``aggregate_train`` on the replies with their ``ArrayRecord``\\ s (built now)."""
    ordered = sorted(replies, key=lambda r: r.client_id)
    return strategy.aggregate_train(server_round, [r.materialized() for r in ordered])


# ----------------------------------------------------------------------------- NumPy's arithmetic in torch


def numpy_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype NumPy computes Flower's aggregates of a ``dtype`` array in: floats keep theirs, the rest float64."""
    return dtype if dtype.is_floating_point else torch.float64


def _promote(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """NumPy's result dtype of a binary operation on arrays of dtypes ``a`` and ``b``."""
    name = np.result_type(np.dtype(str(a).removeprefix("torch.")), np.dtype(str(b).removeprefix("torch.")))
    return getattr(torch, str(name))


def _tensor(array: Array, device: torch.device) -> torch.Tensor:
    """An ``Array`` as a tensor on ``device`` (its own copy: ``np.load`` gives read-only memory)."""
    return torch.from_numpy(np.array(array.numpy())).to(device)


def _sequential_sum(rows: torch.Tensor) -> torch.Tensor:
    """``rows[0] + rows[1] + ...`` in that order: NumPy's sum over the leading axis of a C-ordered array."""
    total = rows[0].clone()
    for row in rows[1:]:
        total += row
    return total


def sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    """Each coordinate's values in ascending order: ``rows`` sorted along dim 0.

    On the CPU this is NumPy's sort on the tensor's memory (no copy in or out): torch's CPU
    sort of many short columns is an order of magnitude slower (100 x 62k float32, 2 cores:
    13 ms against 110-220 ms). The values are the same either way; elsewhere, torch's sort.
    """
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(rows.detach().numpy(), axis=0))
    return torch.sort(rows, dim=0).values


def flower_norm(arrays: Sequence[torch.Tensor], shapes: Sequence[tuple[int, ...]], *, squared: bool) -> float:
    """One client's norm over its arrays (in state-dict order), as Flower computes it.

    ``squared``: q-FedAvg's ``l2_norm`` (float32 pairwise sums per array), else the DP
    wrappers' ``get_norm`` (a float32 BLAS dot per array). On the CPU these are Flower's own
    functions on views of the rows -- bit for bit, where a torch sum would round in another
    order; on another device a float64 torch sum (Flower's value within float32 rounding).
    """
    if arrays[0].device.type == "cpu":
        views = [array.detach().numpy().reshape(shape) for array, shape in zip(arrays, shapes)]
        return l2_norm(views) if squared else get_norm(views)
    total = float(sum(array.to(torch.float64).square().sum() for array in arrays))
    return total if squared else math.sqrt(total)


def flower_mean(rows: torch.Tensor, order: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """``aggregate_arrayrecords`` on rows ``order`` (weights in that order): bit for bit.

    Factors ``w / sum(w)`` in Python floats; ``x_0 * f_0``, then ``+= x_k * f_k`` client by client
    in ``order``, in NumPy's dtype (float32 times a Python float is a float32 multiply in both).
    """
    total = sum(weights)
    target = numpy_dtype(rows.dtype)
    mean: torch.Tensor | None = None
    for index, weight in zip(order, weights):
        term = rows[index].to(target) * (weight / total)
        mean = term if mean is None else mean.add_(term)
    assert mean is not None
    return mean


def numpy_median(rows: torch.Tensor) -> torch.Tensor:
    """``np.median(rows, axis=0)``, bit for bit: the middle value, or ``(lower + upper) / 2`` in the rows' dtype."""
    ordered = sorted_rows(rows)
    half = rows.shape[0] // 2
    return ordered[half].clone() if rows.shape[0] % 2 else (ordered[half - 1] + ordered[half]) / 2


def trimmed_mean(rows: torch.Tensor, cut_fraction: float) -> torch.Tensor:
    """Flower's ``trim_mean``: drop ``int(cut_fraction * K)`` values at each end per coordinate, average the rest.

    The kept values are summed in ascending order; NumPy sums them in ``np.partition``'s order,
    which is ascending when at most 4 are kept (bit for bit) and unspecified otherwise.
    """
    lowercut = int(cut_fraction * rows.shape[0])
    kept = sorted_rows(rows)[lowercut : rows.shape[0] - lowercut]
    return _sequential_sum(kept) / kept.shape[0]


def closest_mean(rows: torch.Tensor, reference: torch.Tensor, beta: int) -> torch.Tensor:
    """Bulyan's ``aggregate_n_closest_weights``: per coordinate the mean of the ``beta`` values closest to
    ``reference``, summed in ascending distance (ties by row)."""
    nearest = torch.sort((rows - reference).abs(), dim=0, stable=True).indices[:beta]
    return _sequential_sum(rows.gather(0, nearest)) / beta


def squared_distances(stacked: StackedRound) -> torch.Tensor:
    """``[K, K]`` squared Euclidean distances between the clients' whole rows (every dtype), in float64.

    Computed as ``|a|^2 + |b|^2 - 2 a.b`` on columns centred on their mean (a translation, so the
    distances do not change, but the cancellation shrinks from the weights' size to the clients'
    spread), a chunk of columns at a time so that the float64 copy stays small.
    """
    k = len(stacked)
    gram = torch.zeros(k, k, dtype=torch.float64, device=stacked.device)
    step = max(1, _GRAM_CHUNK // k)
    for rows in stacked.rows.values():
        for start in range(0, rows.shape[1], step):
            chunk = rows[:, start : start + step].to(torch.float64)
            chunk = chunk - chunk.mean(dim=0)
            gram += chunk @ chunk.T
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_(min=0)
    return distances.fill_diagonal_(0)


def multikrum_selection(stacked: StackedRound, num_malicious_nodes: int, num_nodes_to_select: int) -> list[int]:
    """Flower's ``select_multikrum``: indices of the ``num_nodes_to_select`` lowest scores, best first.

    A client's score is the sum of its squared distances to its ``max(1, K - f - 2)`` nearest
    others (the smallest distance, its own zero, left out as Flower does) -- Blanchard et al.,
    "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """
    distances = squared_distances(stacked)
    num_closest = max(1, len(stacked) - num_malicious_nodes - 2)
    scores = torch.sort(distances, dim=1, stable=True).values[:, 1 : num_closest + 1].sum(dim=1)
    return torch.argsort(scores, stable=True)[:num_nodes_to_select].tolist()


def clip_to_global(replies: Sequence[ClientReply], current: ArrayRecord,
                   clipping_norm: float) -> tuple[list[ClientReply], list[bool]]:
    """Flower's server-side clipping (``compute_clip_model_update``) on the stack, for every reply at once.

    Each client's update ``u = w_k - w_global`` (NumPy's dtypes) is scaled by
    ``min(1, clipping_norm / ||u||)`` (the flat clipping of McMahan et al., "Learning
    Differentially Private Recurrent Language Models", ICLR 2018) and put back on the global
    model, ``w_global + u``, clipped or not, as Flower does. As in Flower, a 0-d array (BatchNorm's
    ``num_batches_tracked``) counts in the norm but is not scaled: NumPy's difference of two 0-d
    arrays is a scalar, which Flower's in-place ``*=`` rebinds instead of scaling. Returns the
    replies with their clipped rows (a new stack) and whether each was clipped (Flower's norm bit).
    """
    stacked = StackedRound.of(replies)
    assert stacked is not None, "validate_replies let no reply through"
    layout, device = stacked.layout, stacked.device
    bases = {name: _tensor(current[name], device).reshape(-1) for name in layout.names}
    updates: dict[str, torch.Tensor] = {}
    for dtype, members in layout.groups.items():
        for name, start, size, _ in members:
            rows = stacked.rows[dtype][:, start : start + size]
            kind = _promote(rows.dtype, bases[name].dtype)
            updates[name] = rows.to(kind) - bases[name].to(kind)
    norms = [flower_norm([updates[name][k] for name in layout.names], layout.shapes, squared=False)
             for k in range(len(stacked))]
    factors = [min(1, clipping_norm / norm) for norm in norms]
    clipped = [factor < 1 for factor in factors]
    scaled = [name for name, shape in zip(layout.names, layout.shapes) if shape != ()] if any(clipped) else []
    restored: dict[str, torch.Tensor] = {}
    for name, update in updates.items():
        if name in scaled:
            if not update.is_floating_point():
                raise TypeError(f"cannot clip integer array {name!r} ({update.dtype}) in place: Flower's "
                                "server-side clipping raises NumPy's casting error on it too")
            update = update * torch.tensor(factors, dtype=update.dtype, device=device)[:, None]
        kind = _promote(bases[name].dtype, update.dtype)
        restored[name] = bases[name].to(kind) + update.to(kind)
    new_layout = Layout(layout.names, tuple(str(restored[n].dtype).removeprefix("torch.") for n in layout.names),
                        layout.shapes)
    rows = {dtype: torch.cat([restored[name] for name, *_ in members], dim=1)
            for dtype, members in new_layout.groups.items()}
    stack = UpdateStack([r.client_id for r in stacked.replies], new_layout, rows)
    return [r.with_update(stack.view(k)) for k, r in enumerate(stacked.replies)], clipped


# ----------------------------------------------------------------------------- FedAvg and its server optimizers


class _ServerStepOnMean(flwr_strategy.FedAvg):
    """Puts the stacked weighted mean where ``FedAvg.aggregate_train``'s result goes.

    Listed after a Flower FedAvg subclass (``class FedAdam(flwr_strategy.FedAdam, _ServerStepOnMean)``),
    this class sits between it and ``FedAvg`` in the method resolution order: the subclass's
    ``aggregate_train`` calls ``super().aggregate_train(...)`` for the mean and applies its
    server step (FedAvgM's momentum, FedOpt's ``m_t``/``v_t``) to what it gets. On the stacked
    path that call returns the mean computed from the stack; otherwise it is FedAvg's. One server
    step, Flower's own, keeps the optimizer state consistent whichever path a round takes.
    """

    _stacked_result: Result | None = None  # set only during aggregate_stacked (not saved in checkpoints)

    def aggregate_train(self, server_round: int, replies) -> Result:  # noqa: ANN001 - Flower's signature
        if self._stacked_result is not None:
            return self._stacked_result
        return super().aggregate_train(server_round, replies)

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        """The weighted mean of the stack (bit for bit ``aggregate_arrayrecords``), then the strategy's server step."""
        stacked = _valid_round(self, replies)
        if stacked is None:
            return None, None
        self._stacked_result = (stacked.weighted_mean(self.weighted_by_key), _metrics(self, stacked.contents))
        try:
            return self.aggregate_train(server_round, [])
        finally:
            del self._stacked_result


class FedProx(flwr_strategy.FedProx, _ServerStepOnMean):
    """Flower's FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): a FedAvg
    aggregate (the proximal term is the clients'), on the stack."""


class FedAvgM(flwr_strategy.FedAvgM, _ServerStepOnMean):
    """Flower's FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification", 2019): the stacked mean, then Flower's momentum step."""


class FedAdam(flwr_strategy.FedAdam, _ServerStepOnMean):
    """Flower's FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): the stacked mean, then
    Flower's Adam step."""


class FedYogi(flwr_strategy.FedYogi, _ServerStepOnMean):
    """Flower's FedYogi (Reddi et al., ICLR 2021): the stacked mean, then Flower's Yogi step."""


class FedAdagrad(flwr_strategy.FedAdagrad, _ServerStepOnMean):
    """Flower's FedAdagrad (Reddi et al., ICLR 2021): the stacked mean, then Flower's Adagrad step."""


# ----------------------------------------------------------------------------- coordinate-wise statistics


class FedMedian(flwr_strategy.FedMedian):
    """Flower's FedMedian (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018): the coordinate-wise median of the stack, bit for bit."""

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        stacked = _valid_round(self, replies)
        if stacked is None:
            return None, None
        arrays = stacked.record({dtype: numpy_median(stacked.as_flower(dtype)) for dtype in stacked.rows})
        return arrays, _metrics(self, stacked.contents)


class FedTrimmedAvg(flwr_strategy.FedTrimmedAvg):
    """Flower's FedTrimmedAvg (Yin et al., ICML 2018): the coordinate-wise mean without the ``beta`` share of
    lowest and of highest values (see :func:`trimmed_mean` for how it compares with Flower's)."""

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        stacked = _valid_round(self, replies)
        if stacked is None:
            return None, None
        arrays = stacked.record({dtype: trimmed_mean(stacked.as_flower(dtype), self.beta) for dtype in stacked.rows})
        return arrays, _metrics(self, stacked.contents)


# ----------------------------------------------------------------------------- Byzantine-robust selection


class _StackedMultiKrum:
    """Multi-Krum on the stack: :func:`multikrum_selection`, then the weighted mean of the selected."""

    num_malicious_nodes: int
    num_nodes_to_select: int
    weighted_by_key: str

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        stacked = _valid_round(self, replies)  # type: ignore[arg-type]
        if stacked is None:
            return None, None
        chosen = multikrum_selection(stacked, self.num_malicious_nodes, self.num_nodes_to_select)
        return (stacked.weighted_mean(self.weighted_by_key, chosen),
                _metrics(self, [stacked.contents[i] for i in chosen]))  # type: ignore[arg-type]


class MultiKrum(_StackedMultiKrum, flwr_strategy.MultiKrum):
    """Flower's Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017): the mean of the ``num_nodes_to_select`` best Krum scores, on the stack."""


class Krum(_StackedMultiKrum, flwr_strategy.Krum):
    """Flower's Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017): the client with the best Krum score, on the stack."""


class Bulyan(flwr_strategy.Bulyan):
    """Flower's Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
    ICML 2018): Multi-Krum picks ``theta = n - 2f`` clients, then per coordinate the mean of the
    ``beta = theta - 2f`` values closest to their median; on the stack."""

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        if self.selection_rule is not select_multikrum:  # a user's rule reads per-client records
            return per_client(self, server_round, replies)
        stacked = _valid_round(self, replies)
        count, needed = len(stacked) if stacked is not None else 0, 4 * self.num_malicious_nodes + 3
        if stacked is None or count < needed:
            log(WARN, "Insufficient replies, skipping Bulyan aggregation: Required at least %d "
                "(4*num_malicious_nodes + 3), but received %d.", needed, count)
            return None, None
        theta = count - 2 * self.num_malicious_nodes
        beta = theta - 2 * self.num_malicious_nodes
        chosen = multikrum_selection(stacked, self.num_malicious_nodes, theta)
        flat = {}
        for dtype in stacked.rows:
            rows = stacked.as_flower(dtype, chosen)
            flat[dtype] = closest_mean(rows, numpy_median(rows), beta)
        return stacked.record(flat), _metrics(self, [stacked.contents[i] for i in chosen])


# ----------------------------------------------------------------------------- q-FedAvg


class QFedAvg(flwr_strategy.QFedAvg):
    """Flower's q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020) on the stack.

    Per client ``grad = L (w_global - w_k)`` (``L = 1 / client_learning_rate``),
    ``delta = loss^q grad`` and ``h = q loss^(q-1) ||grad||^2 + L loss^q``; the new model is
    ``w_global - sum(delta) / sum(h)``, float64 as Flower's is. Elementwise bit for bit; the norm
    is a float64 sum (Flower: float32), see the module.
    """

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        stacked = _valid_round(self, replies)
        if stacked is None:
            return None, None
        if self.current_arrays is None:
            raise AggregationError("Current global model weights are not available. Make sure to call"
                                   "`configure_train` before calling `aggregate_train`.")
        layout = stacked.layout
        integer = [name for name, dtype in zip(layout.names, layout.dtypes) if dtype not in _FLOATING]
        if integer:
            raise TypeError(f"q-FedAvg cannot aggregate integer arrays ({', '.join(integer)}): Flower's q-FedAvg "
                            "raises NumPy's casting error on them too")
        lipschitz = 1.0 / self.client_learning_rate
        start = stacked.flat(self.current_arrays, torch.float64)  # exact: float32 values fit float64
        sum_delta: dict[str, torch.Tensor] = {}
        sum_h = 0.0
        for k, message in enumerate(stacked.messages):
            loss = get_train_loss(message, self.train_loss_key)
            # NumPy's np.subtract(gw, lw, out=lw): a float64 difference rounded to lw's dtype equals the float32
            # difference (double rounding is harmless for p' >= 2p + 2); then lw *= L in lw's dtype
            grad = {dtype: (start[dtype] - rows[k].to(torch.float64)).to(rows.dtype) * lipschitz
                    for dtype, rows in stacked.rows.items()}
            norm = flower_norm(stacked.named(grad), layout.shapes, squared=True)
            loss_pow_q = np.float_power(loss + 1e-10, self.q)
            for dtype, g in grad.items():  # g *= loss_pow_q: a float64 product rounded to g's dtype
                delta = (g.to(torch.float64) * float(loss_pow_q)).to(g.dtype)
                sum_delta[dtype] = sum_delta[dtype] + delta if dtype in sum_delta else delta
            sum_h += self.q * np.float_power(loss + 1e-10, self.q - 1) * norm + lipschitz * loss_pow_q
        self.current_arrays.clear()  # as Flower's to_numpy_ndarrays(keep_input=False) leaves it
        new = {dtype: start[dtype] - sum_delta[dtype].to(torch.float64) / float(sum_h) for dtype in start}
        return stacked.record(new), _metrics(self, stacked.contents)


# ----------------------------------------------------------------------------- differential privacy wrappers


class _StackedDP:
    """What the DP wrappers share on the stacked path: replies in client-id order, and the per-client path
    when the wrapped strategy cannot aggregate stacks (a Flower strategy built outside the registry)."""

    strategy: flwr_strategy.Strategy

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        if not isinstance(self.strategy, StackAggregation):
            return per_client(self, server_round, replies)  # type: ignore[arg-type]
        return self._aggregate_stacked(server_round, sorted(replies, key=lambda r: r.client_id))

    def _aggregate_stacked(self, server_round: int, replies: list[ClientReply]) -> Result:
        raise NotImplementedError

    def _base(self, server_round: int, replies: list[ClientReply]) -> Result:
        return self.strategy.aggregate_stacked(server_round, replies)  # type: ignore[attr-defined]

    def _noised_release(self, server_round: int, replies: list[ClientReply], clip: bool) -> Result:
        """The fixed-clipping wrappers' round, as Flower's: validate the replies, clip each update to
        the global model on the stack (server-side clipping only), the base's stacked aggregate,
        then Flower's noise and the accountant's release."""
        messages = [r.message for r in replies]
        event = self._pop_pending_event(server_round)
        if not validate_replies(messages, self.num_sampled_clients, strict=self.accountant is not None):
            return None, None
        self._validate_uniform_weights(messages)
        if clip:
            replies, _ = clip_to_global(replies, self.current_arrays, self.clipping_norm)
            log(INFO, "aggregate_fit: parameters are clipped by value: %.4f.", self.clipping_norm)
        arrays, metrics = self._base(server_round, replies)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
            self._compose_release(event)
        return arrays, metrics


class DifferentialPrivacyServerSideFixedClipping(_StackedDP,
                                                  flwr_strategy.DifferentialPrivacyServerSideFixedClipping):
    """Flower's central DP with server-side fixed clipping (McMahan et al., ICLR 2018): clipping on the stack."""

    def _aggregate_stacked(self, server_round: int, replies: list[ClientReply]) -> Result:
        return self._noised_release(server_round, replies, clip=True)


class DifferentialPrivacyServerSideAdaptiveClipping(_StackedDP,
                                                     flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's central DP with server-side adaptive clipping (Andrew et al., "Differentially Private Learning
    with Adaptive Clipping", NeurIPS 2021): clipping on the stack, Flower's noisy clipping-norm update."""

    def _aggregate_stacked(self, server_round: int, replies: list[ClientReply]) -> Result:
        if not validate_replies([r.message for r in replies], self.num_sampled_clients):
            return None, None
        clipped, bits = clip_to_global(replies, self.current_arrays, self.clipping_norm)
        log(INFO, "aggregate_train: arrays in `ArrayRecord` are clipped by value: %.4f.", self.clipping_norm)
        self._geometric_update(self._noisy_fraction(sum(bits), len(replies)))  # draws before the noise, as Flower
        arrays, metrics = self._base(server_round, clipped)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
        return arrays, metrics


class DifferentialPrivacyClientSideFixedClipping(_StackedDP,
                                                  flwr_strategy.DifferentialPrivacyClientSideFixedClipping):
    """Flower's central DP with client-side fixed clipping: the base's stacked aggregate plus Flower's noise."""

    def _aggregate_stacked(self, server_round: int, replies: list[ClientReply]) -> Result:
        return self._noised_release(server_round, replies, clip=False)


class DifferentialPrivacyClientSideAdaptiveClipping(_StackedDP,
                                                     flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's central DP with client-side adaptive clipping: the base's stacked aggregate, Flower's
    clipping-norm update from the clients' norm bits, Flower's noise."""

    def _aggregate_stacked(self, server_round: int, replies: list[ClientReply]) -> Result:
        messages = [r.message for r in replies]
        if not validate_replies(messages, self.num_sampled_clients):
            return None, None
        for message in messages:
            if any(KEY_NORM_BIT not in record for record in message.content.metric_records.values()):
                raise AggregationError(f"KEY_NORM_BIT ('{KEY_NORM_BIT}') not found in MetricRecord or metrics "
                                       "for reply.")
        arrays, metrics = self._base(server_round, replies)
        self._update_clip_norm_from_replies(messages)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
        return arrays, metrics
