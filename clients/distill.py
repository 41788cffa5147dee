"""The client's side of ``latent-distill``: digest, revisit, report outputs; evaluate T_priv / T_uni.

Digest and revisit both run the one training loop (:func:`fedsim.clients.training.train`):
digest with a distillation objective over the transfer set, revisit with cross-entropy over
the client's private data. The client's model is loaded from and saved to the run's
client-state store, so only sampled clients' models are ever in memory.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsim.core.protocol import (
    DIGEST_LOSS,
    EVAL_ACCURACY,
    EVAL_LOSS,
    NUM_EXAMPLES,
    TPRIV_ACCURACY,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TUNI_ACCURACY,
)

from . import training
from .client import LocalClient
from .losses import distillation_loss

STATE = "latent_distill"  # the namespace of the clients' own models in the client-state store


@torch.no_grad()
def transfer_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Logits and representations of ``model`` on ``x`` (evaluation mode)."""
    model.eval()
    logits, reps = [], []
    for start in range(0, len(x), batch_size):
        z, r = model(x[start : start + batch_size], return_representation=True)
        logits.append(z)
        reps.append(r)
    return torch.cat(logits).cpu().numpy(), torch.cat(reps).cpu().numpy()


def digest(client: LocalClient, model: torch.nn.Module, targets: ArrayRecord, server_round: int) -> training.TrainStats:
    """Distil toward ``targets`` (``logits`` and/or ``reps`` per transfer sample) on the transfer set."""
    d = client.run.spec.distill
    assert d is not None, "a distillation round needs the spec's distill recipe"
    x, y = client.run.transfer_set()
    teacher_logits = torch.from_numpy(targets["logits"].numpy()).to(x.device) if "logits" in targets else None
    teacher_reps = torch.from_numpy(targets["reps"].numpy()).to(x.device) if "reps" in targets else None

    def objective(model, xb, yb, idx):  # noqa: ANN001, ANN202 - training.Objective
        logits, rep = model(xb, return_representation=True)
        loss = distillation_loss(
            logits, rep,
            teacher_logits[idx] if teacher_logits is not None else None,
            teacher_reps[idx] if teacher_reps is not None else None,
            yb, d.lambda_ce, d.lambda_kd, d.lambda_rep, d.temperature, d.tau,
        )
        return loss, logits

    generator = training.seeded_generator(client.run.spec.seed, server_round, client.client_id, 0xD1)
    return training.train(model, x, y, d.digest, generator, objective=objective)


def distill_round(client: LocalClient, targets: ArrayRecord, server_round: int,
                  send_outputs: bool) -> tuple[dict[str, float], ArrayRecord]:
    """One round for one client: digest (when there are targets), revisit, report outputs."""
    d = client.run.spec.distill
    model = client.run.client_model(client.client_id, STATE)
    digested = None
    if len(targets.keys()) and d is not None and d.digests:
        digested = digest(client, model, targets, server_round)
    stats = client.fit(model, server_round)
    outputs = ArrayRecord()
    if send_outputs:
        x, _ = client.run.transfer_set()
        logits, reps = transfer_outputs(model, x)
        outputs = ArrayRecord({"logits": Array(logits.astype(np.float32)), "reps": Array(reps.astype(np.float32))})
    client.run.state_store(STATE).save(client.client_id, model.state_dict())
    metrics = {NUM_EXAMPLES: stats.num_examples, TRAIN_LOSS: stats.loss, TRAIN_ACCURACY: stats.accuracy,
               DIGEST_LOSS: digested.loss if digested else float("nan")}
    return metrics, outputs


def evaluate_views(client: LocalClient) -> dict[str, float]:
    """The client's own model on T_priv (its class mix) and T_uni (the whole test set)."""
    model = client.run.client_model(client.client_id, STATE)
    x, y = client.run.test_set()
    uni = training.evaluate(model, x, y, client.run.spec.eval_batch_size)
    tpriv = client.run.transfer.tpriv_of(client.client_id)
    hits = uni.predictions[tpriv] == y.cpu().numpy()[tpriv]
    return {NUM_EXAMPLES: int(len(tpriv)), EVAL_LOSS: uni.loss, EVAL_ACCURACY: uni.accuracy,
            TUNI_ACCURACY: uni.accuracy, TPRIV_ACCURACY: float(hits.mean()) if len(tpriv) else float("nan")}
