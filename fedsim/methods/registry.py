"""Which method serves which strategy, and the rules that concern the method a config chose."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.settings import problem

from .base import Method
from .feddyn import FedDynMethod
from .latent_distill.method import LatentDistillMethod
from .scaffold import ScaffoldMethod

if TYPE_CHECKING:  # type-only: the config is parsed above this package
    from fedsim.config import ExperimentConfig

METHODS: dict[str, Method] = {"latent-distill": LatentDistillMethod(), "scaffold": ScaffoldMethod(),
                              "feddyn": FedDynMethod()}
"""Strategy name -> its method; every strategy not listed exchanges weights (:data:`WEIGHTS`)."""
WEIGHTS = Method()


def method_for(strategy_name: str) -> Method:
    """The method of strategy ``strategy_name`` (weight exchange unless registered)."""
    return METHODS.get(strategy_name, WEIGHTS)


def method_problems(config: ExperimentConfig, method: Method) -> list[str]:
    """The chosen ``method``'s own rules, and whether it takes the configured architectures and hooks."""
    model = config.model
    names = {entry.partition("@")[0] for entry in model.architectures}
    errors = method.check(config)
    if names and names != {model.name} and not method.heterogeneous_architectures:
        mixing = [name for name, m in METHODS.items() if m.heterogeneous_architectures]
        errors.append(problem("model.architectures", model.architectures,
                              f"clients with other architectures than model.name need strategy "
                              f"{' or '.join(mixing)}; {config.strategy.name!r} averages weights"))
    if config.hooks and not method.accepts_hooks:
        errors.append(f"hooks: client hooks apply to weight-based strategies; {config.strategy.name} changes local "
                      "training its own way")
    return errors
