"""``kd``: Hinton knowledge distillation in local training (Hinton et al. 2015; Jun and Shin).

The batch loss becomes ``(1 - alpha) * CE + alpha * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``
(alpha = 0: cross-entropy only, alpha = 1: KD only). The teacher is the global model as the
client received it this round (``teacher = "global"``, frozen), or a fixed checkpoint
(``teacher = "checkpoint"``, ``checkpoint = "path/to/state_dict.pt"``, ``teacher_model`` = its
architecture), loaded with ``torch.load(weights_only=True)`` so no code in the file runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from fedsim.clients.losses import kd_loss

from .base import Hook, HookContext, require


class KDHook(Hook):
    name = "kd"

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, teacher: str = "global",
                 checkpoint: str = "", teacher_model: str = "") -> None:
        require(isinstance(alpha, (int, float)) and 0 <= alpha <= 1, self.name, "alpha", alpha, "must be in [0, 1]")
        require(isinstance(temperature, (int, float)) and temperature > 0, self.name, "temperature", temperature,
                "must be > 0")
        require(teacher in ("global", "checkpoint"), self.name, "teacher", teacher, "allowed: global, checkpoint")
        if teacher == "checkpoint":
            require(bool(checkpoint) and Path(checkpoint).is_file(), self.name, "checkpoint", checkpoint,
                    "must be an existing state_dict file (torch.save(model.state_dict(), path))")
            from fedsim.models import MODEL_NAMES

            require(teacher_model in MODEL_NAMES, self.name, "teacher_model", teacher_model,
                    f"allowed: {', '.join(MODEL_NAMES)}")
        self.alpha, self.temperature, self.teacher_kind = float(alpha), float(temperature), teacher
        self.checkpoint, self.teacher_model = checkpoint, teacher_model
        self._fixed: torch.nn.Module | None = None

    def _teacher(self, ctx: HookContext) -> torch.nn.Module:
        if self.teacher_kind == "global":
            return self._frozen
        if self._fixed is None:
            from fedsim.models import build_model

            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            model = build_model(self.teacher_model, ctx.global_model.num_classes,
                                ctx.global_model.representation_dim)
            model.load_state_dict(state)
            self._fixed = model.to(ctx.device).eval()
        return self._fixed

    def prepare(self, data, ctx: HookContext):  # noqa: ANN001, ANN201
        if self.teacher_kind == "global":
            self._frozen = copy.deepcopy(ctx.global_model).eval()
        self._sum, self._batches = 0.0, 0
        return data

    def loss(self, xb: torch.Tensor, yb: torch.Tensor, logits: torch.Tensor, base_loss: torch.Tensor,
             ctx: HookContext) -> torch.Tensor:
        if self.alpha == 0:
            return base_loss
        with torch.no_grad():
            teacher_logits = self._teacher(ctx)(xb)
        kd = kd_loss(logits, teacher_logits, self.temperature)
        self._sum += float(kd.detach())
        self._batches += 1
        return (1 - self.alpha) * base_loss + self.alpha * kd

    def report(self, ctx: HookContext) -> dict[str, float]:
        return {"alpha": self.alpha, "mean_kd_loss": self._sum / self._batches if self._batches else 0.0}
