"""The ``[privacy]`` settings: how the DP strategies' privacy spending is accounted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.settings import Section, problem, setting

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan

ACCOUNTANTS = ("rdp", "prv")


@dataclass
class PrivacySettings(Section):
    """Privacy accounting of the DP strategies (``docs/privacy.md``); unused by other strategies."""

    accountant: str = setting("rdp", "accountant for the DP strategies' epsilon: `rdp` (Rényi DP) or `prv` "
                              "(tighter, numerical)")
    delta: float = setting(0.0, "delta of the reported epsilon; 0 = auto: min(1e-5, N^-1.1); otherwise "
                           "0 < delta < 1 / `partition.num_clients`")

    def check(self, prefix: str = "privacy") -> list[str]:
        """Checked whatever the strategy, so that typos show."""
        e: list[str] = []
        if self.accountant not in ACCOUNTANTS:
            e.append(problem(f"{prefix}.accountant", self.accountant, f"allowed: {', '.join(ACCOUNTANTS)}"))
        if not 0 <= self.delta < 1:
            e.append(problem(f"{prefix}.delta", self.delta, "must be in [0, 1) (0 = auto: min(1e-5, N^-1.1), "
                                                            "N = partition.num_clients)"))
        return e

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        n = config.partition.num_clients
        if 0 < self.delta < 1 and n > 0 and self.delta >= 1 / n:
            return [problem("privacy.delta", self.delta, f"must be < 1 / partition.num_clients = {1 / n:g}: a delta "
                            "of 1/N or more allows revealing a whole client's data (0 = auto: min(1e-5, N^-1.1))")]
        return []
