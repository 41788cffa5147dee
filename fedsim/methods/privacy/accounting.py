"""Privacy accounting for the differential-privacy strategies: (epsilon, delta) after every round.

Flower's DP wrappers (``dp-fixed-server``, ``dp-adaptive-server``, ``dp-fixed-client``,
``dp-adaptive-client``) clip each sampled client's model update to norm C and add Gaussian noise
of standard deviation ``z * C / M`` to the mean of the updates (``M`` =
``num_sampled_clients``), but report no budget. :class:`PrivacyAccounting` is the round
extension that does: every round that releases a new global model is one step of the sampled
Gaussian mechanism with sampling rate ``q = clients sampled / partition.num_clients`` and the
noise multiplier the round actually had, composed with Opacus's accountant (``privacy.accountant``:
``rdp`` by default, or ``prv``; :mod:`.settings`). This is *client-level* DP of the whole training: neighbouring
datasets differ in all the data of one client. ``docs/privacy.md`` gives the formulas and the
assumptions (Poisson vs fixed-size sampling, equal client weights).

Per round ``r`` with ``n_r`` updates aggregated (the round's successful clients):

* fixed clipping: ``z_r = z * n_r / M`` (``= z`` when every sampled client replied),
* adaptive clipping (Andrew et al. 2021, Thm. 1): Flower adds ``z_update * C / M`` to the update
  and ``N(0, sigma_b^2)`` to the clipped-bit count; the pair is one Gaussian mechanism with
  ``z_r = ((z_update * n_r / M) ** -2 + (2 * sigma_b) ** -2) ** -0.5``, which equals the configured
  ``noise_multiplier`` when ``n_r = M`` (Flower derives ``z_update`` from it).

A round in which no client's update reached the strategy releases nothing and is not a step.
The accountant's history (``(z, q, steps)`` entries) is the extension's checkpointed state, so a
resumed run reports the same epsilons; epsilon is recomputed from the history each round.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.strategies.averaging import UniformAvg

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.runs.plan import RunPlan

ACCOUNTANTS = ("rdp", "prv")
DEFAULT_DELTA_CAP = 1e-5
SUMMARY_KEYS = ("dp_epsilon", "dp_delta", "dp_accountant", "dp_noise_multiplier", "dp_sampling_rate")

log = logging.getLogger(__name__)


def is_dp_strategy(strategy: Strategy) -> bool:
    """Whether ``strategy`` is one of Flower's DP wrappers (fixed or adaptive clipping)."""
    return isinstance(strategy, (DifferentialPrivacyFixedClippingBase, DifferentialPrivacyAdaptiveBase))


def resolve_delta(delta: float, num_clients: int) -> float:
    """``privacy.delta``, or for 0 (auto) ``min(1e-5, N ** -1.1)``: always below 1/N."""
    return float(delta) if delta > 0 else min(DEFAULT_DELTA_CAP, float(num_clients) ** -1.1)


def adaptive_noise_multiplier(update_noise: float, count_stddev: float) -> float:
    """Andrew et al.'s effective noise multiplier of the update noise plus the clipped-count noise."""
    if update_noise <= 0 or count_stddev <= 0:
        return 0.0
    return (update_noise ** -2 + (2.0 * count_stddev) ** -2) ** -0.5


def epsilon(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after the steps of ``history`` ((noise multiplier, sampling rate, steps))."""
    if not history:
        return 0.0
    if any(z <= 0 for z, _, _ in history):
        return math.inf  # a step without noise: no finite epsilon
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(z), float(q), int(k)) for z, q, k in history]
    with warnings.catch_warnings():  # "optimal order is the smallest alpha" at very high epsilon
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta))


@dataclass
class PrivacyAccounting(RoundExtension):
    """Fills ``dp_epsilon`` in every round's row and the ``dp_*`` facts of ``summary.json``.

    ``noise_multiplier``: the wrapper's noise multiplier on the update (Flower's
    ``strategy.noise_multiplier``; for adaptive clipping the inflated ``z_update``);
    ``clipped_count_stddev``: sigma_b of adaptive clipping (None: fixed clipping);
    ``num_sampled_clients``: M, the divisor of Flower's noise; ``population``: N.
    """

    noise_multiplier: float
    num_sampled_clients: int
    population: int
    clients_per_round: int
    delta: float
    accountant: str = "rdp"
    clipped_count_stddev: float | None = None
    clipping: str = "fixed"
    notes: list[str] = field(default_factory=list)
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._recorder = None

    def step_noise(self, aggregated: int) -> float:
        """The round's noise multiplier with ``aggregated`` updates averaged (see the module)."""
        z = self.noise_multiplier * (aggregated / self.num_sampled_clients)
        return z if self.clipped_count_stddev is None else adaptive_noise_multiplier(z, self.clipped_count_stddev)

    @property
    def sampling_rate(self) -> float:
        return self.clients_per_round / self.population

    def epsilon(self) -> float:
        return epsilon(self.history, self.delta, self.accountant)

    def extras(self) -> dict[str, Any]:
        eps = self.epsilon()
        extras: dict[str, Any] = {
            "dp_epsilon": eps if math.isfinite(eps) else None,  # JSON has no infinity: null = unbounded
            "dp_delta": self.delta,
            "dp_accountant": self.accountant,
            "dp_noise_multiplier": self.step_noise(self.num_sampled_clients),
            "dp_sampling_rate": self.sampling_rate,
            "dp_clipping": self.clipping,
            "dp_rounds_accounted": sum(k for _, _, k in self.history),
        }
        if self.clipped_count_stddev is not None:
            extras["dp_update_noise_multiplier"] = self.noise_multiplier
            extras["dp_clipped_count_stddev"] = self.clipped_count_stddev
        if self.notes:
            extras["dp_notes"] = list(self.notes)
        return extras

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self._recorder = run.recorder
        run.recorder.extras.update(self.extras())
        return {}

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        aggregated = int(record.row.get("clients_succeeded") or 0)
        if aggregated > 0:  # a new global model was released
            sampled = int(record.row.get("clients_sampled") or self.clients_per_round)
            z, q = self.step_noise(aggregated), min(1.0, sampled / self.population)
            if self.history and self.history[-1][:2] == (z, q):
                self.history[-1] = (z, q, self.history[-1][2] + 1)
            else:
                self.history.append((z, q, 1))
        record.row["dp_epsilon"] = self.epsilon()
        if self._recorder is not None:
            self._recorder.extras.update(self.extras())

    def on_run_end(self, arrays: ArrayRecord) -> None:
        if self._recorder is not None:
            self._recorder.extras.update(self.extras())

    def state(self) -> dict[str, Any]:
        return {"history": [[float(z), float(q), int(k)] for z, q, k in self.history]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [(float(z), float(q), int(k)) for z, q, k in state["history"]]


CLIPPING = {
    "DifferentialPrivacyServerSideFixedClipping": "server-side fixed",
    "DifferentialPrivacyClientSideFixedClipping": "client-side fixed",
    "DifferentialPrivacyServerSideAdaptiveClipping": "server-side adaptive",
    "DifferentialPrivacyClientSideAdaptiveClipping": "client-side adaptive",
}


def _clipping(strategy: Strategy) -> str:
    for klass in type(strategy).__mro__:
        if klass.__name__ in CLIPPING:
            return CLIPPING[klass.__name__]
    return "adaptive" if isinstance(strategy, DifferentialPrivacyAdaptiveBase) else "fixed"


def privacy_extensions(plan: RunPlan, strategy: Strategy) -> list[RoundExtension]:
    """``[PrivacyAccounting]`` when ``strategy`` is a DP wrapper, else ``[]``."""
    if not is_dp_strategy(strategy):
        return []
    config, n, k = plan.config, plan.num_clients, plan.clients_per_round
    m = int(strategy.num_sampled_clients)
    notes = []
    if not isinstance(getattr(strategy, "strategy", None), UniformAvg):
        base = config.strategy.kwargs.get("base", "fedavg")
        notes.append(f"base strategy {base!r} does not aggregate a plain mean of the client models: Flower's noise "
                     "is calibrated for an equal-weight mean (sensitivity C / M), so epsilon holds as reported "
                     "only if every client has the same weight; use base = 'uniform' for the accounted guarantee")
    if m != k:
        notes.append(f"strategy num_sampled_clients = {m} differs from the clients sampled per round ({k}): the "
                     "noise multiplier is accounted as noise_multiplier * aggregated / num_sampled_clients")
    for note in notes:
        log.warning("privacy accounting: %s", note)
    adaptive = isinstance(strategy, DifferentialPrivacyAdaptiveBase)
    return [PrivacyAccounting(
        noise_multiplier=float(strategy.noise_multiplier), num_sampled_clients=m, population=n,
        clients_per_round=k, delta=resolve_delta(config.privacy.delta, n), accountant=config.privacy.accountant,
        clipped_count_stddev=float(strategy.clipped_count_stddev) if adaptive else None,
        clipping=_clipping(strategy), notes=notes)]
