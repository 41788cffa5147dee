"""A model in functional form for lockstep training: stacked state, vmapped forward, dropout masks.

K clients of one architecture share one module *structure*; their parameters and buffers are
stacked along a leading client dimension and passed to :func:`torch.func.functional_call`
under :func:`torch.func.vmap`, so one batched kernel does what K small ones did. BatchNorm's
running statistics are stacked buffers that the vmapped forward updates per client.

Dropout is the one source of randomness inside a forward. ``vmap(randomness="different")``
would draw every client's mask from the global generator, which cannot be seeded per client;
instead :class:`MaskedDropout` replaces each ``nn.Dropout`` and multiplies by a mask the engine
draws per client from the client's dropout generator, in the order the sequential engine draws
them (:func:`fedsim.clients.training.dropout_from`): the masks are the same bits on every
device, and the two engines agree bit for bit on the CPU (tested). The masks enter the vmapped
call as buffers of the :class:`MaskedDropout` layers, so nothing is handed over outside it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..training import draw_dropout_mask


class MaskedDropout(nn.Module):
    """``nn.Dropout`` whose mask is given as the buffer ``mask``: ``x * mask``, as
    :func:`fedsim.clients.training.dropout_from` computes. The buffer is a placeholder that
    every functional call replaces with the step's masks (not saved in a state dict)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.register_buffer("mask", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class FunctionalModel:
    """A train-mode copy of ``model`` with dropout masked, and its stacked-state forward.

    ``dropout`` lists (p, per-sample shape) of each dropout layer in forward order, found by a
    probe forward on one sample of ``input_shape``.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = copy.deepcopy(model)
        self.param_names = [name for name, _ in self.module.named_parameters()]
        self.buffer_names = [name for name, _ in self.module.named_buffers()]
        self.state_names = list(self.module.state_dict().keys())
        self.mask_names: list[str] = []  # each MaskedDropout's mask buffer, in forward order
        self.dropout = self._mask_dropout(input_shape)
        self.module.train()
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())

    def _mask_dropout(self, input_shape: tuple[int, ...]) -> list[tuple[float, tuple[int, ...]]]:
        layers = [(name, m) for name, m in self.module.named_modules() if type(m) is nn.Dropout]
        if not layers:
            return []
        order: list[tuple[str, tuple[int, ...]]] = []
        handles = [m.register_forward_hook(lambda mod, args, out, name=name: order.append((name, tuple(args[0].shape[1:]))))
                   for name, m in layers]
        parameter = next(self.module.parameters())
        with torch.no_grad():
            self.module.eval()
            self.module(torch.zeros((1, *input_shape), dtype=parameter.dtype, device=parameter.device))
        for handle in handles:
            handle.remove()
        p_of = dict(layers)
        for position, (name, _) in enumerate(order):
            parent_name, _, child = name.rpartition(".")
            parent = self.module.get_submodule(parent_name) if parent_name else self.module
            setattr(parent, child, MaskedDropout(p_of[name].p))
            self.mask_names.append(f"{name}.mask")
        return [(p_of[name].p, shape) for name, shape in order]

    def _forward_one(self, params: dict, buffers: dict, x: torch.Tensor, masks: tuple) -> torch.Tensor:
        return functional_call(self.module, (params, {**buffers, **dict(zip(self.mask_names, masks))}), (x,))

    def client_loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor,
                    masks: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """One client's cross-entropy (as the sequential engine computes it) and logits; vmapped."""
        logits = self._forward_one(params, buffers, x, masks)
        return torch.nn.functional.cross_entropy(logits, y), logits

    def forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (m, b, classes) of m clients on their batches x (m, b, ...); BN buffers updated in place."""
        return vmap(self._forward_one, in_dims=(0, 0, 0, 0))(params, buffers, x, masks)

    def draw_masks(self, generators: list[torch.Generator], batch: int, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, ...]:
        """Each client's dropout masks for a batch of ``batch`` samples, drawn as the sequential engine does:
        layer by layer in forward order, from each client's dropout generator
        (:func:`fedsim.clients.training.draw_dropout_mask`)."""
        if not self.dropout:
            return ()
        per_client = [[draw_dropout_mask((batch, *shape), p, dtype, generator) for p, shape in self.dropout]
                      for generator in generators]
        return tuple(torch.stack([client[i] for client in per_client]).to(device) for i in range(len(self.dropout)))
