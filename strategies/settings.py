"""The ``[strategy]`` settings: the Flower server strategy by name, and its keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.settings import Section, problem, setting

from .registry import STRATEGIES

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


@dataclass
class StrategySettings(Section):
    """The Flower server strategy (``[strategy]``; the names are :data:`~fedsim.strategies.STRATEGIES`)."""

    name: str = setting("fedavg", "a strategy by name (see Strategies)")
    kwargs: dict[str, Any] = setting(help="the strategy's keyword arguments, e.g. `--set "
                                     "strategy.kwargs.proximal_mu=0.01`", factory=dict)

    def check(self, prefix: str = "strategy") -> list[str]:
        # the registry as it is now: a strategy may be registered at run time
        if self.name not in STRATEGIES:
            return [problem(f"{prefix}.name", self.name, f"allowed: {', '.join(STRATEGIES)}")]
        return []

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        """The keyword arguments, checked by building the strategy once (in the plan)."""
        return [f"strategy.kwargs = {self.kwargs!r}: {plan.strategy.error}"] if plan.strategy.error else []
