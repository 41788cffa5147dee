"""SCAFFOLD's server side: the server control variate c and the server step (``docs/methods.md``).

Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, with NIID-Bench's conventions (Li, Diao, Chen and He, "Federated
Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022). Every training task carries c
(the ArrayRecord :data:`~fedsim.core.protocol.CONTROL`) beside the global model x; every reply
carries the client's model y_i and its ``delta c_i`` (:data:`~fedsim.core.protocol.CONTROL_DELTA`,
a named stack on the stacked path). Over the clients S that succeeded, in client-id order:

* ``x <- x + eta_g * sum_S w_i (y_i - x)``, ``w_i = n_i / sum_S n`` -- computed as
  ``x + eta_g * (ybar - x)`` with ``ybar`` fedsim's weighted mean (the same bits as ``fedavg``'s
  aggregate); with ``eta_g = 1`` (the default, NIID-Bench's) it is ``ybar`` itself, so a first
  round with zero control variates is ``fedavg``'s bit for bit. Integer buffers take ``ybar``.
* ``c <- c + (1 / N) sum_S delta c_i`` -- N is the whole population (``partition.num_clients``),
  not |S|: c stays the mean of all N client control variates. Float64 sums, cast to c's dtype.

c starts at zero over the model's trainable parameters (:meth:`Scaffold.prepare`, called by the
method's start, :mod:`fedsim.methods.scaffold`); c, N and the x the round started from are plain
attributes, so a checkpoint keeps them and a resumed run continues with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedsim.core.arrays import aggregate_arrays
from fedsim.core.protocol import ARRAYS, CONTROL, CONTROL_DELTA, ClientReply
from fedsim.core.stack import weighted_mean

from .averaging import WeightedFedAvg, reply_order_key

Result = tuple[ArrayRecord | None, MetricRecord | None]


class ScaffoldError(ValueError):
    """SCAFFOLD cannot run or aggregate: not prepared, or a reply without its control delta."""


class Scaffold(WeightedFedAvg):
    """SCAFFOLD (option II, NIID-Bench's form): FedAvg's sample-weighted mean with a server learning rate,
    plus the server control variate c.

    Parameters
    ----------
    server_learning_rate : float (default: 1.0)
        eta_g, the server step on the weighted mean displacement; must be > 0.
    """

    def __init__(self, server_learning_rate: float = 1.0, **kwargs) -> None:  # noqa: ANN003 - FedAvg's arguments
        if not server_learning_rate > 0:
            raise ValueError(f"server_learning_rate = {server_learning_rate}: must be > 0")
        super().__init__(**kwargs)
        self.server_learning_rate = float(server_learning_rate)
        self.control: ArrayRecord | None = None  # c, over the trainable parameters
        self.population = 0  # N: the clients c averages over
        self.current_arrays: ArrayRecord | None = None  # x, the global model the round's clients received

    def prepare(self, parameters: Mapping[str, torch.Tensor], population: int) -> None:
        """Start c at zero over ``parameters`` (the model's trainable ones, by name) for ``population`` clients."""
        if population < 1:
            raise ScaffoldError(f"SCAFFOLD needs the population size N >= 1, got {population}")
        self.control = ArrayRecord({name: Array(np.zeros(tuple(p.shape), dtype=_numpy_dtype(p)))
                                    for name, p in parameters.items()})
        self.population = int(population)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's training tasks, each also carrying c (one record shared by every task)."""
        if self.control is None:
            raise ScaffoldError("SCAFFOLD's control variate is not initialised: call Scaffold.prepare(parameters, "
                                "population) before the first round (fedsim's scaffold method does)")
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[CONTROL] = self.control
        self.current_arrays = arrays
        return messages

    # ------------------------------------------------------------------ aggregation

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        """The per-client path: each reply's ``arrays`` and ``control-delta`` records."""
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        valid = sorted(valid, key=reply_order_key)
        contents = [m.content for m in valid]
        for message, content in zip(valid, contents):
            missing = [name for name in (ARRAYS, CONTROL_DELTA) if name not in content.array_records]
            if missing:
                raise ScaffoldError(f"a SCAFFOLD reply (node {message.metadata.src_node_id}) lacks the record(s) "
                                    f"{', '.join(missing)}: its client did not run SCAFFOLD's client side")
        mean = aggregate_arrays([c[ARRAYS] for c in contents], self._weights(contents))
        deltas = [c[CONTROL_DELTA].to_torch_state_dict() for c in contents]
        return self._step(mean, deltas), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        """The stacked path: models and control deltas read in place from their stacks."""
        if not replies:
            return None, None
        valid = sorted(replies, key=lambda r: r.client_id)
        contents = [r.content for r in valid]
        deltas = []
        for reply in valid:
            if CONTROL_DELTA in reply.extras:
                deltas.append(reply.extras[CONTROL_DELTA].tensors())
            elif CONTROL_DELTA in reply.content.array_records:
                deltas.append(reply.content[CONTROL_DELTA].to_torch_state_dict())
            else:
                raise ScaffoldError(f"client {reply.client_id}'s SCAFFOLD reply lacks its {CONTROL_DELTA}: its "
                                    "client did not run SCAFFOLD's client side")
        mean = weighted_mean([r.update for r in valid], self._weights(contents))
        return self._step(mean, deltas), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def _step(self, mean: ArrayRecord, deltas: list[Mapping[str, torch.Tensor]]) -> ArrayRecord:
        """The new x from the weighted mean (server learning rate), and c updated by the deltas."""
        self.control = control_update(self.control, deltas, self.population)
        if self.server_learning_rate == 1.0:
            return mean
        if self.current_arrays is None:
            raise ScaffoldError("SCAFFOLD aggregates from the global model its clients received: call "
                                "configure_train before aggregate_train")
        return server_step(self.current_arrays, mean, self.server_learning_rate)


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return np.dtype(str(tensor.dtype).removeprefix("torch."))


def control_update(control: ArrayRecord, deltas: list[Mapping[str, torch.Tensor]], population: int) -> ArrayRecord:
    """``c + (1 / N) sum_i delta c_i``: float64 sums in the order given, cast back to c's dtype."""
    updated = {}
    for name in control.keys():
        c = control[name].numpy()
        total = np.zeros(c.shape, dtype=np.float64)
        for delta in deltas:
            if name not in delta:
                raise ScaffoldError(f"a SCAFFOLD control delta lacks {name!r}: it must cover every array of c")
            total += delta[name].detach().cpu().to(torch.float64).numpy().reshape(c.shape)
        updated[name] = Array((c.astype(np.float64) + total / population).astype(c.dtype))
    return ArrayRecord(updated)


def server_step(start: ArrayRecord, mean: ArrayRecord, rate: float) -> ArrayRecord:
    """``x + rate * (ybar - x)`` per floating array in float64, cast back; integer arrays take ``ybar``."""
    out = {}
    for name in mean.keys():
        ybar = mean[name].numpy()
        if not np.issubdtype(ybar.dtype, np.floating):
            out[name] = Array(ybar)
            continue
        x = start[name].numpy().astype(np.float64)
        out[name] = Array((x + rate * (ybar.astype(np.float64) - x)).astype(ybar.dtype))
    return ArrayRecord(out)


def control_record_bytes(parameters: Mapping[str, torch.Tensor]) -> int:
    """Bytes of c (and of a delta c_i) as Flower serializes it, for ``parameters`` (name -> tensor)."""
    return ArrayRecord({name: Array(np.zeros(tuple(p.shape), dtype=_numpy_dtype(p)))
                        for name, p in parameters.items()}).count_bytes()

