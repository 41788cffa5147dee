"""The round loop's own settings: ``[train]`` (rounds, sampling, the local recipe) and ``[evaluation]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.settings import Section, problems, setting

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan


@dataclass
class TrainSettings(Section):
    """Rounds, client sampling and the local SGD recipe (``[train]``).

    ``mode`` is one of the run modes (:mod:`fedsim.methods.modes`); the local-recipe keys
    become the run's one :class:`~fedsim.core.recipe.SGDRecipe` in the run plan.
    """

    mode: str = setting("federated", "`federated`, `one-shot` (one aggregation of independently trained "
                        "clients) or `centralized` (the baseline on the union of the clients' data)")
    rounds: int = setting(5, "federated rounds")
    fraction_train: float = setting(1.0, "share of clients sampled per round (m = max(floor(C K), 1))")
    clients_per_round: int = setting(0, "exact number of clients per round; > 0 overrides `fraction_train`")
    local_epochs: int = setting(1, "local epochs per round")
    batch_size: int = setting(32, "local batch size")
    lr: float = setting(0.01, "local learning rate (SGD)")
    momentum: float = setting(0.9, "local SGD momentum")
    weight_decay: float = setting(0.0, "local SGD weight decay")
    min_success_fraction: float = setting(0.5, "stop with an error when fewer of a round's sampled clients "
                                          "succeed")

    def check(self, prefix: str = "train") -> list[str]:
        return problems(prefix, [
            (self.rounds >= 1, "rounds", self.rounds, "must be >= 1"),
            (0 < self.fraction_train <= 1, "fraction_train", self.fraction_train, "must be in (0, 1]"),
            (self.clients_per_round >= 0, "clients_per_round", self.clients_per_round,
             "must be >= 0 (0 = use fraction_train)"),
            (self.local_epochs >= 1, "local_epochs", self.local_epochs, "must be >= 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1"),
            (self.lr > 0, "lr", self.lr, "must be > 0"),
            (0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0"),
            (0 < self.min_success_fraction <= 1, "min_success_fraction", self.min_success_fraction,
             "must be in (0, 1]"),
        ])

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        n = config.partition.num_clients
        return problems("train", [(self.clients_per_round <= n, "clients_per_round", self.clients_per_round,
                                   f"must be <= partition.num_clients ({n})")])


@dataclass
class EvaluationSettings(Section):
    """Centralized (server-side, test set) and federated (clients' held-out split) evaluation."""

    centralized_every: int = setting(1, "evaluate the global model on the test set every N rounds (and after "
                                     "the last); 0 = never")
    federated_every: int = setting(1, "federated evaluation on sampled clients' held-out splits every N rounds "
                                   "(and after the last); 0 = never")
    fraction_evaluate: float = setting(1.0, "share of clients sampled for federated evaluation")
    clients_per_eval: int = setting(0, "exact number of clients per federated evaluation; > 0 overrides "
                                    "`fraction_evaluate`")
    batch_size: int = setting(512, "evaluation batch size")
    client_models: bool = setting(False, "also evaluate every client's uploaded model on the test set "
                                  "(`clients.csv` phase `local-test`)")

    def check(self, prefix: str = "evaluation") -> list[str]:
        return problems(prefix, [
            (self.centralized_every >= 0, "centralized_every", self.centralized_every, "must be >= 0 (0 = never)"),
            (self.federated_every >= 0, "federated_every", self.federated_every, "must be >= 0 (0 = never)"),
            (0 < self.fraction_evaluate <= 1, "fraction_evaluate", self.fraction_evaluate, "must be in (0, 1]"),
            (self.clients_per_eval >= 0, "clients_per_eval", self.clients_per_eval,
             "must be >= 0 (0 = use fraction_evaluate)"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1"),
        ])

    def check_against(self, config: ExperimentConfig, plan: RunPlan) -> list[str]:
        n = config.partition.num_clients
        return problems("evaluation", [
            (self.clients_per_eval <= n, "clients_per_eval", self.clients_per_eval,
             f"must be between 0 and partition.num_clients ({n})"),
            (self.federated_every == 0 or config.partition.val_fraction > 0
             or plan.method.evaluates_without_validation_split, "federated_every", self.federated_every,
             "federated evaluation needs partition.val_fraction > 0 (or set 0)"),
        ])
