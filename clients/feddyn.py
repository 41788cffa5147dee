"""FedDyn's client side: the client's state H_k, its alpha_k and the dynamically regularised loss.

Acar, Zhao, Matas, Mattina, Whatmough and Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021, following the official code (alpemreacar/FedDyn, ``utils_methods.py``,
``train_feddyn_mdl``). A FedDyn training task carries alpha (:data:`~fedsim.core.protocol.FEDDYN_ALPHA`)
and the clipping norm (:data:`~fedsim.core.protocol.FEDDYN_MAX_GRAD_NORM`) in its config beside the
cloud model w_cloud (the task's arrays). Client k, with n_k training samples out of a population of
N clients holding sum_n samples:

1. ``alpha_k = alpha / (n_k N / sum_n)`` (the official code's ``alpha_coef / weight_list[clnt]``);
2. reads H_k from the client-state store (namespace :data:`NAMESPACE`; zeros the first time); the
   paper's gradient state is ``g_k = -alpha_k H_k``;
3. trains from w_cloud on ``CE + alpha_k <w, H_k - w_cloud> + (alpha_k / 2) ||w||^2``: the linear
   term as the gradient offset ``alpha_k (H_k - w_cloud)`` (:data:`~fedsim.clients.training.StepOffset`,
   added to the loss gradient, so it goes through clipping and momentum as in the official loss),
   the quadratic one as weight decay ``alpha_k + train.weight_decay`` (the official code's SGD),
   the gradient clipped to ``max_grad_norm`` (official: 10) before weight decay -- either engine;
4. stores ``H_k <- H_k + (w_k - w_cloud)`` and replies with w_k only (the server tracks the mean of
   the H_k itself, :mod:`fedsim.strategies.feddyn`).

H_k covers the model's trainable parameters, not BatchNorm's buffers. A client without training
samples takes no step (``alpha_k = 0``) and keeps its H_k. A non-finite H_k is neither stored
nor sent: the update fails as a diverged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Message

from fedsim.core.arrays import nonfinite_update
from fedsim.core.protocol import ARRAYS, FEDDYN_ALPHA, FEDDYN_MAX_GRAD_NORM, message_config
from fedsim.core.recipe import SGDRecipe

from .training import StepOffset
from .worker import WorkerRun

NAMESPACE = "feddyn"  # client_state/feddyn/<client id>.pt holds H_k


class DivergedState(ValueError):
    """The client's new H_k has NaN or infinite values: it is neither stored nor sent."""


def client_alpha(alpha: float, num_train: int, num_clients: int, total_train: int) -> float:
    """``alpha_k = alpha / (n_k N / sum_n)``: alpha scaled by the client's share relative to an equal one.

    0 for a client without samples (it takes no step, so its weight decay is never used).
    """
    if num_train <= 0:
        return 0.0
    return alpha / (num_train * num_clients / total_train)


@dataclass
class ClientDynamics:
    """One client's FedDyn state for one task: alpha_k, the cloud model it starts from and its H_k."""

    client_id: int
    alpha_k: float
    max_grad_norm: float
    cloud: dict[str, torch.Tensor]  # w_cloud's trainable parameters, by name
    own: dict[str, torch.Tensor]  # H_k (zeros when the client has none stored)

    @classmethod
    def of_task(cls, run: WorkerRun, msg: Message, client_id: int) -> ClientDynamics | None:
        """The FedDyn state of a task, on the run's device (None: the task is not FedDyn's)."""
        if not msg.has_content():
            return None
        config = message_config(msg)
        if FEDDYN_ALPHA not in config:
            return None
        partition = run.partition
        alpha_k = client_alpha(float(config[FEDDYN_ALPHA]), len(partition.train_of(client_id)),
                               partition.num_clients, len(partition.train_indices))
        names = dict(run.model(run.spec.architecture_of(client_id)).named_parameters())
        received = msg.content[ARRAYS].to_torch_state_dict()
        cloud = {name: received[name].to(run.device) for name in names}
        stored = run.state_store(NAMESPACE).load(client_id)
        own = {name: (stored[name].to(w) if stored is not None and name in stored else torch.zeros_like(w))
               for name, w in cloud.items()}
        return cls(client_id, alpha_k, float(config.get(FEDDYN_MAX_GRAD_NORM, 0.0)), cloud, own)

    @property
    def gradient_offset(self) -> StepOffset:
        """``alpha_k (H_k - w_cloud)``: the gradient of the loss's linear term, added to every step's gradient."""
        return {name: self.alpha_k * (self.own[name] - w) for name, w in self.cloud.items()}

    def recipe(self, base: SGDRecipe) -> SGDRecipe:
        """The client's recipe: weight decay ``alpha_k + base.weight_decay`` and the clipping norm."""
        return base.for_feddyn(self.alpha_k, self.max_grad_norm)

    def finish(self, run: WorkerRun, trained: dict[str, torch.Tensor]) -> None:
        """Store ``H_k + (w_k - w_cloud)``; refuse a non-finite one."""
        new = {name: self.own[name] + (trained[name].detach().to(w) - w) for name, w in self.cloud.items()}
        bad = [name for name, value in new.items() if not bool(torch.isfinite(value).all())]
        if bad:
            raise DivergedState(nonfinite_update(bad))
        run.state_store(NAMESPACE).save(self.client_id, new)
