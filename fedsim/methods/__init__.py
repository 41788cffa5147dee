"""Methods: the engine's support for a strategy family beyond the round loop (see :mod:`.base`).

:data:`METHODS` maps a strategy name to its :class:`Method`; every strategy not listed
exchanges model weights and gets the default.
"""

from __future__ import annotations

from .base import Method, ServerSetup
from .latent_distill import DistillationViews, LatentDistillMethod

METHODS: dict[str, Method] = {"latent-distill": LatentDistillMethod()}
WEIGHTS = Method()


def method_for(strategy_name: str) -> Method:
    """The engine support for strategy ``strategy_name`` (weight exchange unless registered)."""
    return METHODS.get(strategy_name, WEIGHTS)


__all__ = ["METHODS", "DistillationViews", "LatentDistillMethod", "Method", "ServerSetup", "method_for"]
