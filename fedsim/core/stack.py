"""Client updates kept stacked: one tensor per dtype for all the clients a worker trained.

A worker that trained K clients of one architecture holds K state dicts of identical names,
shapes and dtypes. Serializing each into a Flower ``ArrayRecord`` (``np.save`` of every
tensor), sending K records, reading each back (``np.load``) and summing them one array at a
time cost several milliseconds per client -- more than training a small client takes. Here
they stay one :class:`UpdateStack`: per dtype, a ``[K, P]`` tensor whose row ``k`` is client
``k``'s arrays flattened in state-dict order (:class:`Layout`). A worker replies with its
stacks (one ``Array`` per dtype on the wire, :meth:`UpdateStack.to_record`), the server keeps
them as they arrive, and each client's reply holds a :class:`StackedUpdate`: a view of its
row. What needs one client's arrays reads the view; a strategy that wants Flower's
per-client ``ArrayRecord`` gets one built from the view when it asks
(:meth:`StackedUpdate.record`). Other per-client arrays a method sends beside the weights (e.g.
SCAFFOLD's control-variate delta) are stacks too, one per record name and layout: *named
stacks*, a reply's :attr:`~fedsim.core.protocol.ClientReply.extras`.

:func:`weighted_mean` is the one weighted average of fedsim's averaging strategies and of
streaming workers: float64 accumulation over the clients in the order given (client-id
order), each array cast back to its dtype (integer buffers rounded). Because the sum runs
client by client in that order, it does not depend on how the clients were split among
workers, and it equals the per-client NumPy sum it replaces bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord

if TYPE_CHECKING:
    from .protocol import ClientReply


@dataclass(frozen=True)
class Layout:
    """Where each named array sits in a stacked row: (name, dtype, shape) in state-dict order."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]  # torch dtype names, e.g. "float32", "int64"
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        return cls(tuple(state), tuple(str(t.dtype).removeprefix("torch.") for t in state.values()),
                   tuple(tuple(t.shape) for t in state.values()))

    @cached_property
    def groups(self) -> dict[str, list[tuple[str, int, int, tuple[int, ...]]]]:
        """Per dtype: (name, offset, size, shape) of each array in that dtype's flat row."""
        groups: dict[str, list[tuple[str, int, int, tuple[int, ...]]]] = {}
        offsets: dict[str, int] = {}
        for name, dtype, shape in zip(self.names, self.dtypes, self.shapes):
            size = int(np.prod(shape, dtype=np.int64)) if shape else 1
            start = offsets.get(dtype, 0)
            groups.setdefault(dtype, []).append((name, start, size, shape))
            offsets[dtype] = start + size
        return groups

    @cached_property
    def record_bytes(self) -> int:
        """What ``ArrayRecord.count_bytes`` says of one client's arrays as Flower would serialize them
        (each ``.npy`` header and data, plus the keys), without serializing anything."""
        total = 0
        for name, dtype, shape in zip(self.names, self.dtypes, self.shapes):
            np_dtype = np.dtype(dtype)
            header = io.BytesIO()
            meta = {"descr": np.lib.format.dtype_to_descr(np_dtype), "fortran_order": False, "shape": shape}
            try:
                np.lib.format.write_array_header_1_0(header, meta)
            except ValueError:  # a header too long for format 1.0, as np.save would then write
                np.lib.format.write_array_header_2_0(header, meta)
            size = int(np.prod(shape, dtype=np.int64)) if shape else 1
            total += len(header.getvalue()) + size * np_dtype.itemsize + len(name)
        return total

    def to_config(self) -> dict:
        return {"names": list(self.names), "dtypes": list(self.dtypes),
                "ndims": [len(s) for s in self.shapes], "dims": [d for s in self.shapes for d in s]}

    @classmethod
    def from_config(cls, record: Mapping) -> Layout:
        dims, shapes, at = list(record["dims"]), [], 0
        for ndim in record["ndims"]:
            shapes.append(tuple(int(d) for d in dims[at : at + int(ndim)]))
            at += int(ndim)
        return cls(tuple(record["names"]), tuple(record["dtypes"]), tuple(shapes))


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass
class UpdateStack:
    """K clients' arrays of one :class:`Layout`: per dtype a ``[K, P]`` tensor, rows in ``client_ids`` order."""

    client_ids: list[int]
    layout: Layout
    rows: dict[str, torch.Tensor]  # dtype name -> [K, P]
    _finite: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def of(cls, client_ids: Sequence[int], states: Sequence[Mapping[str, torch.Tensor]]) -> UpdateStack:
        """Stack state dicts of one layout (copies each client's tensors once, into its row)."""
        layout = Layout.of(states[0])
        rows = {}
        for dtype, members in layout.groups.items():
            rows[dtype] = torch.stack([torch.cat([state[name].detach().reshape(-1) for name, *_ in members])
                                       for state in states])
        return cls(list(client_ids), layout, rows)

    def __len__(self) -> int:
        return len(self.client_ids)

    def view(self, index: int) -> StackedUpdate:
        return StackedUpdate(self, index)

    def views(self) -> list[StackedUpdate]:
        return [StackedUpdate(self, k) for k in range(len(self))]

    def nonfinite(self, index: int) -> list[str]:
        """Names of client ``index``'s floating arrays that hold NaN or Inf (one pass over the stack)."""
        if self._finite is None:
            flags = [torch.isfinite(rows).all(dim=1) for dtype, rows in self.rows.items()
                     if rows.is_floating_point()]
            self._finite = torch.stack(flags).all(dim=0) if flags else torch.ones(len(self), dtype=torch.bool)
        if bool(self._finite[index]):
            return []
        return [name for name, tensor in self.view(index).tensors().items()
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]

    # ---------------------------------------------------------------- on the wire

    def to_record(self) -> tuple[ArrayRecord, dict]:
        """One ``Array`` per dtype (``[K, P]``) and the layout, for a worker's reply."""
        record = ArrayRecord({dtype: Array(rows.detach().cpu().numpy()) for dtype, rows in self.rows.items()})
        return record, {"clients": list(self.client_ids), **self.layout.to_config()}

    @classmethod
    def from_record(cls, record: ArrayRecord, meta: Mapping) -> UpdateStack:
        layout = Layout.from_config(meta)
        # np.load of Flower's bytes gives a read-only array: torch needs its own (writable) copy
        rows = {dtype: torch.from_numpy(np.array(record[dtype].numpy())) for dtype in layout.groups}
        return cls([int(c) for c in meta["clients"]], layout, rows)


@dataclass(frozen=True)
class StackedUpdate:
    """One client's arrays: row ``index`` of ``stack``, read in place."""

    stack: UpdateStack
    index: int

    @property
    def client_id(self) -> int:
        return self.stack.client_ids[self.index]

    @property
    def layout(self) -> Layout:
        return self.stack.layout

    def tensors(self) -> dict[str, torch.Tensor]:
        """name -> tensor, in state-dict order: views of the stack (no copy)."""
        out = {}
        for dtype, members in self.layout.groups.items():
            row = self.stack.rows[dtype][self.index]
            for name, start, size, shape in members:
                out[name] = row[start : start + size].view(shape)
        return {name: out[name] for name in self.layout.names}

    def record(self) -> ArrayRecord:
        """The client's arrays as Flower's ``ArrayRecord`` (serialized now: for per-client strategies)."""
        return ArrayRecord({name: Array(tensor.detach().cpu().numpy()) for name, tensor in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        return self.layout.record_bytes


def weighted_mean(updates: Sequence[StackedUpdate], weights: Sequence[float] | np.ndarray) -> ArrayRecord:
    """Weighted mean of the updates, weights normalised to sum 1, in the updates' order; dtypes kept.

    Accumulated in float64 one client at a time (a multiply, then an add: no fused
    multiply-add), so the result depends on the order of ``updates`` only -- not on which stacks
    they live in -- and equals :func:`fedsim.core.arrays.aggregate_arrays` on the same arrays.
    Integer arrays (BatchNorm's ``num_batches_tracked``) are rounded.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(updates) != len(w) or not len(updates):
        raise ValueError(f"need one weight per update, got {len(w)} weights for {len(updates)} updates")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    layout = updates[0].layout
    if any(u.layout != layout for u in updates):
        raise ValueError("updates of different layouts (names, shapes or dtypes) cannot be averaged")
    w = w / w.sum()
    totals = {dtype: torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
              for dtype, rows in updates[0].stack.rows.items()}
    for update, weight in zip(updates, w.tolist()):
        for dtype, total in totals.items():
            total.add_(update.stack.rows[dtype][update.index].to(torch.float64) * weight)
    out: dict[str, Array] = {}
    for dtype, members in layout.groups.items():
        total = totals[dtype]
        if not _torch_dtype(dtype).is_floating_point:
            total = torch.round(total)  # round half to even, as np.rint
        flat = total.to(_torch_dtype(dtype)).cpu().numpy()
        for name, start, size, shape in members:
            out[name] = Array(flat[start : start + size].reshape(shape).copy())  # 0-d stays 0-d
    return ArrayRecord({name: out[name] for name in layout.names})


def stack_of_records(records: Sequence[ArrayRecord], client_ids: Sequence[int] | None = None) -> UpdateStack:
    """Per-client ``ArrayRecord``s (of one layout) as a stack: the per-client path's arrays, averaged the same way."""
    states = [{name: torch.from_numpy(np.asarray(record[name].numpy())) for name in record.keys()}
              for record in records]
    return UpdateStack.of(list(client_ids) if client_ids is not None else list(range(len(records))), states)


@runtime_checkable
class StackAggregation(Protocol):
    """A strategy that can aggregate stacked updates in place (no per-client ``ArrayRecord``).

    ``aggregate_stacked`` gets the round's successful training replies, each with its
    :class:`StackedUpdate` and its metrics message, and returns what ``aggregate_train``
    would have returned for the same replies.
    """

    def aggregate_stacked(self, server_round: int,
                          replies: Sequence[ClientReply]) -> tuple[ArrayRecord | None, MetricRecord | None]: ...
