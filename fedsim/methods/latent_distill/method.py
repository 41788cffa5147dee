"""Engine support for ``latent-distill``: federated distillation through a latent representation layer.

The strategy (:class:`fedsim.strategies.LatentDistillation`) exchanges outputs on a shared
transfer set instead of weights, and the clients' side lives in :mod:`fedsim.clients.distill`.
What the server side has to do around them lives here, in one place:

* **rules** -- how the ``[latent_distill]`` settings (:mod:`.settings`) combine with the rest of
  the config;
* **inputs** -- the transfer set (held out of the training set before partitioning, or drawn
  from another cached dataset, refused when it shares images with the clients' data:
  :func:`check_transfer_disjoint`) and each client's T_priv, a test subset with the client's
  class mix (``transfer.npz``);
* **start** -- with ``latent_distill.teacher = "server"`` a teacher of the run's architecture trained
  on the labelled transfer set with the one training loop; its transfer-set outputs become
  every round's targets and its test accuracy goes to ``summary.json``;
* **views** (:class:`DistillationViews`) -- there is no global model, so the round's test
  accuracy is the mean over the evaluated clients of their own models on the whole test set
  (T_uni), next to T_priv and the spreads; with a labelled transfer set, the consensus logits'
  accuracy is recorded too.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.clients.distill import transfer_outputs
from fedsim.clients.training import seeded_generator, to_tensor, train
from fedsim.datasets import (
    CachedDataset,
    DataSettings,
    DatasetError,
    holdout_transfer,
    materialize,
    tpriv_indices,
)
from fedsim.datasets.cache import resolve_npz_path
from fedsim.datasets.transfer import shared_images
from fedsim.core.extension import PHASE_EVALUATE, RoundExtension, RoundRecord, RunContext
from fedsim.core.protocol import TPRIV_ACCURACY, ClientReply
from fedsim.core.recipe import DistillRecipe, SGDRecipe
from fedsim.outputs.recorder import RunRecorder
from fedsim.core.spec import TransferIndex
from fedsim.strategies import LatentDistillation

from fedsim.settings import problem

from ..base import Method
from ..evaluation import CentralEvaluator

if TYPE_CHECKING:  # type-only: the config and the plan are resolved above this package
    from fedsim.config import ExperimentConfig
    from fedsim.runs.plan import RunPlan

TEACHER_STREAM = 0x7EAC  # the server teacher's generator salt (a stream no client uses)


class DistillationViews(RoundExtension):
    """Per-client T_priv / T_uni accuracy and its means; consensus accuracy on the transfer set."""

    def __init__(self, transfer_labels: np.ndarray | None) -> None:
        self.transfer_labels = transfer_labels
        self.recorder: RunRecorder | None = None
        self.last_tpriv = float("nan")

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        self.recorder = run.recorder
        return {}

    def on_evaluate_replies(self, record: RoundRecord, replies: list[ClientReply]) -> None:
        tpriv = {r.client_id: float(r.metrics[TPRIV_ACCURACY]) for r in replies if TPRIV_ACCURACY in r.metrics}
        rows = [r for r in record.rows_of(PHASE_EVALUATE) if r["status"] == "ok"]
        for row in rows:
            row["tpriv_accuracy"] = tpriv.get(row["client_id"], np.nan)
        if rows:
            uni = np.array([r["accuracy"] for r in rows], dtype=float)
            priv = np.array([r["tpriv_accuracy"] for r in rows], dtype=float)
            record.row.update({"test_accuracy": float(uni.mean()), "tuni_std": float(uni.std()),
                               "tpriv_accuracy": float(np.nanmean(priv)), "tpriv_std": float(np.nanstd(priv)),
                               "test_loss": float(np.mean([r["loss"] for r in rows]))})
            if np.isfinite(record.row["tpriv_accuracy"]):
                self.last_tpriv = record.row["tpriv_accuracy"]

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        if self.transfer_labels is not None and "logits" in arrays:
            record.row["consensus_accuracy"] = float((arrays["logits"].numpy().argmax(1) == self.transfer_labels).mean())

    def on_run_end(self, arrays: ArrayRecord) -> None:
        if self.recorder is not None and np.isfinite(self.last_tpriv):
            self.recorder.extras["final_tpriv_accuracy"] = self.last_tpriv

    def state(self) -> dict[str, Any]:
        return {"last_tpriv": self.last_tpriv}

    def load_state(self, state: dict[str, Any]) -> None:
        self.last_tpriv = float(state["last_tpriv"])


class LatentDistillMethod(Method):
    """Transfer set, T_priv, server teacher and per-client views for ``latent-distill``."""

    global_model = False
    heterogeneous_architectures = True
    accepts_hooks = False  # the digest step is the method's own change to local training
    evaluates_without_validation_split = True  # clients evaluate on T_priv / T_uni

    def check(self, c: ExperimentConfig) -> list[str]:
        """How ``[latent_distill]`` combines with the rest (its own values are checked by its settings)."""
        d = c.latent_distill
        rules: list[tuple[bool, str, object, str]] = [
            (c.train.mode == "federated", "train.mode", c.train.mode, "latent-distill runs in federated mode"),
            (d.lambda_rep == 0 or c.model.representation_dim > 0, "latent_distill.lambda_rep", d.lambda_rep,
             "the representation loss needs model.representation_dim > 0"),
            (c.evaluation.client_models is False, "evaluation.client_models", True,
             "latent-distill evaluates every client's own model already (T_priv, T_uni)"),
        ]
        return [problem(key, value, allowed) for ok, key, value, allowed in rules if not ok]

    def check_for_dataset(self, config: ExperimentConfig, num_train: int, num_classes: int) -> list[str]:
        d = config.latent_distill
        if d.transfer_dataset:
            return []
        errors = []
        if d.transfer_size >= num_train:
            errors.append(problem("latent_distill.transfer_size", d.transfer_size,
                                  f"must leave private data: the training set has {num_train} samples"))
        if not all(k < num_classes for k in d.transfer_classes):
            errors.append(problem("latent_distill.transfer_classes", d.transfer_classes, f"class ids must be < {num_classes}"))
        return errors

    def holdout(self, config: ExperimentConfig, labels: np.ndarray) -> np.ndarray | None:
        d = config.latent_distill
        if d.transfer_dataset:
            return None
        return holdout_transfer(labels, d.transfer_size, config.seed, list(d.transfer_classes))

    def write_inputs(self, plan: RunPlan, holdout: np.ndarray | None) -> None:
        """``transfer.npz``: the transfer set's indices (and source) and every client's T_priv."""
        config, dataset, split = plan.config, plan.dataset, plan.partition
        source, transfer = external_transfer(config, dataset) if holdout is None else (None, holdout)
        if source is not None:
            check_transfer_disjoint(config, dataset, source, transfer,
                                    np.concatenate([split.train_indices, split.val_indices]))
        y_train = np.asarray(dataset.load()["y_train"])
        y_test = np.asarray(dataset.load()["y_test"])
        tpriv = [tpriv_indices(y_test, np.bincount(y_train[split.train_of(c)], minlength=dataset.num_classes),
                               config.latent_distill.tpriv_size, config.seed, c)
                 for c in range(split.num_clients)]
        TransferIndex.from_lists(transfer, tpriv, str(source.folder.resolve()) if source else "").save(plan.staging)

    def client_distill_recipe(self, config: ExperimentConfig) -> DistillRecipe:
        d, t = config.latent_distill, config.train
        digest = SGDRecipe(d.digest_epochs, d.digest_batch_size, d.digest_lr or t.lr, t.momentum, t.weight_decay)
        return DistillRecipe(digest, d.lambda_ce, d.lambda_kd, d.lambda_rep, d.temperature, d.tau)

    def local_samples(self, config: ExperimentConfig, train_sizes: np.ndarray) -> np.ndarray:
        """The revisit (local epochs on private data) plus the digest epochs on the transfer set."""
        d = config.latent_distill
        digest = d.digest_epochs * d.transfer_size if (d.lambda_ce or d.lambda_kd or d.lambda_rep) else 0
        return super().local_samples(config, train_sizes) + digest

    def upload_bytes(self, config: ExperimentConfig, model_bytes: int, output_width: int, num_classes: int) -> int:
        """Float32 logits and representations on the transfer set; nothing with a server teacher."""
        if config.latent_distill.teacher == "server":
            return 0
        return _outputs_bytes(config.latent_distill.transfer_size, num_classes, output_width)

    def start(self, strategy: Strategy, plan: RunPlan, recorder: RunRecorder) -> tuple[ArrayRecord, list[RoundExtension]]:
        assert isinstance(strategy, LatentDistillation), "latent-distill's method drives LatentDistillation"
        labels = self._transfer_labels(plan)
        if labels is not None and plan.config.latent_distill.teacher == "server":
            strategy.set_teacher(self._train_teacher(plan, recorder, labels))
        return strategy.initial_arrays(), [DistillationViews(labels)]

    @staticmethod
    def _transfer_labels(plan: RunPlan) -> np.ndarray | None:
        """The transfer set's labels (None when it comes from another dataset: not the clients' classes)."""
        index = TransferIndex.load(plan.staging)
        if index.source:
            return None
        return np.asarray(plan.dataset.load()["y_train"][index.transfer], dtype=np.int64)

    @staticmethod
    def _train_teacher(plan: RunPlan, recorder: RunRecorder, labels: np.ndarray) -> ArrayRecord:
        """A server teacher trained with cross-entropy on the labelled transfer set; its outputs."""
        config, dataset, device = plan.config, plan.dataset, plan.server_device
        evaluator = CentralEvaluator.of(plan)
        transfer = TransferIndex.load(plan.staging).transfer
        x = to_tensor(np.asarray(dataset.load()["x_train"][transfer]), dataset.mean, dataset.std, device)
        y = torch.from_numpy(labels.copy()).to(device)
        teacher = plan.initial_model().to(device)
        generator = seeded_generator(config.seed, 0, config.partition.num_clients, TEACHER_STREAM)
        train(teacher, x, y, plan.recipe.with_epochs(config.latent_distill.teacher_epochs), generator)
        metrics, _ = evaluator(ArrayRecord(teacher.state_dict()))
        recorder.extras["teacher_test_accuracy"] = metrics["test_accuracy"]
        logits, reps = transfer_outputs(teacher, x)
        return ArrayRecord({"logits": Array(logits.astype(np.float32)), "reps": Array(reps.astype(np.float32))})


@lru_cache(maxsize=64)
def _outputs_bytes(transfer_size: int, num_classes: int, width: int) -> int:
    """Bytes of a client's reply arrays: float32 logits (|d| x C) and representations (|d| x r)."""
    return ArrayRecord({"logits": Array(np.zeros((transfer_size, num_classes), dtype=np.float32)),
                        "reps": Array(np.zeros((transfer_size, width), dtype=np.float32))}).count_bytes()


def external_transfer(config: ExperimentConfig, dataset: CachedDataset) -> tuple[CachedDataset, np.ndarray]:
    """``latent_distill.transfer_dataset``: ``transfer_size`` of another cached dataset's training images.

    The images must have the clients' shape; their labels are not used (they are not the
    clients' classes). The draw is seeded by the config's seed.
    """
    d, data = config.latent_distill, config.data
    other = materialize(replace(data, dataset=d.transfer_dataset, path=d.transfer_path, classes=[]))
    if other.image_shape != dataset.image_shape:
        raise DatasetError(f"latent_distill.transfer_dataset = {d.transfer_dataset!r} has images of shape "
                           f"{other.image_shape}, the clients' are {dataset.image_shape}")
    if d.transfer_size > other.num_train:
        raise DatasetError(f"latent_distill.transfer_size = {d.transfer_size}: {d.transfer_dataset!r} has only "
                           f"{other.num_train} training images")
    rng = np.random.default_rng([config.seed, 0x7D])
    return other, np.sort(rng.choice(other.num_train, size=d.transfer_size, replace=False)).astype(np.int64)


def _npz_file(data: DataSettings) -> str:
    """The resolved ``.npz`` file of a ``data`` section naming one ("" for the other datasets)."""
    return str(resolve_npz_path(data).resolve()) if data.dataset == "npz" else ""


def _describe(data_name: str, path: str, settings: str) -> str:
    """``latent_distill.transfer_dataset = 'npz' (/data/copy.npz)`` for messages."""
    return f"{settings} = {data_name!r}" + (f" ({path})" if path else "")


def check_transfer_disjoint(config: ExperimentConfig, dataset: CachedDataset, source: CachedDataset,
                            transfer: np.ndarray, private: np.ndarray) -> None:
    """Refuse (exit 2) a transfer set from another dataset that shares images with the clients' data.

    The transfer set is the one thing every client digests and the server distils on; an image
    that is also a client's private training (or validation) image leaks that client's data into
    every other model and into the evaluation of distillation. Refusing is the honest choice: a
    transfer set silently shrunk by the overlap would change ``transfer_size`` and the payload,
    and the remedy is the user's (another dataset, or ``transfer_dataset = ""``, which holds the
    transfer set out of the training set before partitioning, disjoint by construction).

    Overlap is the same cached data (the same dataset, the same resolved ``.npz`` file) or any
    drawn transfer image equal, byte for byte, to a client's image (:func:`shared_images`: the
    clients' file copied under another name is caught too); well under a second on CIFAR-10.
    """
    d, data = config.latent_distill, config.data
    shared = shared_images(source.load()["x_train"], transfer, dataset.load()["x_train"], private)
    same = source.folder.resolve() == dataset.folder.resolve()
    if not (same or shared):
        return
    theirs = _describe(d.transfer_dataset, _npz_file(replace(data, dataset=d.transfer_dataset, path=d.transfer_path)),
                       "latent_distill.transfer_dataset")
    clients = _describe(data.dataset, _npz_file(data), "data.dataset")
    what = "is the clients' own dataset" if same else "shares images with the clients' data"
    raise DatasetError(
        f"{theirs} {what}, {clients}: {shared} of its {len(transfer)} transfer images are also clients' "
        "images; the transfer set must be disjoint from every client's data: take it from another "
        'dataset, or set latent_distill.transfer_dataset = "" to hold it out of the training set before '
        "partitioning")
