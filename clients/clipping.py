"""Flower's client-side DP clipping mods, applied to a client's weights on a worker's fast path.

The client-side DP wrappers (``dp-fixed-client``, ``dp-adaptive-client``) send a clipping norm
in the train config, and fedsim's ClientApp runs Flower's ``fixedclipping_mod`` or
``adaptiveclipping_mod`` on the task (:func:`fedsim.clients.app.dp_clipping_mod`). A worker that
trains a task without its ClientApp (:func:`fedsim.clients.handler.trains_direct`) applies the
same clipping here, per client, before the client's weights join the worker's stack: the update
``w_client - w_global`` is clipped to the norm (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018) by Flower's own ``compute_clip_model_update`` /
``compute_adaptive_clip_model_update`` on NumPy views of the weights, so the result is the mod's
bit for bit, and the adaptive mod's norm bit goes into the client's metrics as the mod puts it.

The mods' preconditions decide what may take this path (:meth:`ClientClipping.fits_fast_path`): a task whose
content has exactly one ``ArrayRecord`` and one ``ConfigRecord`` (a task with other clients'
models attached does not); other tasks go through the ClientApp, whose mod replies with
Flower's error.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO

import numpy as np
import torch
from flwr.app import Message, MessageType
from flwr.supercore import log
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    compute_adaptive_clip_model_update,
    compute_clip_model_update,
)

from fedsim.core.protocol import DP_ADAPTIVE, message_config


@dataclass(frozen=True)
class ClientClipping:
    """The clipping a training task asks its client for: the norm, and whether it is the adaptive mod's."""

    norm: float
    adaptive: bool

    @classmethod
    def asked_by(cls, msg: Message) -> ClientClipping | None:
        """The clipping ``msg`` asks for (None: a task without a clipping norm)."""
        if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return None
        config = message_config(msg)
        if KEY_CLIPPING_NORM not in config:
            return None
        return cls(float(config[KEY_CLIPPING_NORM]), bool(config.get(DP_ADAPTIVE, False)))

    @staticmethod
    def fits_fast_path(msg: Message) -> bool:
        """Whether the mods' preconditions hold for ``msg``: one ``ArrayRecord`` and one ``ConfigRecord``."""
        return len(msg.content.array_records) == 1 and len(msg.content.config_records) == 1

    def apply(self, msg: Message, state: dict[str, torch.Tensor],
              metrics: dict[str, float | int]) -> dict[str, torch.Tensor]:
        """``state`` (the client's trained weights) clipped against the task's weights, as the mod clips them.

        The adaptive mod's norm bit is added to ``metrics``. ``state`` itself is left as it is.
        """
        original = next(iter(msg.content.array_records.values()))
        if list(original.keys()) != list(state):
            raise ValueError(f"the client's arrays {list(state)} do not match the task's {list(original.keys())}: "
                             "Flower's clipping mod refuses them")
        device = next(iter(state.values())).device
        weights = [tensor.detach().cpu().numpy() for tensor in state.values()]  # NumPy views: the mod's inputs
        if self.adaptive:
            norm_bit = compute_adaptive_clip_model_update(weights, original.to_numpy_ndarrays(), self.norm)
            metrics[KEY_NORM_BIT] = int(norm_bit)
            log(INFO, "adaptiveclipping_mod: ndarrays are clipped by value: %.4f.", self.norm)
        else:
            compute_clip_model_update(weights, original.to_numpy_ndarrays(), self.norm)
            log(INFO, "fixedclipping_mod: parameters are clipped by value: %.4f.", self.norm)
        return {name: torch.from_numpy(np.array(array)).to(device) for name, array in zip(state, weights)}
