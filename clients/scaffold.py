"""SCAFFOLD's client side: the client control variate c_i, the corrected step and option II.

Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, as NIID-Bench implements it (Li, Diao, Chen and He, "Federated
Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022). A SCAFFOLD training task
carries the server control variate c as the ArrayRecord :data:`~fedsim.core.protocol.CONTROL`
next to the global model x. The client

1. reads its own c_i from the client-state store (namespace :data:`NAMESPACE`; zeros the first
   time it is sampled);
2. trains with the step offset ``c - c_i`` (:data:`~fedsim.clients.training.StepOffset`: after
   every optimizer step, ``y <- y - lr * (c - c_i)``) -- either engine;
3. computes option II, ``c_i+ = c_i - c + (x - y) / (K lr)`` with K the SGD steps it actually took
   and ``x - y`` the raw displacement, stores c_i+ and replies with ``delta c_i = c_i+ - c_i``
   (:data:`~fedsim.core.protocol.CONTROL_DELTA`) beside its model.

Control variates cover the model's trainable parameters (the names c carries), not BatchNorm's
buffers. A client that took no step (an empty training split) keeps its c_i: ``delta c_i = 0``.
A non-finite c_i+ is neither stored nor sent: the update fails as a diverged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message

from fedsim.core.arrays import nonfinite_update
from fedsim.core.protocol import ARRAYS, CONTROL

from .training import StepOffset
from .worker import WorkerRun

NAMESPACE = "scaffold"  # client_state/scaffold/<client id>.pt holds c_i


class DivergedControl(ValueError):
    """The client's new control variate has NaN or infinite values: it is neither stored nor sent."""


@dataclass
class ClientControl:
    """One client's control variates for one SCAFFOLD task: the server's c and its own c_i."""

    client_id: int
    server: dict[str, torch.Tensor]  # c, by parameter name
    own: dict[str, torch.Tensor]  # c_i (zeros when the client has none stored)

    @classmethod
    def of_task(cls, run: WorkerRun, msg: Message, client_id: int) -> ClientControl | None:
        """The control variates of a SCAFFOLD task, on the run's device (None: the task carries no c)."""
        if not msg.has_content() or CONTROL not in msg.content.array_records:
            return None
        server = {name: tensor.to(run.device) for name, tensor in msg.content[CONTROL].to_torch_state_dict().items()}
        stored = run.state_store(NAMESPACE).load(client_id)
        own = {name: (stored[name].to(c) if stored is not None and name in stored else torch.zeros_like(c))
               for name, c in server.items()}
        return cls(client_id, server, own)

    @property
    def offset(self) -> StepOffset:
        """``c - c_i``: what the corrected step subtracts (times the learning rate) after every step."""
        return {name: c - self.own[name] for name, c in self.server.items()}

    def finish(self, run: WorkerRun, msg: Message, trained: dict[str, torch.Tensor], steps: int,
               lr: float) -> dict[str, torch.Tensor]:
        """Option II from the received x (the task's arrays) and the trained y; store c_i+, return delta c_i."""
        if steps <= 0:
            return {name: torch.zeros_like(c) for name, c in self.own.items()}
        start = msg.content[ARRAYS].to_torch_state_dict()
        new, delta = {}, {}
        for name, c in self.server.items():
            x = start[name].to(c)
            y = trained[name].detach().to(c)
            new[name] = self.own[name] - c + (x - y) / (steps * lr)
            delta[name] = new[name] - self.own[name]
        bad = [name for name, value in new.items() if not bool(torch.isfinite(value).all())]
        if bad:
            raise DivergedControl(nonfinite_update(bad))
        run.state_store(NAMESPACE).save(self.client_id, new)
        return delta
