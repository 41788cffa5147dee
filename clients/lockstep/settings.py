"""The ``[engine]`` settings: how a worker trains the clients it hosts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.settings import Section, problems, setting

from . import ENGINE_NAMES

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


@dataclass
class EngineSettings(Section):
    """The training engine of a worker (``[engine]``): one client after another, or in lockstep."""

    kind: str = setting("sequential", "how a worker (`cohort` or `in-process`) trains its clients: `sequential` "
                        "(one after another) or `vectorized` (same-architecture clients in lockstep with "
                        "`torch.func`)")
    lockstep_clients: int = setting(0, "`vectorized`: most clients trained in one lockstep chunk (0 = as many "
                                    "as fit in `lockstep_memory`)")
    lockstep_memory: float = setting(0.5, "`vectorized`: fraction of the device's free memory a chunk may use")
    compile: bool = setting(False, "`vectorized`: `torch.compile` the whole lockstep step, once per "
                            "architecture and chunk size per worker; the compile time is in `rounds.csv` "
                            "(`compile_seconds`)")

    def check(self, prefix: str = "engine") -> list[str]:
        return problems(prefix, [
            (self.kind in ENGINE_NAMES, "kind", self.kind, f"allowed: {', '.join(ENGINE_NAMES)}"),
            (self.lockstep_clients >= 0, "lockstep_clients", self.lockstep_clients,
             "must be an integer >= 0 (0 = as many clients as fit in memory)"),
            (0 < self.lockstep_memory <= 1, "lockstep_memory", self.lockstep_memory,
             "must be a fraction of free device memory in (0, 1]"),
            (not self.compile or self.kind == "vectorized", "compile", self.compile,
             "compiles the lockstep step: set engine.kind = 'vectorized'"),
        ])

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        executor = config.executor.kind
        return problems("engine", [
            (self.kind != "vectorized" or executor in ("cohort", "in-process"), "kind", self.kind,
             f"the vectorized engine trains the many clients one worker hosts; executor {executor!r} runs one "
             "client per node: set executor.kind = 'cohort' (or 'in-process')"),
        ])
