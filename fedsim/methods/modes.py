"""Run modes (``train.mode``): their names, their rules and what they change about a run.

* ``federated`` -- rounds of sample -> train -> aggregate (the default).
* ``one-shot`` -- every client trains once from the same initial weights for
  ``train.local_epochs`` epochs and the server aggregates once (Guha, Talwalkar and Smith,
  "One-Shot Federated Learning", 2019); every client's own model is evaluated on the test set
  too. Needs ``train.rounds = 1`` and all clients.
* ``centralized`` -- a baseline: the same model and recipe on the union of all clients'
  training data for ``rounds`` x ``local_epochs`` epochs, one row per round, in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.settings import problem

if TYPE_CHECKING:  # type-only: the config is parsed above this package
    from fedsim.config import ExperimentConfig


@dataclass(frozen=True)
class RunMode:
    """What a mode means for a run."""

    summary: str
    federated: bool = True  # clients train in rounds (False: the centralized runner, no clients)
    evaluates_client_models: bool = False  # every client's upload is evaluated on the test set
    rule: Callable[[ExperimentConfig], list[str]] = lambda config: []


def _one_shot_rule(c: ExperimentConfig) -> list[str]:
    errors = []
    if c.train.rounds != 1:
        errors.append(problem("train.rounds", c.train.rounds, "one-shot mode aggregates exactly once: set train.rounds = 1"))
    if not (c.train.fraction_train == 1 and c.train.clients_per_round in (0, c.partition.num_clients)):
        errors.append(problem("train.fraction_train", c.train.fraction_train,
                              "one-shot mode trains every client: leave fraction_train = 1 and clients_per_round = 0"))
    return errors


def _centralized_rule(c: ExperimentConfig) -> list[str]:
    if c.hooks:
        return ["hooks: the centralized baseline runs no clients; remove the hooks or use mode federated"]
    return []


MODES: dict[str, RunMode] = {
    "federated": RunMode("rounds of sample -> train -> aggregate"),
    "one-shot": RunMode("every client trains once; one aggregation; client models evaluated too",
                        evaluates_client_models=True, rule=_one_shot_rule),
    "centralized": RunMode("the model trained on the union of the clients' data (baseline)",
                           federated=False, rule=_centralized_rule),
}
RUN_MODES = tuple(MODES)


def check_mode(config: ExperimentConfig) -> list[str]:
    """Problems with ``train.mode`` and the mode's own rules."""
    mode = MODES.get(config.train.mode)
    if mode is None:
        return [problem("train.mode", config.train.mode, f"allowed: {', '.join(RUN_MODES)}")]
    return mode.rule(config)
