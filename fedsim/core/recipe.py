"""The local-training recipe, defined once: what a client's optimiser does in one round.

A leaf module. The experiment config's ``[train]`` (and, for federated distillation,
``[distill]``) sections are turned into a :class:`SGDRecipe` (and a :class:`DistillRecipe`)
exactly once, by :func:`fedsim.runs.prepare.training_recipe` (and the method's
``client_distill_recipe``); the recipe travels to the workers inside the run spec, and every training call (clients, hooks' tiny committee models,
the centralized baseline, a server-side teacher) reads it from there. Per-round values a
strategy sends (FedProx's ``proximal-mu``) are applied with :meth:`SGDRecipe.with_proximal_mu`;
per-client values (FedDyn's weight decay ``alpha_k + weight_decay`` and its gradient clipping,
:mod:`fedsim.clients.feddyn`) with :meth:`SGDRecipe.for_feddyn`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SGDRecipe:
    """Mini-batch SGD hyper-parameters of one local training call.

    ``proximal_mu > 0`` adds FedProx's proximal term (mu / 2) * ||w - w_start||^2 to every
    batch loss (Li et al., "Federated Optimization in Heterogeneous Networks", 2020).
    ``max_grad_norm > 0`` clips the loss gradient's global norm (over all parameters, as
    ``torch.nn.utils.clip_grad_norm_``) to it before the optimizer adds weight decay and momentum
    (FedDyn's official code clips to 10); 0 leaves gradients alone.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    max_grad_norm: float = 0.0

    def with_epochs(self, epochs: int) -> "SGDRecipe":
        return replace(self, epochs=epochs)

    def with_proximal_mu(self, mu: float) -> "SGDRecipe":
        return replace(self, proximal_mu=float(mu))

    def for_feddyn(self, alpha_k: float, max_grad_norm: float) -> "SGDRecipe":
        """FedDyn's client recipe: the quadratic term ``(alpha_k / 2) ||w||^2`` as extra weight decay
        (``weight_decay = alpha_k + weight_decay``, as the official code builds its SGD) and the
        gradient clipping norm."""
        return replace(self, weight_decay=self.weight_decay + float(alpha_k), max_grad_norm=float(max_grad_norm))


@dataclass(frozen=True)
class DistillRecipe:
    """A federated-distillation client's digest step: its own SGD recipe and loss weights.

    The digest loss is ``lambda_ce * CE + lambda_kd * T^2 * KL(p_T || q_T) + lambda_rep *
    MSE(rep / tau)`` over the transfer set (see :mod:`fedsim.clients.losses`).
    """

    digest: SGDRecipe
    lambda_ce: float = 0.0
    lambda_kd: float = 1.0
    lambda_rep: float = 1.0
    temperature: float = 4.0
    tau: float = 1.0

    @property
    def digests(self) -> bool:
        """Whether the digest step trains at all (some epochs and some loss term)."""
        return self.digest.epochs > 0 and bool(self.lambda_ce or self.lambda_kd or self.lambda_rep)
