"""Configured per-client behaviour: how a client is made to act otherwise than an honest one.

Which clients behave how is decided once, on the server, when the run is planned (today
``[faults] fail_clients``; malicious clients will be the next kind), and written into the run
spec (``spec.json``) as :class:`BehaviourSpec` entries. Every process that hosts clients -- the
server's own for the in-process executor, a Ray worker, a SuperNode with its own data (which is
sent the spec when it joins) -- reads the spec, so the behaviour reaches the client wherever it
runs, and no message has to carry it.

A :class:`Behaviour` acts at named points of a client's task; the client handler
(:mod:`fedsim.clients.handler`) calls them. ``trains_in_lockstep`` says whether the vectorized
engine may train (or evaluate) the client with the others (a client that fails on purpose is left
to the handler, which fails it alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.settings import Section, problem, setting

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


@dataclass(frozen=True)
class BehaviourSpec:
    """One configured behaviour as the run spec carries it: its name, its clients, its parameters."""

    name: str
    clients: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "clients": list(self.clients), "params": dict(self.params)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BehaviourSpec:
        return cls(str(raw["name"]), tuple(int(c) for c in raw["clients"]), dict(raw.get("params", {})))


class Behaviour:
    """Base class: every point does nothing; a behaviour overrides what it changes."""

    name: ClassVar[str] = ""
    trains_in_lockstep: ClassVar[bool] = True  # may the vectorized engine train (or evaluate) this client with others?

    def __init__(self, **params: Any) -> None:
        self.params = params

    def before_task(self, client_id: int, phase: str) -> None:
        """Called before the client trains or evaluates (``phase`` is ``train`` or ``evaluate``)."""


class Fail(Behaviour):
    """The client raises in every task: to study how runs, strategies and accounting cope with failures."""

    name = "fail"
    trains_in_lockstep = False

    def before_task(self, client_id: int, phase: str) -> None:
        raise RuntimeError(f"client {client_id} failed on purpose (faults.fail_clients)")


BEHAVIOURS: dict[str, type[Behaviour]] = {"fail": Fail}


class ClientBehaviours:
    """The behaviours of a run's clients, looked up by client id (built once per worker process)."""

    def __init__(self, specs: Iterable[BehaviourSpec] = ()) -> None:
        self._by_client: dict[int, list[Behaviour]] = {}
        for spec in specs:
            behaviour = BEHAVIOURS[spec.name](**spec.params)
            for client_id in spec.clients:
                self._by_client.setdefault(int(client_id), []).append(behaviour)

    def of(self, client_id: int) -> list[Behaviour]:
        return self._by_client.get(int(client_id), [])

    def before_task(self, client_id: int, phase: str) -> None:
        for behaviour in self.of(client_id):
            behaviour.before_task(client_id, phase)

    def trains_in_lockstep(self, client_id: int) -> bool:
        return all(behaviour.trains_in_lockstep for behaviour in self.of(client_id))


@dataclass
class FaultSettings(Section):
    """Fault injection (``[faults]``): clients that fail on purpose, wherever they run."""

    fail_clients: list[int] = setting(help="these client ids raise in every round (to study failures)",
                                      factory=list)

    def behaviours(self) -> list[BehaviourSpec]:
        """What the run spec carries for these settings."""
        return [BehaviourSpec("fail", tuple(self.fail_clients))] if self.fail_clients else []

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        n = config.partition.num_clients
        if all(0 <= k < n for k in self.fail_clients):
            return []
        return [problem("faults.fail_clients", self.fail_clients, f"client ids must be in 0..{n - 1}")]
