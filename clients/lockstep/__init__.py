"""The vectorized training engine: a worker's same-architecture clients trained in lockstep.

``engine.kind = "vectorized"`` makes a worker (a cohort worker, or the in-process
executor's process) train the round's clients that share an architecture, a recipe and their
received weights together, with stacked parameters under :func:`torch.func.vmap`
(:mod:`.engine`, :mod:`.functional`), in chunks that fit in memory (:mod:`.memory`).
:mod:`.planner` decides which clients can go together, falls back to the sequential engine for
the others, and hands each client's result to the ordinary client handler, so replies, mods,
failure accounting and everything downstream are unchanged. Federated evaluation of the clients
that received the same weights is batched likewise (:mod:`.evaluation`): one model, their
held-out samples together in forwards of ``evaluation.batch_size`` samples.
"""

from __future__ import annotations

ENGINE_NAMES = ("sequential", "vectorized")
