"""FedDyn's server side (``feddyn``): the plain mean, the clients' mean state and the cloud model.

Acar, Zhao, Matas, Mattina, Whatmough and Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021, following the official code (alpemreacar/FedDyn, ``utils_methods.py``,
``train_FedDyn``). Every training task carries alpha and the clients' gradient clipping norm in its
config (the clients' side, :mod:`fedsim.clients.feddyn`); every reply carries the client's model
w_k. Over the clients S that succeeded (in client-id order):

* ``avg = (1 / |S|) sum_S w_k`` -- the *unweighted* mean, as the official code's
  ``np.mean(clnt_params_list[selected_clnts])`` (fedsim's ``uniform`` aggregate, the same bits);
* ``mean_H <- mean_H + (1 / N) sum_S (w_k - w_cloud)`` -- the mean over all N clients
  (``partition.num_clients``) of the client states H_k (the paper's ``-h / alpha``); with the plain
  mean, ``sum_S (w_k - w_cloud) = |S| (avg - w_cloud)``. Float64, cast to the parameter's dtype.
* ``w_cloud <- avg + mean_H`` on the trainable parameters (integer and float buffers take avg's).

w_cloud is the next round's global model (what the run evaluates, saves and sends); avg is kept as
:attr:`FedDyn.average`, which the method's round extension evaluates on the test set beside it
(:mod:`fedsim.methods.feddyn`). mean_H, N, the round's w_cloud and avg are plain attributes, so a
checkpoint keeps them and a resumed run continues with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedsim.core.protocol import FEDDYN_ALPHA, FEDDYN_MAX_GRAD_NORM, ClientReply

from .averaging import UniformAvg

Result = tuple[ArrayRecord | None, MetricRecord | None]


class FedDynError(ValueError):
    """FedDyn cannot run or aggregate: its state is not prepared, or a round was not configured."""


class FedDyn(UniformAvg):
    """FedDyn (official code's form): the plain mean of the client models, shifted by the clients' mean state.

    Parameters
    ----------
    alpha : float (default: 0.01)
        The dynamic regulariser's weight, > 0 (the paper's CIFAR-10 example); client k uses
        ``alpha_k = alpha / (n_k N / sum_n)``.
    max_grad_norm : float (default: 10.0)
        The clients' gradient clipping norm, as the official code's ``max_norm``; 0 turns clipping off.
    """

    def __init__(self, alpha: float = 0.01, max_grad_norm: float = 10.0, **kwargs) -> None:  # noqa: ANN003
        if not alpha > 0:
            raise ValueError(f"alpha = {alpha}: must be > 0")
        if not max_grad_norm >= 0:
            raise ValueError(f"max_grad_norm = {max_grad_norm}: must be >= 0 (0: no clipping)")
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.max_grad_norm = float(max_grad_norm)
        self.mean_state: ArrayRecord | None = None  # mean_H over all N clients, on the trainable parameters
        self.population = 0  # N
        self.current_arrays: ArrayRecord | None = None  # w_cloud, the model the round's clients received
        self.average: ArrayRecord | None = None  # avg, the plain mean of the latest round's client models

    def prepare(self, parameters: Mapping[str, torch.Tensor], population: int) -> None:
        """Start mean_H at zero over ``parameters`` (the model's trainable ones) for ``population`` clients."""
        if population < 1:
            raise FedDynError(f"FedDyn needs the population size N >= 1, got {population}")
        self.mean_state = ArrayRecord({name: Array(np.zeros(tuple(p.shape), dtype=np.float64))
                                       for name, p in parameters.items()})
        self.population = int(population)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's training tasks, their config carrying alpha and the clipping norm."""
        if self.mean_state is None:
            raise FedDynError("FedDyn's mean client state is not initialised: call FedDyn.prepare(parameters, "
                              "population) before the first round (fedsim's feddyn method does)")
        config[FEDDYN_ALPHA] = self.alpha
        config[FEDDYN_MAX_GRAD_NORM] = self.max_grad_norm
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        """The per-client path: the plain mean of the replies' models, then the cloud model."""
        replies = list(replies)
        average, metrics = super().aggregate_train(server_round, replies)
        return self._cloud(average, sum(1 for m in replies if not m.has_error())), metrics

    def aggregate_stacked(self, server_round: int, replies: Sequence[ClientReply]) -> Result:
        """The stacked path: the plain mean read from the stacks, then the cloud model."""
        average, metrics = super().aggregate_stacked(server_round, replies)
        return self._cloud(average, len(replies)), metrics

    def _cloud(self, average: ArrayRecord | None, sampled: int) -> ArrayRecord | None:
        """mean_H updated by ``sampled`` clients whose mean is ``average``; returns ``average + mean_H``."""
        if average is None:
            return None
        if self.current_arrays is None or self.mean_state is None:
            raise FedDynError("FedDyn aggregates from the cloud model its clients received: call configure_train "
                              "(after prepare) before aggregate_train")
        self.average = average
        self.mean_state = state_update(self.mean_state, self.current_arrays, average, sampled, self.population)
        return cloud_model(average, self.mean_state)


def state_update(mean_state: ArrayRecord, cloud: ArrayRecord, average: ArrayRecord, sampled: int,
                 population: int) -> ArrayRecord:
    """``mean_H + (|S| / N) (avg - w_cloud)``, in float64 (mean_H is kept in float64)."""
    updated = {}
    for name in mean_state.keys():
        drift = average[name].numpy().astype(np.float64) - cloud[name].numpy().astype(np.float64)
        updated[name] = Array(mean_state[name].numpy() + drift * (sampled / population))
    return ArrayRecord(updated)


def cloud_model(average: ArrayRecord, mean_state: ArrayRecord) -> ArrayRecord:
    """``avg + mean_H`` on the arrays mean_H covers (float64 sum, cast to avg's dtype); others are avg's."""
    out = {}
    for name in average.keys():
        avg = average[name].numpy()
        if name in mean_state:
            out[name] = Array((avg.astype(np.float64) + mean_state[name].numpy()).astype(avg.dtype))
        else:
            out[name] = Array(avg)
    return ArrayRecord(out)
