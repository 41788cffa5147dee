"""What a family of strategies needs from fedsim's server side beyond the round loop.

Most strategies exchange model weights: the server starts from seeded initial weights,
evaluates the global model on the test set and saves the final one. That is the default
:class:`Method`. A method whose strategy exchanges something else (e.g. federated
distillation's transfer-set outputs) subclasses it next to its own settings and registers under
its strategy's name in :data:`fedsim.methods.registry.METHODS`: its rules on the config, the
inputs it prepares before the run, how the server starts, and the round extensions it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.core.extension import RoundExtension
from fedsim.core.recipe import DistillRecipe
from fedsim.methods.evaluation import CentralEvaluation, CentralEvaluator, ClientModelEvaluation
from fedsim.outputs.recorder import RunRecorder
from fedsim.settings import problem

if TYPE_CHECKING:  # type-only: the config and the plan are resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


class Method:
    """Weight exchange: the default for every strategy that aggregates model weights."""

    global_model = True  # the strategy's arrays are model weights (evaluated, saved as final_model.pt)
    heterogeneous_architectures = False  # clients may train different architectures
    accepts_hooks = True  # client hooks may be configured
    evaluates_without_validation_split = False  # federated evaluation works with val_fraction = 0
    # Why this method cannot let dropped clients train on (``time.policy.train_dropped``): each client
    # stores state from its own update, which the server then leaves out ("": it can).
    refuses_dropped_training = ""

    def check(self, config: ExperimentConfig) -> list[str]:
        """Problems with the config that concern this method."""
        if self.refuses_dropped_training and config.time.policy.train_dropped:
            return [problem("time.policy.train_dropped", True, f"{self.refuses_dropped_training}; set it to false")]
        return []

    def check_for_dataset(self, config: ExperimentConfig, num_train: int, num_classes: int) -> list[str]:
        """Problems that show once the dataset's size and class count are known."""
        return []

    def holdout(self, config: ExperimentConfig, labels: np.ndarray) -> np.ndarray | None:
        """Training samples kept out of the clients' partition (None: all are partitioned)."""
        return None

    def write_inputs(self, plan: RunPlan, holdout: np.ndarray | None) -> None:
        """Write files the method's clients or server need into the prepared plan's staging folder.

        ``holdout``: the training samples :meth:`holdout` kept out of the partition (None: none).
        """
        return None

    def client_distill_recipe(self, config: ExperimentConfig) -> DistillRecipe | None:
        """The clients' distillation recipe for the run spec (None: clients do not distil)."""
        return None

    def local_samples(self, config: ExperimentConfig, train_sizes: np.ndarray) -> np.ndarray:
        """Training samples each client processes in one round (the simulated clock's work).

        Weight exchange: ``train.local_epochs`` passes over the client's training split.
        """
        return config.train.local_epochs * np.asarray(train_sizes, dtype=np.float64)

    def upload_bytes(self, config: ExperimentConfig, model_bytes: int, output_width: int, num_classes: int) -> int:
        """Bytes a client sends back in a training round, known before it trains.

        Weight exchange: the model it received (``model_bytes``), updated. ``output_width`` is
        the client's representation (or feature) width, for methods that send outputs.
        """
        return model_bytes

    def start(self, strategy: Strategy, plan: RunPlan, recorder: RunRecorder) -> tuple[ArrayRecord, list[RoundExtension]]:
        """The round loop's initial arrays and this method's round extensions, for a prepared ``plan``.

        Weight exchange: the seeded initial model, evaluated on the test set at round 0 and on
        the schedule of ``evaluation.centralized_every``; every client's own model too when the
        run evaluates client models.
        """
        evaluator = CentralEvaluator.of(plan)
        extensions: list[RoundExtension] = [CentralEvaluation(evaluator, plan.config.evaluation.centralized_every)]
        if plan.evaluates_client_models:
            extensions.append(ClientModelEvaluation(evaluator))
        return ArrayRecord(plan.initial_model().state_dict()), extensions
