"""A model in functional form for lockstep training: stacked state, vmapped forward, dropout masks.

K clients of one architecture share one module *structure*; their parameters and buffers are
stacked along a leading client dimension and passed to :func:`torch.func.functional_call`
under :func:`torch.func.vmap`, so one batched kernel does what K small ones did. BatchNorm's
running statistics are stacked buffers that the vmapped forward updates per client.

Dropout is the one source of randomness inside a forward. ``vmap(randomness="different")``
would draw every client's mask from the global generator, which cannot be seeded per client;
instead :class:`MaskedDropout` replaces each ``nn.Dropout`` and multiplies by a mask the engine
draws per client, in the sequential engine's order, from a generator seeded like the one the
sequential engine seeds globally. On CPU the masks are therefore bitwise those the sequential
engine draws (tested); on CUDA the sequential engine's fused dropout kernel draws differently,
so the masks are per client and reproducible but not the same.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vmap

_MASKS = threading.local()  # the masks of the forward in progress (one list per vmapped call)


class MaskedDropout(nn.Module):
    """``nn.Dropout`` whose mask is given: ``x * mask``, as ``torch.nn.functional.dropout`` computes."""

    def __init__(self, p: float, position: int) -> None:
        super().__init__()
        self.p, self.position = float(p), position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _MASKS.current[self.position]


@contextmanager
def masks_in_use(masks: tuple[torch.Tensor, ...]) -> Iterator[None]:
    previous = getattr(_MASKS, "current", None)
    _MASKS.current = masks
    try:
        yield
    finally:
        _MASKS.current = previous


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
            setattr(parent, child, MaskedDropout(p_of[name].p, position))
        return [(p_of[name].p, shape) for name, shape in order]

    def _forward_one(self, params: dict, buffers: dict, x: torch.Tensor, masks: tuple) -> torch.Tensor:
        with masks_in_use(masks):
            return functional_call(self.module, (params, buffers), (x,))

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
        """Each client's dropout masks for a batch of ``batch`` samples, drawn as the sequential engine does.

        ``torch.nn.functional.dropout`` on CPU computes ``x * empty_like(x).bernoulli_(1 - p).div_(1 - p)``
        from the global generator; layer by layer in forward order, the same draws from each
        client's own generator (seeded as the sequential engine seeds the global one).
        """
        if not self.dropout:
            return ()
        per_client = []
        for generator in generators:
            masks = []
            for p, shape in self.dropout:
                mask = torch.empty((batch, *shape), dtype=dtype)
                if p == 0:  # F.dropout returns its input and draws nothing
                    mask.fill_(1)
                elif p >= 1:  # ... or multiplies by zero, drawing nothing
                    mask.zero_()
                else:
                    mask.bernoulli_(1 - p, generator=generator).div_(1 - p)
                masks.append(mask)
            per_client.append(masks)
        return tuple(torch.stack([client[i] for client in per_client]).to(device) for i in range(len(self.dropout)))
