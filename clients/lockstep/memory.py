"""How many clients of one architecture fit in one lockstep chunk.

A chunk of K clients holds, per client: its parameters, their gradients, SGD's momentum, the
gathered copy a shrinking active set takes, the proximal anchor (FedProx), a step offset
(SCAFFOLD's correction), its BatchNorm
buffers, and the activations autograd keeps for one batch (measured by a probe forward, and
counted twice: the forward's outputs and their gradients). The chunk may use
``engine.lockstep_memory`` of the memory free on the device (CUDA: what the driver reports
free; CPU: the kernel's ``MemAvailable``); ``engine.lockstep_clients`` caps it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fedsim.errors import InputError
from fedsim.core.recipe import SGDRecipe


class LockstepMemoryError(InputError):
    """Not even one client fits in the memory a lockstep chunk may use."""


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> int:
    """Bytes of every module's output for one batch of ``batch`` samples (probe forward on one sample)."""
    total = 0

    def count(module: nn.Module, args: tuple, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total * batch


def bytes_per_client(model: nn.Module, input_shape: tuple[int, ...], recipe: SGDRecipe, offset: bool = False) -> int:
    """Estimated bytes one client occupies in a lockstep chunk (state, optimiser, one batch's activations)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    copies = 4 + (recipe.momentum != 0) + (recipe.proximal_mu > 0) + offset  # weights, grads, gathered copy, update temp
    return copies * params + 2 * buffers + 2 * activation_bytes(model, input_shape, recipe.batch_size)


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def chunk_size(per_client: int, free: int, fraction: float, cap: int, architecture: str) -> int:
    """Clients per chunk: as many as fit in ``fraction`` of ``free`` bytes, at most ``cap`` (0 = no cap)."""
    budget = int(free * fraction)
    fitting = budget // max(per_client, 1)
    if fitting < 1:
        raise LockstepMemoryError(
            f"one {architecture} client needs about {per_client / 2**20:.0f} MiB in lockstep (weights, gradients, "
            f"momentum and one batch's activations) but engine.lockstep_memory = {fraction:g} of the "
            f"{free / 2**20:.0f} MiB free allows {budget / 2**20:.0f} MiB: raise engine.lockstep_memory, lower "
            "train.batch_size, or use engine.kind = 'sequential'")
    return int(min(fitting, cap)) if cap > 0 else int(fitting)
