"""Distillation losses (``docs/methods.md``, "Latent distillation" and "kd").

* :func:`kd_loss` -- Hinton et al.: T^2 * KL(softmax(z_T / T) || softmax(z_S / T)), averaged over
  the batch (``batchmean``, equal to RepDistiller's ``DistillKL``). The T^2 factor keeps the
  gradients on the scale of the cross-entropy's.
* :func:`representation_loss` -- the LKD term of Schmitt's latent-space distillation: MSE(r_S / tau, r_T / tau); dividing by tau
  before the MSE scales the loss by 1 / tau^2 (tau = 0.5 gives x4), as in the reference code.
* :func:`distillation_loss` -- lambda_ce * CE(z_S, y) + lambda_kd * kd + lambda_rep * rep, each
  term skipped when its weight is 0 (CE-only, KD, LKD, KD+LKD variants).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD with T^2 scaling: T^2 * KL(p_T || p_S) with p = softmax(z / T), mean over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def representation_loss(student_rep: torch.Tensor, teacher_rep: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean squared error between representations scaled by 1 / tau (Schmitt's LKD)."""
    return F.mse_loss(student_rep / tau, teacher_rep / tau)


def distillation_loss(
    student_logits: torch.Tensor,
    student_rep: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    teacher_rep: torch.Tensor | None,
    labels: torch.Tensor | None,
    lambda_ce: float = 0.0,
    lambda_kd: float = 1.0,
    lambda_rep: float = 1.0,
    temperature: float = 4.0,
    tau: float = 1.0,
) -> torch.Tensor:
    """The weighted sum of the switched-on terms; raises if a needed input is missing."""
    total = student_logits.new_zeros(())
    if lambda_ce:
        if labels is None:
            raise ValueError("lambda_ce > 0 needs labels for the transfer set")
        total = total + lambda_ce * F.cross_entropy(student_logits, labels)
    if lambda_kd:
        if teacher_logits is None:
            raise ValueError("lambda_kd > 0 needs teacher logits")
        total = total + lambda_kd * kd_loss(student_logits, teacher_logits, temperature)
    if lambda_rep:
        if teacher_rep is None or student_rep is None:
            raise ValueError("lambda_rep > 0 needs representations (model.representation_dim > 0)")
        total = total + lambda_rep * representation_loss(student_rep, teacher_rep, tau)
    return total
