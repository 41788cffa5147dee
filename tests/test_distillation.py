"""latent-distill: loss terms, consensus, client-state store, transfer set, T_priv, config errors, e2e."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.clients.client import LocalClient
from fedsim.clients.distill import distill_round
from fedsim.clients.losses import distillation_loss, kd_loss, representation_loss
from fedsim.clients.state import ClientStateStore, adopt_unnamespaced
from fedsim.clients.worker import WorkerRun
from fedsim.config import ConfigError
from fedsim.config.validation import load_config
from fedsim.datasets import PartitionError, check_disjoint, holdout_transfer, tpriv_indices
from fedsim.runs.experiment import run
from fedsim.runs.prepare import prepare
from fedsim.strategies import consensus


def test_kd_loss_is_t_squared_kl_batchmean() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    t = 2.0
    expected = 0.0
    for zs, zt in zip(student, teacher):
        ps, pt = torch.softmax(zs / t, 0), torch.softmax(zt / t, 0)
        expected += float((pt * (pt.log() - ps.log())).sum())
    expected = expected / 2 * t**2
    assert float(kd_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)


def test_representation_loss_scales_by_one_over_tau_squared() -> None:
    rs = torch.tensor([[1.0, 2.0]])
    rt = torch.tensor([[0.0, 0.0]])
    assert float(representation_loss(rs, rt, tau=1.0)) == pytest.approx((1 + 4) / 2)
    assert float(representation_loss(rs, rt, tau=0.5)) == pytest.approx(4 * (1 + 4) / 2)


def test_distillation_loss_switches_terms() -> None:
    zs, rs = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    zt, rt, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    ce = float(torch.nn.functional.cross_entropy(zs, y))
    kd = float(kd_loss(zs, zt, 4.0))
    rep = float(representation_loss(rs, rt, 1.0))
    both = distillation_loss(zs, rs, zt, rt, y, lambda_ce=0.5, lambda_kd=2.0, lambda_rep=3.0, temperature=4.0, tau=1.0)
    assert float(both) == pytest.approx(0.5 * ce + 2.0 * kd + 3.0 * rep, rel=1e-6)
    assert float(distillation_loss(zs, rs, zt, rt, y, 0, 0, 1.0)) == pytest.approx(rep)
    assert float(distillation_loss(zs, None, zt, None, None, 0, 1.0, 0, temperature=4.0)) == pytest.approx(kd)
    with pytest.raises(ValueError, match="lambda_rep > 0 needs representations"):
        distillation_loss(zs, None, zt, None, None, 0, 0, 1.0)
    with pytest.raises(ValueError, match="lambda_ce > 0 needs labels"):
        distillation_loss(zs, rs, zt, rt, None, 1.0, 0, 0)


def test_consensus_is_the_unweighted_mean() -> None:
    a = ArrayRecord({"logits": Array(np.array([[1.0, 3.0]], np.float32)), "reps": Array(np.array([[0.0]], np.float32))})
    b = ArrayRecord({"logits": Array(np.array([[3.0, 5.0]], np.float32)), "reps": Array(np.array([[2.0]], np.float32))})
    mean = consensus([a, b])
    np.testing.assert_allclose(mean["logits"].numpy(), [[2.0, 4.0]])
    np.testing.assert_allclose(mean["reps"].numpy(), [[1.0]])


def test_client_state_store_round_trip_with_a_namespace_per_method(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path, "method_a")
    assert store.load(3) is None and store.loads == 0
    store.save(3, {"w": torch.ones(2)})
    torch.testing.assert_close(store.load(3)["w"], torch.ones(2))
    assert store.loads == 1 and store.stored_clients() == [3]
    assert store.path(3) == tmp_path / "client_state" / "method_a" / "3.pt"
    assert not list(store.folder.glob("*.tmp")), "writes are atomic"
    other = ClientStateStore(tmp_path, "method_b")
    assert other.load(3) is None and other.stored_clients() == [], "methods never see each other's state"


def test_state_written_before_namespaces_is_adopted_by_its_method(tmp_path: Path) -> None:
    folder = tmp_path / "client_state"
    folder.mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "4.pt")  # a run started by an earlier fedsim
    assert adopt_unnamespaced(folder, "latent_distill") == 1
    assert ClientStateStore(tmp_path, "latent_distill").stored_clients() == [4]
    assert adopt_unnamespaced(folder, "latent_distill") == 0, "nothing left to move"


def test_transfer_holdout_and_tpriv() -> None:
    labels = np.arange(1000) % 10
    transfer = holdout_transfer(labels, 100, seed=0, classes=[8, 9])
    assert len(transfer) == 100 and set(labels[transfer]) <= {8, 9}
    with pytest.raises(PartitionError, match="transfer set overlaps client 1's private data"):
        check_disjoint([np.array([0, 1]), transfer[:3]], transfer)
    with pytest.raises(PartitionError, match="only 200 training samples"):
        holdout_transfer(labels, 300, seed=0, classes=[8, 9])
    test_labels = np.repeat(np.arange(4), 250)
    counts = np.array([300, 100, 0, 100])
    tpriv = tpriv_indices(test_labels, counts, size=100, seed=0, client_id=2)
    assert np.bincount(test_labels[tpriv], minlength=4).tolist() == [60, 20, 0, 20]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.architectures": ["lenet5", "niid_cnn@16"], "model.representation_dim": 32},
         "mismatched representation widths [16, 32]"),
        ({"model.architectures": ["lenet5", "vgg99"], "model.representation_dim": 32},
         "unknown architecture 'vgg99'"),
        ({"strategy.name": "fedavg", "model.architectures": ["lenet5", "niid_cnn"]},
         "need strategy latent-distill; 'fedavg' averages weights"),
        ({"model.representation_dim": 0}, "latent_distill.lambda_rep = 1.0: the representation loss needs model.representation_dim > 0"),
        ({"latent_distill.teacher": "oracle"}, "latent_distill.teacher = 'oracle': allowed: consensus, server"),
        ({"latent_distill.transfer_size": 0}, "latent_distill.transfer_size = 0: must be >= 1"),
    ],
)
def test_bad_distillation_configs(overrides: dict, message: str) -> None:
    base = {"strategy.name": "latent-distill", "model.representation_dim": 16}
    with pytest.raises(ConfigError) as info:
        load_config(None, {**base, **overrides})
    assert message in str(info.value)


def distill_config(small_config, **extra):
    return small_config(**{"strategy.name": "latent-distill", "model.representation_dim": 16,
                           "model.architectures": ["lenet5", "niid_cnn"], "latent_distill.transfer_size": 120,
                           "partition.min_partition_size": 5, **extra})


def test_client_state_persists_and_only_sampled_clients_load(small_config) -> None:
    prepared = prepare(distill_config(small_config, **{"output.name": "unit"}))
    worker = WorkerRun.open(prepared.staging.resolve())
    assert worker.spec.architecture_of(0) == "lenet5" and worker.spec.architecture_of(1) == "niid_cnn"
    _, outputs = distill_round(LocalClient(1, worker), ArrayRecord(), 1, True)
    assert outputs["logits"].numpy().shape == (120, 10) and outputs["reps"].numpy().shape == (120, 16)
    store = worker.state_store("latent_distill")
    assert store.stored_clients() == [1] and store.loads == 0
    saved = store.load(1)
    model = worker.client_model(1, "latent_distill")  # loads client 1's state, not a fresh model
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value.cpu(), saved[key])  # the store keeps CPU tensors; the model may be on CUDA
    loads = store.loads
    distill_round(LocalClient(1, worker), outputs, 2, True)
    assert store.loads == loads + 1 and store.stored_clients() == [1]


@pytest.mark.slow  # keeps the fast set under a minute
def test_two_architectures_end_to_end_with_consensus_and_teacher(small_config) -> None:
    config = distill_config(small_config, **{"train.rounds": 2, "train.fraction_train": 0.5,
                                             "output.name": "consensus"})
    result = run(config, progress=False)
    rounds = result.rounds.set_index("round")
    assert rounds.loc[1, "bytes_down"] == 0, "round 1 has no consensus to send"
    payload = 120 * (10 + 16) * 4  # logits + reps, float32 (+ a .npy header per array in Flower's count)
    assert 5 * payload <= rounds.loc[1, "bytes_up"] <= 5 * (payload + 300)
    assert 5 * payload <= rounds.loc[2, "bytes_down"]
    assert rounds[["test_accuracy", "tpriv_accuracy", "consensus_accuracy"]].notna().all().all()
    evaluated = result.clients[result.clients["phase"] == "evaluate"]
    assert len(evaluated) == 20 and evaluated["tpriv_accuracy"].between(0, 1).all()
    trained = set(result.clients.loc[result.clients["phase"] == "train", "client_id"])
    stored = sorted(int(p.stem) for p in (result.path / "client_state" / "latent_distill").glob("*.pt"))
    assert stored == sorted(trained), "only sampled clients' models are stored"
    assert pd.read_csv(result.path / "partition_counts.csv", index_col=0).to_numpy().sum() == 600 - 120

    teacher = run(distill_config(small_config, **{"train.rounds": 1, "latent_distill.teacher": "server",
                                                  "latent_distill.teacher_epochs": 3, "output.name": "teacher"}),
                  progress=False)
    assert 0 <= teacher.summary["teacher_test_accuracy"] <= 1
    assert teacher.rounds.set_index("round").loc[1, "bytes_up"] == 0, "with a teacher clients send nothing"
    assert math.isfinite(teacher.summary["final_tpriv_accuracy"])


def test_transfer_set_from_another_dataset(small_config, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "public.npz", x_train=rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(300) % 20, x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(20))
    config = distill_config(small_config, **{"latent_distill.transfer_dataset": "npz",
                                             "latent_distill.transfer_path": str(tmp_path / "public.npz"),
                                             "latent_distill.transfer_size": 100, "output.name": "public"})
    prepared = prepare(config)
    split = np.load(prepared.staging / "partition.npz")
    assert split["train_indices"].size + split["val_indices"].size == 600  # nothing held out
    worker = WorkerRun.open(prepared.staging.resolve())
    x, _ = worker.transfer_set()
    assert x.shape == (100, 3, 32, 32)
    _, outputs = distill_round(LocalClient(0, worker), ArrayRecord(), 1, True)
    assert outputs["logits"].numpy().shape == (100, 10)
    with pytest.raises(ConfigError, match="use teacher = 'consensus'"):
        distill_config(small_config, **{"latent_distill.transfer_dataset": "synthetic", "latent_distill.teacher": "server"})
    with pytest.raises(ConfigError, match="latent_distill.transfer_dataset = 'imagenet': allowed"):
        distill_config(small_config, **{"latent_distill.transfer_dataset": "imagenet"})
