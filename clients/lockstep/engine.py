"""The vectorized engine: train K same-architecture clients in lockstep, exactly as one by one.

:func:`train_lockstep` is :func:`fedsim.clients.training.train` for many clients at once. Every
client keeps its own data, shuffling generator, starting weights, momentum and BatchNorm
statistics (stacked along a leading client dimension); at step s every client that still has a
batch takes its s-th step, with the batch the sequential engine would give it at its s-th step.

Unequal sizes: clients run out of steps at different times and partial last batches are
smaller. Rather than padding and masking (padded samples would enter BatchNorm's batch
statistics, and masking costs a ``where`` over every large tensor), each step groups the
active clients by their batch size and runs one vmapped call per group: most steps are one
call of full batches, and a shrinking active set costs nothing. Nothing is ever padded, so no
padded sample can touch a gradient or a running statistic.

The optimiser is :class:`torch.optim.SGD`'s update written over the stacked tensors (momentum,
weight decay, FedProx's proximal gradient mu * (w - w_start)), with each client's constant
gradient offset (FedDyn's linear term) added to its loss gradient and the gradient clipped per
client (``recipe.max_grad_norm``) first, and each client's constant step offset (SCAFFOLD's
correction) applied after the step -- the two variants of
:data:`~fedsim.clients.training.StepOffset`, to the stepping clients only. A client may carry
its own weight decay (FedDyn's ``alpha_k + weight_decay``). In float64 the two engines agree to
rounding (~1e-13 after a round; tested per model).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from fedsim.ops.interrupt import check_stop
from fedsim.core.recipe import SGDRecipe

from ..preparation import PrepareBatch
from ..training import StepOffset, TrainStats, dropout_generator
from .batches import step_batches
from .functional import FunctionalModel

BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_batch, y_batch, logits, base_loss) -> loss``: a client's hooks' loss stage."""


@dataclass
class LockstepClient:
    """One client's inputs to a lockstep chunk, as :func:`~fedsim.clients.training.train` takes them.

    ``x``: the model's inputs, or uint8 images that ``prepare_batch`` turns into them per batch
    (when every client's is a :class:`~fedsim.clients.preparation.BatchPreparation` and all apply
    alike, a step group's batches are prepared in one call: :mod:`fedsim.clients.lockstep.batches`).
    ``generator`` shuffles (one ``randperm`` per epoch, as the sequential engine draws them);
    The client's dropout masks come from :func:`~fedsim.clients.training.dropout_generator` of
    ``generator``, layer by layer and step by step as the sequential engine draws them
    (:func:`fedsim.clients.training.dropout_from`). ``offset``: the client's constant step offset
    (None: none), subtracted times the learning rate after every step as the sequential engine does;
    ``gradient_offset``: the client's constant added to its loss gradient (None: none);
    ``weight_decay``: the client's own weight decay (None: the recipe's).
    """

    x: torch.Tensor
    y: torch.Tensor
    state: dict[str, torch.Tensor]
    generator: torch.Generator
    prepare_batch: PrepareBatch | None = None
    batch_loss: BatchLoss | None = None
    offset: StepOffset | None = None
    gradient_offset: StepOffset | None = None
    weight_decay: float | None = None


@dataclass
class LockstepResult:
    """A chunk's per-client final states and statistics, and the time spent compiling."""

    states: list[dict[str, torch.Tensor]]
    stats: list[TrainStats]
    compile_seconds: float = 0.0
    calls: int = 0  # vmapped forward/backward calls (one per step and distinct batch size)


@dataclass
class _Stacked:
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    offset: dict[str, torch.Tensor] = field(default_factory=dict)  # per-client step offsets (zeros where none)
    gradient_offset: dict[str, torch.Tensor] = field(default_factory=dict)  # per-client gradient offsets
    decay: dict[str, torch.Tensor] = field(default_factory=dict)  # {"decay": (k,)}: per-client weight decay


def batch_plan(n: int, recipe: SGDRecipe, generator: torch.Generator, skip_single: bool) -> list[torch.Tensor]:
    """The index batches the sequential engine trains on, in order (its shuffles, its skips)."""
    if n == 0:
        return []
    batches = []
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            if len(idx) < 2 and n >= 2 and skip_single:
                continue  # BatchNorm cannot train on a single sample (as in training.train)
            batches.append(idx)
    return batches


class LockstepTrainer:
    """Trains chunks of clients of one architecture; optionally with a compiled step.

    ``compile``: the full-chunk, full-batch step (the common shape) goes through
    ``torch.compile``, compiled once per chunk size and reused across rounds; other shapes
    (partial batches, a shrinking active set) run eagerly.
    """

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...], compile: bool = False) -> None:
        self.functional = FunctionalModel(model, input_shape)
        self.compile = compile
        self._compiled: dict[tuple[int, int], Callable] = {}

    def _functional_step(self, params: dict, buffers: dict, momentum: dict, anchor: dict, offset: dict,
                         gradient_offset: dict, decay: dict, xb: torch.Tensor, yb: torch.Tensor, masks: tuple,
                         recipe: SGDRecipe) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
        """One SGD step of m clients as a pure function (what ``torch.compile`` compiles whole).

        Per-client gradients come from ``vmap(grad_and_value(loss))``; BatchNorm updates
        ``buffers`` in place. Returns the new weights and momentum, per-client losses and logits.
        """
        grads, (losses, logits) = vmap(grad_and_value(self.functional.client_loss, has_aux=True))(
            params, buffers, xb, yb, masks)
        return (*self._sgd(params, grads, momentum, anchor, offset, gradient_offset, decay, recipe), losses, logits)

    def _compiled_step(self, m: int, b: int) -> tuple[Callable, bool]:
        """The compiled step for m clients x b samples, and whether this call compiles it first."""
        key = (m, b)
        fresh = key not in self._compiled
        if fresh:
            self._compiled[key] = torch.compile(self._functional_step, dynamic=False)
        return self._compiled[key], fresh

    def train(self, clients: list[LockstepClient], recipe: SGDRecipe) -> LockstepResult:
        """Train ``clients`` in lockstep; per-client states and stats as the sequential engine's."""
        fm = self.functional
        device = clients[0].x.device
        stacked = self._stack(clients, recipe)
        plans = [batch_plan(len(c.y), recipe, c.generator, fm.has_batchnorm) for c in clients]
        dropout_generators = [dropout_generator(c.generator) for c in clients]  # from the initial seed: shuffles drawn do not matter
        dtype = next(iter(stacked.params.values())).dtype
        k = len(clients)
        total_loss = torch.zeros(k, device=device)  # float32, as training.train accumulates
        correct = torch.zeros(k, dtype=torch.long, device=device)
        steps = [0] * k
        step_inputs = step_batches(clients, device)  # a step group's inputs, in as few calls as the clients allow
        pure = all(c.batch_loss is None for c in clients)  # the loss is cross-entropy: the pure step
        compile_seconds, calls = 0.0, 0
        for s in range(max((len(p) for p in plans), default=0)):
            check_stop()  # Ctrl-C in this process: stop between steps
            # step s of every client that has one, grouped by batch size: unequal clients and partial last
            # batches form smaller groups instead of being padded (no padded sample can reach a gradient)
            groups: dict[int, list[int]] = {}
            for j, plan in enumerate(plans):
                if s < len(plan):
                    groups.setdefault(len(plan[s]), []).append(j)
            for b, members in sorted(groups.items(), reverse=True):
                xb, yb = step_inputs(members, [plans[j][s] for j in members])
                masks = fm.draw_masks([dropout_generators[j] for j in members], b, dtype, device)
                full = len(members) == k  # the compiled step takes the whole chunk at the recipe's batch size only
                losses, logits, compiling = self._step(
                    stacked, members, full, xb, yb, masks, recipe,
                    None if pure else [clients[j].batch_loss for j in members],
                    self.compile and full and b == recipe.batch_size)
                compile_seconds += compiling
                calls += 1
                rows = torch.as_tensor(members, device=device)
                total_loss.index_add_(0, rows, (losses.detach() * b).to(total_loss.dtype))
                correct.index_add_(0, rows, (logits.detach().argmax(-1) == yb).sum(1))
                for j in members:
                    steps[j] += 1
        return LockstepResult(self._unstack(stacked, k), self._stats(clients, recipe, total_loss, correct, steps),
                              compile_seconds, calls)

    def _step(self, stacked: _Stacked, members: list[int], full: bool, xb: torch.Tensor, yb: torch.Tensor,
              masks: tuple, recipe: SGDRecipe, batch_losses: list[BatchLoss | None] | None,
              compile_step: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One SGD step of the clients ``members`` (rows of the stacked state) on batches (xb, yb).

        Returns per-client losses, logits and the seconds spent compiling (0 when none).
        """
        rows = None if full else torch.as_tensor(members, device=xb.device)

        def take(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return tensors if full else {n: t[rows] for n, t in tensors.items()}

        def put(target: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
            for n, t in values.items():
                if full:
                    target[n] = t
                else:
                    target[n].index_copy_(0, rows, t)

        params, buffers = take(stacked.params), take(stacked.buffers)
        if batch_losses is None:  # the pure step: vmap(grad), optionally compiled
            step, compiling = self._compiled_step(len(members), xb.shape[1]) if compile_step else \
                (self._functional_step, False)
            started = time.perf_counter()
            new_params, new_momentum, losses, logits = step(params, buffers, take(stacked.momentum),
                                                            take(stacked.anchor), take(stacked.offset),
                                                            take(stacked.gradient_offset), take(stacked.decay),
                                                            xb, yb, masks, recipe)
            compile_seconds = time.perf_counter() - started if compiling else 0.0
        else:  # hooks change the loss per client: autograd through the vmapped forward
            params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            logits = self.functional.forward(params, buffers, xb, masks)
            base = torch.stack([F.cross_entropy(logits[i], yb[i]) for i in range(len(members))])
            losses = torch.stack([loss if f is None else f(xb[i], yb[i], logits[i], loss)
                                  for i, (loss, f) in enumerate(zip(base, batch_losses))])
            grads = dict(zip(params, torch.autograd.grad(losses.sum(), list(params.values()))))
            with torch.no_grad():
                new_params, new_momentum = self._sgd({n: p.detach() for n, p in params.items()}, grads,
                                                     take(stacked.momentum), take(stacked.anchor),
                                                     take(stacked.offset), take(stacked.gradient_offset),
                                                     take(stacked.decay), recipe)
            losses, compile_seconds = losses.detach(), 0.0  # training.train reports the hooks' loss
        if not full:
            put(stacked.buffers, buffers)
        put(stacked.params, new_params)
        put(stacked.momentum, new_momentum)
        return losses, logits, compile_seconds

    @staticmethod
    def _sgd(params: dict, grads: dict, momentum: dict, anchor: dict, offset: dict, gradient_offset: dict,
             decay: dict, recipe: SGDRecipe) -> tuple[dict, dict]:
        """:class:`torch.optim.SGD`'s update (plus FedProx's proximal gradient) on stacked tensors, as
        :func:`~fedsim.clients.training.train` takes it: the clients' gradient offsets added to their
        gradients, each client's gradient clipped to ``recipe.max_grad_norm``, then weight decay (the
        client's own where it has one) and momentum, then the clients' step offsets (``w - lr * v``)."""
        grads = {n: g + gradient_offset[n] if n in gradient_offset else g for n, g in grads.items()}
        if recipe.max_grad_norm > 0:
            grads = _clip_per_client(grads, recipe.max_grad_norm)
        new_params, new_momentum = {}, {}
        for n, p in params.items():
            g = grads[n]
            if recipe.proximal_mu > 0:  # d/dw of (mu / 2) ||w - w_start||^2
                g = g + recipe.proximal_mu * (p - anchor[n])
            if decay:
                g = g + decay["decay"].view(-1, *([1] * (p.dim() - 1))).to(p) * p
            elif recipe.weight_decay != 0:
                g = g.add(p, alpha=recipe.weight_decay)
            if recipe.momentum != 0:
                g = new_momentum[n] = momentum[n].mul(recipe.momentum).add(g)
            new_params[n] = p.add(g, alpha=-recipe.lr)
            if n in offset:
                new_params[n] = new_params[n].add(offset[n], alpha=-recipe.lr)
        return new_params, new_momentum

    def _stack(self, clients: list[LockstepClient], recipe: SGDRecipe) -> _Stacked:
        fm = self.functional
        params = {n: torch.stack([c.state[n].detach() for c in clients]).clone() for n in fm.param_names}
        buffers = {n: torch.stack([c.state[n].detach() for c in clients]).clone() for n in fm.buffer_names}
        momentum = {n: torch.zeros_like(p) for n, p in params.items()} if recipe.momentum != 0 else {}
        anchor = {n: p.clone() for n, p in params.items()} if recipe.proximal_mu > 0 else {}
        offset = {}
        if any(c.offset for c in clients):  # a client without an offset gets zeros: no shift (0 * lr)
            offset = {n: torch.stack([c.offset[n].detach().to(p) if c.offset and n in c.offset
                                      else torch.zeros_like(p[0]) for c in clients])
                      for n, p in params.items() if any(c.offset and n in c.offset for c in clients)}
        gradient_offset = {}
        if any(c.gradient_offset for c in clients):
            gradient_offset = {
                n: torch.stack([c.gradient_offset[n].detach().to(p) if c.gradient_offset and n in c.gradient_offset
                                else torch.zeros_like(p[0]) for c in clients])
                for n, p in params.items() if any(c.gradient_offset and n in c.gradient_offset for c in clients)}
        decay = {}
        if any(c.weight_decay is not None for c in clients):  # per-client weight decay (FedDyn's alpha_k + wd)
            device = next(iter(params.values())).device
            decay = {"decay": torch.tensor([recipe.weight_decay if c.weight_decay is None else c.weight_decay
                                            for c in clients], dtype=torch.float64, device=device)}
        return _Stacked(params, buffers, momentum, anchor, offset, gradient_offset, decay)

    def _unstack(self, stacked: _Stacked, k: int) -> list[dict[str, torch.Tensor]]:
        merged = {**stacked.params, **stacked.buffers}
        return [{n: merged[n][j] for n in self.functional.state_names} for j in range(k)]

    @staticmethod
    def _stats(clients: list[LockstepClient], recipe: SGDRecipe, total_loss: torch.Tensor, correct: torch.Tensor,
               steps: list[int]) -> list[TrainStats]:
        stats = []
        for j, client in enumerate(clients):
            n = len(client.y)
            if n == 0:
                stats.append(TrainStats(0, float("nan"), float("nan"), 0))
                continue
            processed = n * recipe.epochs
            stats.append(TrainStats(num_examples=n, loss=float(total_loss[j]) / processed,
                                    accuracy=float(correct[j]) / processed, steps=steps[j]))
        return stats


def _clip_per_client(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Each client's gradient (a row of every stacked tensor) scaled as ``torch.nn.utils.clip_grad_norm_``
    scales one model's: by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` over all its parameters."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads.values()], dim=1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return {n: g * scale.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}
