"""Client hooks: committee scores, eq. 6 ordering, confidences, augmentation, KD, composition, user hooks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fedsim.clients.client import LocalClient
from fedsim.clients.hooks import AugmentHook, HookContext, HookError, KDHook, LocalData, build_hook, build_hooks
from fedsim.clients.hooks.scoring import (
    CrucialHook,
    SelectHook,
    committee_scores,
    confidence,
    crucial_mask,
    proxy_scores,
    top_fraction,
)
from fedsim.clients.losses import kd_loss
from fedsim.clients.training import SGDRecipe
from fedsim.clients.worker import WorkerRun
from fedsim.config import ConfigError
from fedsim.config.validation import load_config
from fedsim.runs.experiment import run
from fedsim.runs.prepare import prepare
from fedsim.models import build_model


def context(model: torch.nn.Module | None = None, client_id: int = 3, peers=None) -> HookContext:  # noqa: ANN001
    model = model or build_model("lenet5", 4)
    return HookContext(seed=0, server_round=2, client_id=client_id, device=torch.device("cpu"),
                       global_model=model, normalize=lambda xb: xb.float() / 255.0,
                       build_model=lambda: build_model("lenet5", 4),
                       recipe=SGDRecipe(1, 8, 0.05, 0.9, 0.0), peers=peers or [])


def local_data(n: int = 40, classes: int = 4, seed: int = 0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return LocalData(images, torch.arange(n) % classes, classes)


def test_committee_scores_and_threshold_rules() -> None:
    votes = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=bool)
    scores = committee_scores(votes)
    assert scores.tolist() == [3, 2, 1, 0]
    assert crucial_mask(scores, theta=2, rule="lt").tolist() == [False, False, True, True]
    assert crucial_mask(scores, theta=2, rule="le").tolist() == [False, True, True, True]


def test_chunk_committee_marks_samples_and_reports() -> None:
    hook = CrucialHook(committee="chunks", k=4, theta=3, tiny_epochs=1)
    data = hook.prepare(local_data(), ctx := context())
    scores, mask = data.scores["crucial"], data.masks["crucial"]
    assert scores.min() >= 0 and scores.max() <= 4
    np.testing.assert_array_equal(mask, scores < 3)
    report = hook.report(ctx)
    assert report["committee_size"] == 4 and report["fraction"] == pytest.approx(mask.mean())
    again = CrucialHook(committee="chunks", k=4, theta=3, tiny_epochs=1).prepare(local_data(), context())
    np.testing.assert_array_equal(again.scores["crucial"], scores)  # deterministic given (seed, round, client)
    own_out = CrucialHook(committee="chunks", k=4, theta=3, tiny_epochs=1, leave_own_out=True)
    assert own_out.prepare(local_data(), ctx2 := context()).scores["crucial"].max() <= 3
    assert own_out.report(ctx2)["committee_size"] == 3


def test_peer_committee_with_leave_own_out() -> None:
    torch.manual_seed(0)
    peers = [(cid, build_model("lenet5", 4).state_dict()) for cid in (1, 3, 5)]
    ctx = context(client_id=3, peers=peers)
    hook = CrucialHook(committee="peers", k=10, theta=2, leave_own_out=True)
    data = hook.prepare(local_data(), ctx)
    report = hook.report(ctx)
    assert report["committee_size"] == 2.0  # client 3's own previous model does not vote
    assert data.scores["crucial"].max() <= 2
    assert report["fraction"] == pytest.approx(data.masks["crucial"].mean())
    assert sum(report[f"count_class{c}"] for c in range(4)) == report["count"]
    empty = CrucialHook(committee="peers").prepare(local_data(), context(peers=[]))
    assert not empty.masks["crucial"].any(), "no committee in round 1: nothing crucial"


def test_confidence_formulas() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    label = torch.tensor([1])
    assert float(confidence(probs, label, "cross_entropy")) == pytest.approx(-np.log(0.2))
    assert float(confidence(probs, label, "entropy")) == pytest.approx(-(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)))
    assert float(confidence(probs, label, "gini_simpson")) == pytest.approx(1 - (0.49 + 0.04 + 0.01))
    assert float(confidence(probs, label, "max_likelihood")) == pytest.approx(0.3)


def test_eq6_puts_all_misclassified_first_least_confident_first() -> None:
    probs = torch.tensor([
        [0.9, 0.1],   # label 0, correct, confident
        [0.6, 0.4],   # label 0, correct, unconfident
        [0.55, 0.45],  # label 1, wrong, unconfident (CE = -log .45)
        [0.95, 0.05],  # label 1, wrong, confident (CE = -log .05, larger)
    ])
    labels = torch.tensor([0, 0, 1, 1])
    g = proxy_scores(probs, labels, "corr_conf", "cross_entropy", 1e-6, np.random.default_rng(0))
    order = np.argsort(-g, kind="stable").tolist()
    # incorrect group first (larger cross-entropy first), then correct ones, least confident first
    assert order == [3, 2, 1, 0]
    assert (g[[2, 3]] >= 0).all() and (g[[0, 1]] < 0).all()
    assert top_fraction(g, 0.5).tolist() == [3, 2]
    assert len(top_fraction(g, 0.74)) == 2  # floor(rho * n)
    correctness = proxy_scores(probs, labels, "correctness", "cross_entropy", 1e-6, np.random.default_rng(0))
    assert set(np.argsort(-correctness)[:2]) == {2, 3}


def test_select_hook_subset_and_extra() -> None:
    data = SelectHook(rho=0.25, proxy="corr_conf").prepare(local_data(), ctx := context())
    assert len(data) == 10 and ctx.stats["select"]["fraction"] == pytest.approx(0.25)
    extra = SelectHook(rho=0.25, use="extra", extra_passes=2).prepare(local_data(), context())
    assert len(extra) == 40 + 2 * 10


def test_augment_copies_are_counted_and_deterministic() -> None:
    hook = AugmentHook(transform="affine", target="selected")
    base = local_data()
    base.masks["select"] = np.arange(40) % 4 == 0  # 10 targets
    out = hook.prepare(base, ctx := context())
    assert len(out) == 50 and out.masks["augmented"].sum() == 10 and ctx.stats["augment"]["copies"] == 10
    torch.testing.assert_close(out.labels[40:], base.labels[np.nonzero(base.masks["select"])[0]])
    again = AugmentHook(transform="affine", target="selected").prepare(
        LocalData(base.images, base.labels, 4, masks={"select": base.masks["select"]}), context())
    torch.testing.assert_close(out.images[40:], again.images[40:])
    assert not torch.equal(out.images[40:], base.images[np.nonzero(base.masks["select"])[0]]), "copies are transformed"
    base.masks["crucial"] = np.arange(40) < 7
    rand = AugmentHook(transform="flip_crop", target="random", random_like="crucial").prepare(base, context())
    assert rand.masks["augmented"].sum() == 7  # as many random samples as crucial ones
    with pytest.raises(RuntimeError, match="needs the 'crucial' hook listed before it"):
        AugmentHook(target="crucial").prepare(local_data(), context())


def test_kd_hook_loss_value() -> None:
    torch.manual_seed(0)
    teacher = build_model("lenet5", 4)
    hook = KDHook(alpha=0.25, temperature=2.0)
    ctx = context(model=teacher)
    hook.prepare(local_data(), ctx)
    xb = torch.randn(5, 3, 32, 32)
    yb = torch.tensor([0, 1, 2, 3, 0])
    student_logits = torch.randn(5, 4)
    base = F.cross_entropy(student_logits, yb)
    with torch.no_grad():
        expected = 0.75 * base + 0.25 * kd_loss(student_logits, teacher.eval()(xb), 2.0)
    torch.testing.assert_close(hook.loss(xb, yb, student_logits, base, ctx), expected)
    assert KDHook(alpha=0.0).loss(xb, yb, student_logits, base, ctx) is base


def test_bad_hooks_are_refused_clearly() -> None:
    with pytest.raises(HookError, match="unknown hook 'zap'; built-ins: crucial, select, augment, kd"):
        build_hook({"name": "zap"})
    with pytest.raises(HookError, match="hook 'crucial': theta = 11: must be an integer in 0..k"):
        build_hook({"name": "crucial", "k": 10, "theta": 11})
    with pytest.raises(HookError, match="hook 'augment': transform = 'cutmix': allowed: affine"):
        build_hook({"name": "augment", "transform": "cutmix"})
    with pytest.raises(HookError, match="hook 'kd': checkpoint = 'missing.pt': must be an existing"):
        build_hook({"name": "kd", "teacher": "checkpoint", "checkpoint": "missing.pt", "teacher_model": "lenet5"})
    with pytest.raises(HookError, match="hooks listed twice"):
        build_hooks([{"name": "select"}, {"name": "select"}])
    with pytest.raises(ConfigError, match="hook 'select' has no parameter.s. budget; allowed: rho"):
        load_config(None, ['hooks=[{name="select", budget=0.3}]'])


def test_kd_checkpoint_teacher_loads_safely(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    teacher = build_model("niid_cnn", 4)
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    hook = build_hook({"name": "kd", "alpha": 1.0, "teacher": "checkpoint", "checkpoint": str(path),
                       "teacher_model": "niid_cnn"})
    ctx = context()
    hook.prepare(local_data(), ctx)
    xb = torch.randn(3, 3, 32, 32)
    logits = torch.randn(3, 4)
    with torch.no_grad():
        expected = kd_loss(logits, teacher.eval()(xb), 4.0)
    torch.testing.assert_close(hook.loss(xb, torch.tensor([0, 1, 2]), logits, torch.tensor(9.0), ctx), expected)


def test_composed_and_user_hooks_in_the_training_loop(small_config) -> None:
    config = small_config(**{"hooks": [{"name": "user_hooks:KeepEvenLabels"},
                                       {"name": "select", "rho": 0.5},
                                       {"name": "augment", "target": "selected", "transform": "flip_crop"}],
                             "output.name": "hooked"})
    prepared = prepare(config)
    worker = WorkerRun.open(prepared.staging.resolve())
    client = LocalClient(2, worker)
    model = worker.model()
    labels = worker.y_train[worker.partition.train_of(2)]
    stats = client.fit(model, 1)
    even = int((labels % 2 == 0).sum())
    assert stats.hook_metrics["hook.keep_even.kept"] == even
    assert stats.hook_metrics["hook.select.count"] == even // 2
    assert stats.hook_metrics["hook.augment.copies"] == even // 2
    assert stats.num_examples == even // 2 + even // 2  # selected subset + one copy each


@pytest.mark.slow  # keeps the fast set under a minute
def test_hook_statistics_reach_the_run_directory(small_config) -> None:
    config = small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "output.name": "hookrun",
                             "hooks": [{"name": "crucial", "k": 3, "theta": 2, "tiny_epochs": 1},
                                       {"name": "augment", "target": "crucial"},
                                       {"name": "kd", "alpha": 0.5}]})
    result = run(config, progress=False)
    stats = pd.read_csv(result.path / "hooks.csv")
    assert list(stats.columns) == ["round", "client_id", "hook", "metric", "value"]
    fractions = stats[(stats["hook"] == "crucial") & (stats["metric"] == "fraction")]
    copies = stats[(stats["hook"] == "augment") & (stats["metric"] == "copies")]
    assert len(fractions) == 20 and fractions["value"].between(0, 1).all()
    counts = stats[(stats["hook"] == "crucial") & (stats["metric"] == "count")].set_index(["round", "client_id"])["value"]
    pd.testing.assert_series_equal(copies.set_index(["round", "client_id"])["value"], counts, check_names=False)
    train = result.clients[result.clients["phase"] == "train"].set_index(["round", "client_id"])
    assert (train["num_examples"] >= counts.reindex(train.index).values).all()


def test_select_waits_for_its_start_round() -> None:
    early = SelectHook(rho=0.25, start_round=3).prepare(local_data(), ctx := context())  # context: round 2
    assert len(early) == 40 and ctx.stats["select"]["fraction"] == 1.0
    on_time = SelectHook(rho=0.25, start_round=2).prepare(local_data(), context())
    assert len(on_time) == 10


def test_a_hook_needing_another_listed_first_is_a_config_error(small_config) -> None:
    """augment with target = "crucial" needs the crucial hook before it: refused before anything runs."""
    with pytest.raises(ConfigError, match="needs the 'crucial' hook listed before it"):
        small_config(**{"hooks": [{"name": "augment", "target": "crucial"}]})
    with pytest.raises(ConfigError, match="needs the 'select' hook"):
        small_config(**{"hooks": [{"name": "augment", "target": "random", "random_like": "selected"}]})
    small_config(**{"hooks": [{"name": "crucial"}, {"name": "augment", "target": "crucial"}]})  # accepted
