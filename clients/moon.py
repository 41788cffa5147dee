"""MOON's client side: the model-contrastive term of local training and the client's previous model.

Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021. The ``moon`` strategy
(:class:`fedsim.strategies.contrastive.Moon`) sends ``mu`` and the temperature ``tau`` in the
task's config (:data:`~fedsim.core.protocol.MOON_MU`, :data:`~fedsim.core.protocol.MOON_TEMPERATURE`);
the client then minimises, per batch::

    loss  = task loss + mu * l_con
    l_con = -log( exp(cos(z, z_glob) / tau) / (exp(cos(z, z_glob) / tau) + exp(cos(z, z_prev) / tau)) )

averaged over the batch, where z is the batch's representation by the model being trained,
z_glob by the global model the client received this round and z_prev by the client's own model
after its previous round of training (MOON's ``model_buffer_size`` = 1); both are frozen and
run in eval mode. The task loss is the cross-entropy, after the run's client hooks' ``loss``
stages. The representation is :class:`~fedsim.models.FedsimNet`'s
``forward(x, return_representation=True)``: the representation layer's output when
``model.representation_dim > 0``, else the body's features (the classifier's input); MOON's
projection head is not added.

In a client's first round it has no previous model: l_con = 0 (not computed), as in MOON's
code, whose model pool is empty in round 0. After training, the client's weights are saved in
the client-state store (``client_state/moon/<client id>.pt``), which a run's checkpoints copy,
so a resumed run reads the same previous models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord
from torch import nn

from fedsim.core.protocol import MOON_MU, MOON_TEMPERATURE, hook_metric_key

from .training import cross_entropy_objective
from .worker import WorkerRun

NAMESPACE = "moon"  # client_state/moon/: each client's model after its last round of training
METRIC = "moon"  # its statistics travel as hook.moon.<metric> (and land in hooks.csv)

BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The client hooks' ``loss`` stages: (x batch, y batch, logits, loss) -> loss (``TrainingInputs.batch_loss``)."""


@dataclass(frozen=True)
class MoonSetting:
    """What the ``moon`` strategy asks of a client: the term's weight and temperature."""

    mu: float
    temperature: float

    @classmethod
    def from_config(cls, config: ConfigRecord) -> MoonSetting | None:
        """The setting a task's config carries; None when the task is not MOON's."""
        if MOON_MU not in config:
            return None
        return cls(float(config[MOON_MU]), float(config[MOON_TEMPERATURE]))  # type: ignore[arg-type]


def model_contrastive_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """l_con averaged over the batch: cross-entropy of [cos(z, z_glob), cos(z, z_prev)] / tau with the
    global model's as the positive (MOON's ``CrossEntropyLoss`` on the logits with label 0)."""
    positive = F.cosine_similarity(z, z_glob, dim=-1)
    negative = F.cosine_similarity(z, z_prev, dim=-1)
    logits = torch.stack([positive, negative], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def _frozen(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


class ContrastiveObjective:
    """The per-batch objective of a MOON client: (task loss + mu * l_con, logits).

    ``global_model``: the received model, before training (a frozen copy is kept);
    ``previous``: the client's stored previous weights, or None in its first round;
    ``batch_loss``: the client hooks' ``loss`` stages on the cross-entropy (None: none; the
    client sets it once its hooks have prepared, :meth:`fedsim.clients.client.LocalClient.fit`).
    """

    def __init__(self, setting: MoonSetting, global_model: nn.Module, previous: dict[str, torch.Tensor] | None,
                 batch_loss: BatchLoss | None = None) -> None:
        self.setting = setting
        self.batch_loss = batch_loss
        self.global_model = _frozen(global_model) if previous is not None else None
        self.previous: nn.Module | None = None
        if previous is not None:
            self.previous = _frozen(global_model)
            self.previous.load_state_dict(previous, strict=True)
        self._sum: torch.Tensor | float = 0.0  # summed on the device: no host synchronisation per step
        self._batches = 0

    def __call__(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                 idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.previous is None:  # first round of this client: l_con = 0, the plain objective
            loss, logits = cross_entropy_objective(model, xb, yb, idx)
        else:
            logits, z = model(xb, return_representation=True)
            loss = F.cross_entropy(logits, yb)
        if self.batch_loss is not None:
            loss = self.batch_loss(xb, yb, logits, loss)
        if self.previous is None:
            return loss, logits
        with torch.no_grad():
            _, z_glob = self.global_model(xb, return_representation=True)
            _, z_prev = self.previous(xb, return_representation=True)
        contrastive = model_contrastive_loss(z, z_glob, z_prev, self.setting.temperature)
        self._sum = contrastive.detach() + self._sum
        self._batches += 1
        return loss + self.setting.mu * contrastive, logits

    def report(self) -> dict[str, float]:
        """``hook.moon.*``: mu, whether a previous model was used, the mean l_con over the batches."""
        mean = float(self._sum) / self._batches if self._batches else 0.0
        return {hook_metric_key(METRIC, "mu"): self.setting.mu,
                hook_metric_key(METRIC, "has_previous"): float(self.previous is not None),
                hook_metric_key(METRIC, "mean_contrastive_loss"): mean}


def contrastive_objective(run: WorkerRun, client_id: int, global_model: nn.Module,
                          config: ConfigRecord) -> ContrastiveObjective | None:
    """A client's MOON objective for a task (None unless the task is MOON's), its previous model read.

    ``global_model`` holds the weights the task received, not yet trained.
    """
    setting = MoonSetting.from_config(config)
    if setting is None:
        return None
    previous = run.state_store(NAMESPACE).load(client_id)  # on the CPU; loading copies it to the model's device
    return ContrastiveObjective(setting, global_model, previous)


def keep_local_model(run: WorkerRun, client_id: int, state: dict[str, torch.Tensor]) -> None:
    """Save the client's trained weights: its previous model the next time it trains."""
    run.state_store(NAMESPACE).save(client_id, state)

