"""Server-side evaluation on the test set: the evaluator and the extensions that use it.

* :class:`CentralEvaluator` -- loss, accuracy, macro precision/recall/F1 and the confusion
  matrix of any weights on the server's copy of the test set.
* :class:`CentralEvaluation` -- a round extension: the global model after round 0 (the initial
  weights) and every ``every`` rounds (and after the last).
* :class:`ClientModelEvaluation` -- a round extension: every successful client's own uploaded
  model on the test set (``clients.csv`` phase ``local-test``); one-shot runs and
  ``evaluation.client_models`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.clients.training import evaluate, to_tensor
from fedsim.core.extension import RoundExtension, RoundRecord, RunContext
from fedsim.outputs.metrics import confusion_matrix, macro_scores
from fedsim.models import FedsimNet
from fedsim.core.protocol import ClientReply
from fedsim.core.sampling import due

if TYPE_CHECKING:  # type-only: the plan is resolved above this package
    from fedsim.runs.plan import RunPlan


@dataclass
class CentralEvaluator:
    """Evaluates global weights on the server's copy of the test set."""

    model: FedsimNet
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    batch_size: int

    @classmethod
    def build(cls, model: FedsimNet, images: np.ndarray, labels: np.ndarray,
              mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
              batch_size: int) -> "CentralEvaluator":
        model = model.to(device)
        x = to_tensor(np.array(images), mean, std, device)  # a writable copy of the memory map
        y = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        return cls(model, x, y, model.num_classes, batch_size)

    @classmethod
    def of(cls, plan: RunPlan) -> "CentralEvaluator":
        """The evaluator of a prepared run: its test set and model, on the server's device."""
        test = plan.dataset.load()
        return cls.build(plan.initial_model(), np.asarray(test["x_test"]), np.asarray(test["y_test"]),
                         plan.dataset.mean, plan.dataset.std, plan.server_device, plan.config.evaluation.batch_size)

    def __call__(self, arrays: ArrayRecord) -> tuple[dict[str, float], np.ndarray]:
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        stats = evaluate(self.model, self.x_test, self.y_test, self.batch_size)
        matrix = confusion_matrix(self.y_test.cpu().numpy(), stats.predictions, self.num_classes)
        scores = macro_scores(matrix)
        metrics = {"test_loss": stats.loss, "test_accuracy": stats.accuracy,
                   "test_precision": scores["precision"], "test_recall": scores["recall"],
                   "test_f1": scores["f1"]}
        return metrics, matrix


class CentralEvaluation(RoundExtension):
    """The global model on the test set: initially (round 0) and on schedule.

    The latest confusion matrix goes to the recorder (``confusion_matrix.csv``).
    """

    def __init__(self, evaluator: CentralEvaluator, every: int) -> None:
        self.evaluator, self.every = evaluator, every
        self.run: RunContext | None = None

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        metrics, matrix = self.evaluator(arrays)
        assert self.run is not None, "on_run_start comes first"
        self.run.recorder.set_confusion(matrix)
        return metrics

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self.run = run
        return self.evaluate(arrays) if self.every > 0 and not run.resumed_after else {}

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        assert self.run is not None, "on_run_start comes first"
        if due(self.every, record.server_round, self.run.rounds):
            record.row.update(self.evaluate(arrays))


class ClientModelEvaluation(RoundExtension):
    """Each successful client's uploaded model on the test set (phase ``local-test``)."""

    needs_client_arrays = True

    def __init__(self, evaluator: CentralEvaluator) -> None:
        self.evaluator = evaluator

    def on_train_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        rows = []
        for reply in replies:
            metrics, _ = self.evaluator(reply.arrays)
            rows.append({"round": record.server_round, "phase": "local-test", "client_id": reply.client_id,
                         "status": "ok", "num_examples": len(self.evaluator.y_test),
                         "loss": metrics["test_loss"], "accuracy": metrics["test_accuracy"]})
        record.client_rows.extend(sorted(rows, key=lambda r: r["client_id"]))
