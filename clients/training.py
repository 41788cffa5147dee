"""The one local training and evaluation loop every strategy uses.

Images arrive as uint8 HWC arrays (memory-mapped views of the cached dataset); they are
normalised into one float tensor on the target device per call, then mini-batches are
index slices of it. All randomness of a training call comes from generators the caller
seeds with ``(seed, round, client id)``: the shuffles from the generator it passes, the
dropout masks from :func:`dropout_generator` of it (:func:`dropout_from`), so results do not
depend on which worker runs a client and nothing seeds torch's global generator per client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.ops.interrupt import check_stop
from fedsim.core.recipe import SGDRecipe


@dataclass
class TrainStats:
    """What one local training call did."""

    num_examples: int
    loss: float  # mean cross-entropy over all processed samples
    accuracy: float  # running training accuracy over all processed samples
    steps: int
    hook_metrics: dict[str, float] = field(default_factory=dict)  # what client hooks report


@dataclass
class EvalStats:
    """Loss/accuracy of a model on a labelled array, plus the predictions."""

    num_examples: int
    loss: float
    accuracy: float
    predictions: np.ndarray


def to_uint8_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) array -> uint8 (N, C, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 with per-channel mean/std (on [0, 1]) removed."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return x.float().div_(255.0).sub_(m).div_(s)


def to_tensor(
    images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W) on ``device``."""
    return normalize(to_uint8_tensor(images, device), mean, std)


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of ``seed_parts`` (e.g. seed, round, client)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


DROPOUT_STREAM = 0xD7  # the salt of a training call's dropout generator


def dropout_generator(generator: torch.Generator) -> torch.Generator:
    """The generator a training call's dropout masks come from, derived from its shuffling one.

    Seeded from the shuffling generator's *initial* seed (so, like it, from (seed, round,
    client)) and a salt of its own: shuffles and masks are separate streams, and the sequential
    and vectorized engines draw the same masks whatever order they draw shuffles in.
    """
    return seeded_generator(generator.initial_seed(), DROPOUT_STREAM)


def draw_dropout_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype,
                      generator: torch.Generator) -> torch.Tensor:
    """A dropout mask (zeros and 1 / (1 - p)) of ``shape``, drawn on the CPU from ``generator``.

    The arithmetic of ``torch.nn.functional.dropout`` on a CPU tensor (``bernoulli_(1 - p)``
    then ``div_(1 - p)``), drawn from a generator of the client's instead of the global one.
    Drawn on the CPU whatever the model's device, so the masks do not depend on it.
    ``p = 0`` draws nothing and keeps everything; ``p >= 1`` draws nothing and drops everything.
    """
    mask = torch.empty(shape, dtype=dtype)
    if p == 0:
        return mask.fill_(1)
    if p >= 1:
        return mask.zero_()
    return mask.bernoulli_(1 - p, generator=generator).div_(1 - p)


@contextmanager
def dropout_from(model: nn.Module, generator: torch.Generator) -> Iterator[None]:
    """While inside, every ``nn.Dropout`` of ``model`` draws its training masks from ``generator``.

    ``nn.Dropout`` takes no generator; seeding torch's global one per client cost about 0.9 ms a
    client (it seeds every CUDA device) and made results depend on what else drew from it. Each
    layer's ``forward`` is replaced for the duration by ``x * mask``, the mask from
    :func:`draw_dropout_mask`, layer by layer in forward order: the vectorized engine
    (:mod:`fedsim.clients.lockstep.functional`) draws the same masks in the same order, so the
    two engines agree bit for bit on the CPU. Other random layers (``Dropout2d``,
    ``AlphaDropout``, ...) would draw from the unseeded global generator: they are refused.
    """
    layers = []
    for name, module in model.named_modules():
        if type(module) is nn.Dropout:
            layers.append(module)
        elif isinstance(module, nn.modules.dropout._DropoutNd):
            raise ValueError(f"model layer {name!r} is a {type(module).__name__}, whose masks fedsim cannot draw "
                             "per client; allowed random layers: torch.nn.Dropout")

    def masked(layer: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        if not layer.training:
            return x
        return x * draw_dropout_mask(tuple(x.shape), layer.p, x.dtype, generator).to(x.device)

    for layer in layers:
        layer.forward = lambda x, layer=layer: masked(layer, x)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextmanager
def seeded_init(generator: torch.Generator) -> Iterator[None]:
    """While inside, torch's CPU generator is seeded from ``generator``; afterwards it is restored.

    For building a model whose initial weights must be reproducible (a hook's tiny committee
    member, a client's first own model): parameter initialisers take no generator. Models are
    built on the CPU and moved, so only the CPU generator is forked; nothing leaks out.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(generator.initial_seed())
        yield


StepOffset = dict[str, torch.Tensor]
"""A constant per-client vector v, by parameter name, that shifts every local step. Two variants:

* a *step* offset (``offset=``, SCAFFOLD's ``c - c_i``, :mod:`fedsim.clients.scaffold`): after
  every optimizer step, ``w <- w - lr * v`` -- outside momentum, as NIID-Bench applies it;
* a *gradient* offset (``gradient_offset=``, FedDyn's ``alpha_k (H_k - w_cloud)``,
  :mod:`fedsim.clients.feddyn`): ``v`` is added to the loss gradient before clipping, weight decay
  and momentum -- the gradient of a linear term ``<w, v>`` in the loss, as FedDyn's official code
  writes it.

The one way a strategy changes the local step by a per-client constant: both engines apply both
variants in one place (here, :func:`_train`, and
:meth:`fedsim.clients.lockstep.engine.LockstepTrainer._sgd`). Parameters it does not name are not
shifted; buffers never are.
"""

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(model, x_batch, y_batch, batch_indices) -> (loss, logits)``: what one SGD step minimises."""


def cross_entropy_objective(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                            idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default objective: cross-entropy on the labels."""
    logits = model(xb)
    return F.cross_entropy(logits, yb), logits


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: SGDRecipe,
    generator: torch.Generator,
    objective: Objective = cross_entropy_objective,
    prepare_batch: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dropout: torch.Generator | None = None,
    offset: StepOffset | None = None,
    gradient_offset: StepOffset | None = None,
) -> TrainStats:
    """Run ``recipe.epochs`` epochs of mini-batch SGD on ``(x, y)`` in place; return statistics.

    ``objective`` is the per-batch loss (cross-entropy by default; distillation passes its own,
    which receives the batch's indices to look up per-sample targets). ``recipe.proximal_mu > 0``
    adds FedProx's proximal term (mu / 2) * ||w - w_start||^2, where w_start are the weights the
    call started from (the received global model). ``prepare_batch`` turns ``x[idx]`` into the model's
    input (fedsim's clients keep uint8 images and augment/normalise per batch). Dropout masks
    come from ``dropout`` (default: :func:`dropout_generator` of ``generator``). ``offset``
    (:data:`StepOffset`) is subtracted, times ``recipe.lr``, after every optimizer step: outside
    the momentum buffer, as NIID-Bench applies SCAFFOLD's correction (with momentum 0 this is the
    same as adding it to the gradient). ``gradient_offset`` is added to the loss gradient after
    every backward pass, before ``recipe.max_grad_norm`` clips it and before the optimizer's weight
    decay and momentum (FedDyn's linear term).
    """
    n = len(y)
    if n == 0:
        return TrainStats(0, float("nan"), float("nan"), 0)
    with dropout_from(model, dropout if dropout is not None else dropout_generator(generator)):
        return _train(model, x, y, recipe, generator, objective, prepare_batch, offset, gradient_offset)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: SGDRecipe, generator: torch.Generator,
           objective: Objective, prepare_batch: Callable[[torch.Tensor], torch.Tensor] | None,
           offset: StepOffset | None, gradient_offset: StepOffset | None) -> TrainStats:
    n = len(y)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if recipe.proximal_mu > 0 else None
    shifts = [(p, offset[name]) for name, p in model.named_parameters() if name in offset] if offset else []
    gradient_shifts = ([(p, gradient_offset[name]) for name, p in model.named_parameters() if name in gradient_offset]
                       if gradient_offset else [])
    single_sample_breaks = _has_batchnorm(model)
    # summed on the device: one host synchronisation per call instead of one per step
    total_loss = torch.zeros((), device=x.device)
    total_correct = torch.zeros((), device=x.device, dtype=torch.long)
    steps = 0
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, recipe.batch_size):
            check_stop()  # Ctrl-C in this process: stop between batches
            idx = order[start : start + recipe.batch_size]
            if len(idx) < 2 and n >= 2 and single_sample_breaks:
                continue  # BatchNorm cannot train on a single sample
            xb = x[idx] if prepare_batch is None else prepare_batch(x[idx])
            loss, logits = objective(model, xb, y[idx], idx)
            total_loss += loss.detach() * len(idx)  # the task's loss, reported without the proximal term
            if anchor is not None:
                loss = loss + proximal_term(model, anchor, recipe.proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p, v in gradient_shifts:
                p.grad = v.clone() if p.grad is None else p.grad.add_(v)
            if recipe.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            if shifts:
                with torch.no_grad():
                    for p, v in shifts:
                        p.add_(v, alpha=-recipe.lr)
            total_correct += (logits.detach().argmax(1) == y[idx]).sum()
            steps += 1
    processed = n * recipe.epochs  # a skipped single-sample batch still counts: the mean the metrics report
    return TrainStats(
        num_examples=n,
        loss=float(total_loss) / processed,
        accuracy=float(total_correct) / processed,
        steps=steps,
    )


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: (mu / 2) * sum over parameters of ||w - w_anchor||^2."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> EvalStats:
    """Mean cross-entropy, accuracy and argmax predictions of ``model`` on ``(x, y)``."""
    n = len(y)
    if n == 0:
        return EvalStats(0, float("nan"), float("nan"), np.zeros(0, dtype=np.int64))
    model.eval()
    total_loss = torch.zeros((), device=x.device)
    predictions = []
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        total_loss += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum")
        predictions.append(logits.argmax(1))
    pred = torch.cat(predictions)
    return EvalStats(
        num_examples=n,
        loss=float(total_loss) / n,
        accuracy=float((pred == y).float().mean()),
        predictions=pred.cpu().numpy(),
    )
