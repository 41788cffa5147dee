"""Client hooks (``fedsim.clients.hooks``): pluggable stages of the local training loop.

Built-ins: ``crucial`` (Singh and Toshniwal), ``select`` (Jiang et al. 2017), ``augment`` (Singh
and Toshniwal; Jun and Shin), ``kd`` (Hinton et al. 2015, as used by Jun and Shin); the algorithms
and references are in ``docs/methods.md``. User hooks are named by import path ``"package.module:Class"``. Hooks are listed
in the config's ``[[hooks]]`` tables, each with ``name`` plus its parameters, and run in that
order. See :mod:`fedsim.clients.hooks.base` for the stages.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .augmentation import AugmentHook
from .base import Hook, HookContext, HookError, LocalData
from .distillation import KDHook
from .extensions import HookStatistics, PeerCommittee, round_extensions
from .scoring import CrucialHook, SelectHook

HOOKS: dict[str, type] = {"crucial": CrucialHook, "select": SelectHook, "augment": AugmentHook, "kd": KDHook}
HOOK_NAMES = tuple(HOOKS)
STAGES = ("prepare", "transform_batch", "loss", "report", "round_extension")


def _resolve(name: str) -> type:
    if name in HOOKS:
        return HOOKS[name]
    if ":" not in name:
        raise HookError(f"unknown hook {name!r}; built-ins: {', '.join(HOOK_NAMES)}, or a user hook "
                        "as 'package.module:Class'")
    module_name, _, class_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError, TypeError) as err:  # ValueError, TypeError: '' or '.x'
        raise HookError(f"hook {name!r} cannot be imported ({err}); give 'package.module:Class' of an "
                        "importable module") from err
    if not any(callable(getattr(cls, stage, None)) for stage in STAGES):
        raise HookError(f"hook {name!r} defines none of the stages {', '.join(STAGES)}")
    return cls


class _UserHook(Hook):
    """Adapts a user object with some of the stages to the full :class:`Hook` interface."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner, self.name = inner, name
        self.vectorizable = bool(getattr(inner, "vectorizable", True))

    def has_stage(self, stage: str) -> bool:
        return callable(getattr(self.inner, stage, None))

    def prepare(self, data: LocalData, ctx: HookContext) -> LocalData:
        stage = getattr(self.inner, "prepare", None)
        return stage(data, ctx) if stage else data

    def transform_batch(self, xb, ctx: HookContext):  # noqa: ANN001, ANN201
        stage = getattr(self.inner, "transform_batch", None)
        return stage(xb, ctx) if stage else xb

    def seeded_transform(self, ctx: HookContext):  # noqa: ANN201 - SeededTransform | None
        stage = getattr(self.inner, "seeded_transform", None)
        return stage(ctx) if stage else None

    def loss(self, xb, yb, logits, base_loss, ctx: HookContext):  # noqa: ANN001, ANN201
        stage = getattr(self.inner, "loss", None)
        return stage(xb, yb, logits, base_loss, ctx) if stage else base_loss

    def report(self, ctx: HookContext) -> dict[str, float]:
        stage = getattr(self.inner, "report", None)
        return dict(stage(ctx)) if stage else {}

    def round_extension(self):  # noqa: ANN201 - RoundExtension | None
        stage = getattr(self.inner, "round_extension", None)
        return stage() if stage else None


def build_hook(spec: dict[str, Any]) -> Hook:
    """Instantiate one hook from ``{"name": ..., **params}``; errors name what is allowed."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise HookError(f"hook spec {spec!r} must be a table with a 'name' key, e.g. {{name = \"select\", rho = 0.3}}")
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = _resolve(str(spec["name"]))
    signature = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in signature.values()):
        allowed = [p for p in signature if p != "self"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise HookError(f"hook {spec['name']!r} has no parameter(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(allowed) or '(none)'}")
    try:
        hook = cls(**params)
    except TypeError as err:
        raise HookError(f"hook {spec['name']!r}: {err}") from err
    name = getattr(hook, "name", None)
    if not name or name == "hook":
        name = str(spec["name"]).rpartition(":")[2].lower()
    return hook if isinstance(hook, Hook) else _UserHook(hook, name)


def build_hooks(specs: list[dict[str, Any]]) -> list[Hook]:
    """All configured hooks, in order; two hooks with the same name are refused.

    A hook that reads another's per-sample masks names it in ``needs``; that hook must be
    listed before it (checked here, so the mistake is a config error, not a failure of
    every client at run time).
    """
    hooks = [build_hook(spec) for spec in specs]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise HookError(f"hooks listed twice: {names}")
    for position, hook in enumerate(hooks):
        for needed in getattr(hook, "needs", ()):
            if needed not in names[:position]:
                raise HookError(f"hook {hook.name!r} (as configured) needs the {needed!r} hook listed before it "
                                f"in [[hooks]]; the hooks are: {names}")
    return hooks


__all__ = ["HOOKS", "HOOK_NAMES", "AugmentHook", "CrucialHook", "Hook", "HookContext", "HookError",
           "HookStatistics", "KDHook", "LocalData", "PeerCommittee", "SelectHook", "build_hook", "build_hooks",
           "round_extensions"]
