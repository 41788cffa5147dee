"""Engine support for ``feddyn`` (Acar et al., "Federated Learning Based on Dynamic Regularization",
ICLR 2021, following the official code, alpemreacar/FedDyn).

The strategy (:class:`fedsim.strategies.feddyn.FedDyn`) keeps the clients' mean state mean_H and
the clients' side (:mod:`fedsim.clients.feddyn`) keeps each H_k in the client-state store. What
the server side does around them lives here:

* **start** -- mean_H starts at zero over the initial model's trainable parameters, and N (the
  whole population, ``partition.num_clients``) is what its update divides by;
* **rules** -- ``time.policy.train_dropped`` is refused (a dropped client would store its new H_k
  while the server leaves its drift out of mean_H); the DP wrappers refuse ``feddyn`` as their base
  in the strategy registry, and streaming refuses it as not a weighted mean
  (:mod:`fedsim.runs.settings`);
* **the averaged model** -- like the official code, the plain mean ``avg`` of the round's client
  models is evaluated on the test set beside the cloud model (the run's global model), on the same
  schedule, into ``rounds.csv``'s ``avg_model_test_loss`` and ``avg_model_test_accuracy``
  (:class:`AverageModelEvaluation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.core.sampling import due
from fedsim.outputs.recorder import RunRecorder
from fedsim.strategies.feddyn import FedDyn

from ..base import Method
from ..evaluation import CentralEvaluation, CentralEvaluator

if TYPE_CHECKING:  # type-only: the config and the plan are resolved above this package
    from fedsim.runs.plan import RunPlan


class AverageModelEvaluation(RoundExtension):
    """FedDyn's plain mean ``avg`` of the round's client models on the test set, when the global model is.

    Reads :attr:`FedDyn.average` (set by the round's aggregation) at the round's end; writes no
    confusion matrix (that is the global model's). Keeps nothing between rounds: the strategy's
    checkpointed attributes hold ``avg``.
    """

    stateful = False
    COLUMNS = ("avg_model_test_loss", "avg_model_test_accuracy")

    def __init__(self, evaluator: CentralEvaluator, every: int, strategy: FedDyn) -> None:
        self.evaluator, self.every, self.strategy = evaluator, every, strategy
        self.rounds = 0

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self.rounds = run.rounds
        return {}

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        average = self.strategy.average
        if average is None or not due(self.every, record.server_round, self.rounds):
            return
        metrics, _ = self.evaluator(average)
        record.row.update({"avg_model_test_loss": metrics["test_loss"],
                           "avg_model_test_accuracy": metrics["test_accuracy"]})


class FedDynMethod(Method):
    """Weight exchange plus FedDyn's state: mean_H prepared at the start, the averaged model evaluated."""

    refuses_dropped_training = ("feddyn: a dropped client would store its new state H_k while the server leaves its "
                                "drift out of the clients' mean state")

    def start(self, strategy: Strategy, plan: RunPlan,
              recorder: RunRecorder) -> tuple[ArrayRecord, list[RoundExtension]]:
        """The seeded initial model, the weight exchange's extensions and the averaged model's evaluation."""
        assert isinstance(strategy, FedDyn), "feddyn's method drives FedDyn"
        arrays, extensions = super().start(strategy, plan, recorder)
        strategy.prepare(dict(plan.initial_model().named_parameters()), plan.num_clients)
        central = next(ext for ext in extensions if isinstance(ext, CentralEvaluation))
        extensions.append(AverageModelEvaluation(central.evaluator, central.every, strategy))
        return arrays, extensions
