"""The vectorized engine (``engine.kind = "vectorized"``): lockstep training equals one by one.

Engine level: in float64, per-client weights, BatchNorm buffers, statistics and the round's
weighted mean agree with :func:`fedsim.clients.training.train` to rounding, for every listed
model, with unequal client sizes (partial last batches, a skipped single-sample batch), SGD
momentum, weight decay and FedProx's proximal term; dropout masks are the sequential engine's.
Run level: same tables as the sequential engine, fallbacks recorded, hooks, FedProx, DP
clipping and asynchronous rounds covered, memory and time limits enforced.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.clients import training
from fedsim.clients.lockstep.engine import LockstepClient, LockstepTrainer
from fedsim.clients.lockstep.memory import LockstepMemoryError, bytes_per_client, chunk_size
from fedsim.config import ConfigError
from fedsim.runs.experiment import run
from fedsim.models import build_model
from fedsim.core.recipe import SGDRecipe

RECIPE = SGDRecipe(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4, proximal_mu=0.01)
SIZES = (23, 40, 17, 31, 3)  # partial last batches of 7, 1 (skipped with BatchNorm), 7 and 3 samples


def _data(sizes: tuple[int, ...], dtype: torch.dtype, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=rng, dtype=dtype).to(device),
             torch.randint(0, 10, (n,), generator=rng).to(device)) for n in sizes]


def _both_engines(name: str, sizes: tuple[int, ...], recipe: SGDRecipe, dtype: torch.dtype,  # noqa: ANN202
                  device: str = "cpu"):
    """(sequential states, stats), (lockstep result) for the same clients from the same model."""
    torch.manual_seed(0)
    model = build_model(name, 10, 0, 3).to(device=device, dtype=dtype)
    data = _data(sizes, dtype, device)
    sequential = []
    for k, (x, y) in enumerate(data):
        local = copy.deepcopy(model)
        generator = training.seeded_generator(0, 1, k)
        stats = training.train(local, x, y, recipe, generator)  # dropout: training.dropout_generator(generator)
        sequential.append((local.state_dict(), stats))
    clients = []
    for k, (x, y) in enumerate(data):
        generator = training.seeded_generator(0, 1, k)
        clients.append(LockstepClient(x, y, model.state_dict(), generator))
    return sequential, LockstepTrainer(model, (3, 32, 32)).train(clients, recipe)


def _max_difference(sequential, lockstep) -> float:  # noqa: ANN001
    return max((state[n].double() - lockstep.states[k][n].double()).abs().max().item()
               for k, (state, _) in enumerate(sequential) for n in state)


def _weighted_mean(states: list[dict], weights: list[int]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {n: sum(s[n].double() * w for s, w in zip(states, weights)) / total
            for n in states[0] if states[0][n].is_floating_point()}


@pytest.mark.parametrize(("name", "tolerance"), [
    ("lenet5", 1e-12), ("niid_cnn", 1e-12),
    pytest.param("pfl_cnn", 1e-12, marks=pytest.mark.slow),  # dropout: the masks must be the sequential engine's
    pytest.param("resnet8", 1e-12, marks=pytest.mark.slow),  # BatchNorm buffers, partial batches
])
def test_lockstep_equals_sequential_in_float64(name: str, tolerance: float) -> None:
    sequential, lockstep = _both_engines(name, SIZES, RECIPE, torch.float64)
    assert _max_difference(sequential, lockstep) < tolerance
    for (_, expected), got in zip(sequential, lockstep.stats):
        assert (got.num_examples, got.steps) == (expected.num_examples, expected.steps)
        assert got.loss == pytest.approx(expected.loss, rel=1e-6) and got.accuracy == expected.accuracy
    weights = list(SIZES)
    mean_sequential = _weighted_mean([s for s, _ in sequential], weights)
    mean_lockstep = _weighted_mean(lockstep.states, weights)
    assert max((mean_sequential[n] - mean_lockstep[n]).abs().max().item() for n in mean_sequential) < tolerance
    # unequal sizes: a step per client and distinct batch size, never a padded batch
    assert lockstep.calls > max(s.steps for _, s in sequential)


@pytest.mark.slow  # keeps the fast set under a minute
def test_batchnorm_statistics_and_skipped_single_sample_batches_match() -> None:
    """resnet8's running statistics and batch counts per client: padded or skipped samples never enter them."""
    sequential, lockstep = _both_engines("resnet8", (17, 9), SGDRecipe(epochs=1, batch_size=8, lr=0.05), torch.float64)
    for k, (state, stats) in enumerate(sequential):
        for name in state:
            if "running" in name or "num_batches" in name:
                assert torch.allclose(state[name].double(), lockstep.states[k][name].double(), rtol=0, atol=1e-12)
        assert int(lockstep.states[k]["body.1.num_batches_tracked"]) == stats.steps  # 17 = 8 + 8 + 1 skipped
    assert [s.steps for s in lockstep.stats] == [2, 1]  # 9 = 8 + 1 skipped


@pytest.mark.slow
def test_mobilenet_v2_lockstep_equals_sequential_in_float64() -> None:
    """MobileNetV2's depthwise convolutions take another kernel under vmap: rounding, amplified by training."""
    recipe = SGDRecipe(epochs=1, batch_size=4, lr=0.005, momentum=0.9, weight_decay=5e-4)
    sequential, lockstep = _both_engines("mobilenet_v2", (9, 6, 3), recipe, torch.float64)
    assert _max_difference(sequential, lockstep) < 1e-10


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["lenet5", "pfl_cnn", "resnet8"])
def test_lockstep_equals_sequential_on_cuda(name: str) -> None:
    """On a GPU (dropout masks are drawn on the CPU from per-client generators by both engines)."""
    sequential, lockstep = _both_engines(name, SIZES, RECIPE, torch.float64, "cuda")
    assert _max_difference(sequential, lockstep) < 1e-10
    assert all(t.is_cuda for t in lockstep.states[0].values())


def test_lockstep_float32_is_close() -> None:
    sequential, lockstep = _both_engines("lenet5", SIZES, RECIPE, torch.float32)
    assert _max_difference(sequential, lockstep) < 1e-5


def test_chunk_size_follows_memory_and_cap_and_refuses_a_client_too_large() -> None:
    model = build_model("lenet5", 10, 0, 3)
    per_client = bytes_per_client(model, (3, 32, 32), RECIPE)
    params = sum(p.numel() * 4 for p in model.parameters())
    assert per_client > 5 * params  # weights, grads, momentum, anchor, copies + activations
    assert chunk_size(per_client, 100 * per_client, 0.5, 0, "lenet5") == 50
    assert chunk_size(per_client, 100 * per_client, 0.5, 8, "lenet5") == 8
    with pytest.raises(LockstepMemoryError, match=r"one lenet5 client needs about .* engine.lockstep_memory = 0.5"):
        chunk_size(per_client, per_client, 0.5, 0, "lenet5")


# ----------------------------------------------------------------------------------- runs


def _runs(small_config, name: str = "", **overrides):  # noqa: ANN001, ANN003, ANN202 - (sequential, vectorized)
    sequential = run(small_config(**overrides, **{"output.name": f"{name}sequential"}), progress=False)
    vectorized = run(small_config(**overrides, **{"output.name": f"{name}vectorized",
                                                  "engine.kind": "vectorized"}), progress=False)
    return sequential, vectorized


def _same_results(sequential, vectorized, rtol: float = 1e-5) -> None:  # noqa: ANN001
    for column in ("test_loss", "test_accuracy", "train_loss", "train_accuracy", "bytes_up"):
        np.testing.assert_allclose(vectorized.rounds[column], sequential.rounds[column], rtol=rtol, equal_nan=True)
    keys = ["round", "phase", "client_id"]
    a, b = sequential.clients.sort_values(keys), vectorized.clients.sort_values(keys)
    assert a[keys + ["status", "num_examples"]].equals(b[keys + ["status", "num_examples"]])
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=rtol, equal_nan=True)


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_vectorized_run_gives_the_sequential_runs_results_and_records_its_engine(small_config) -> None:
    sequential, vectorized = _runs(small_config, **{"train.rounds": 2})
    _same_results(sequential, vectorized)
    train = vectorized.clients[vectorized.clients["phase"] == "train"]
    assert set(train["engine"]) == {"vectorized"}
    assert vectorized.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]
    assert set(sequential.clients.loc[sequential.clients["phase"] == "train", "engine"]) == {"sequential"}
    assert sequential.rounds["clients_vectorized"].iloc[1:].tolist() == [0, 0]


@pytest.mark.slow  # keeps the fast set under a minute
def test_fedprox_and_hooks_train_in_lockstep_like_one_by_one(small_config) -> None:
    hooks = [{"name": "augment", "transform": "flip_crop", "mode": "online"}, {"name": "kd", "alpha": 0.5}]
    sequential, vectorized = _runs(small_config, **{"train.rounds": 2, "strategy.name": "fedprox",
                                                    "strategy.kwargs.proximal_mu": 0.1, "hooks": hooks})
    _same_results(sequential, vectorized, rtol=1e-4)
    assert vectorized.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]
    hooks_seq, hooks_vec = (pd.read_csv(r.path / "hooks.csv") for r in (sequential, vectorized))
    # mean KD losses are ~1e-4 (differences of nearly equal logits): float32 rounding of the two
    # engines' logits shows at ~1e-6 absolutely
    np.testing.assert_allclose(hooks_vec["value"], hooks_seq["value"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # keeps the fast set under a minute
def test_prepare_hooks_select_data_per_client_in_lockstep(small_config) -> None:
    hooks = [{"name": "crucial", "committee": "chunks", "k": 2, "theta": 1}, {"name": "select", "rho": 0.5}]
    sequential, vectorized = _runs(small_config, **{"train.rounds": 1, "hooks": hooks})
    _same_results(sequential, vectorized, rtol=1e-4)
    assert vectorized.rounds["clients_vectorized"].iloc[1] == 10


@pytest.mark.slow  # keeps the fast set under a minute
def test_unvectorizable_clients_fall_back_and_the_reason_is_recorded(small_config, tmp_path, monkeypatch) -> None:
    (tmp_path / "optout_hooks.py").write_text(
        "class PerSample:\n    vectorizable = False\n    def transform_batch(self, xb, ctx):\n        return xb\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, vectorized = _runs(small_config, **{"train.rounds": 1, "hooks": [{"name": "optout_hooks:PerSample"}]})
    engines = vectorized.clients.loc[vectorized.clients["phase"] == "train", "engine"]
    assert set(engines) == {"sequential: a hook opts out of lockstep (vectorizable = False)"}
    assert vectorized.rounds["clients_vectorized"].iloc[1] == 0


@pytest.mark.slow  # keeps the fast set under a minute
def test_mixed_architectures_group_by_architecture_and_a_lone_client_falls_back(small_config) -> None:
    # latent-distill with three architectures: every client falls back (its local work has several phases)
    _, distill = _runs(small_config, **{"train.rounds": 1, "strategy.name": "latent-distill",
                                        "model.representation_dim": 16, "latent_distill.transfer_size": 120,
                                        "model.architectures": ["lenet5", "niid_cnn", "lenet5"]})
    engines = distill.clients.loc[distill.clients["phase"] == "train", "engine"]
    assert set(engines) == {"sequential: latent-distill trains in several phases"}
    # weight exchange with one client per round: alone on its worker, it trains sequentially
    _, single = _runs(small_config, "single-", **{"train.rounds": 1, "train.clients_per_round": 1})
    assert single.clients.loc[single.clients["phase"] == "train", "engine"].tolist() == [
        "sequential: no other client of its architecture and recipe on its worker this round"]


@pytest.mark.slow  # keeps the fast set under a minute
def test_chunks_capped_by_lockstep_clients_give_the_same_results(small_config) -> None:
    _, whole = _runs(small_config, **{"train.rounds": 1})
    capped = run(small_config(**{"train.rounds": 1, "engine.kind": "vectorized",
                                 "engine.lockstep_clients": 3, "output.name": "capped"}), progress=False)
    _same_results(whole, capped, rtol=1e-6)
    assert capped.rounds["clients_vectorized"].iloc[1] == 10


def test_a_chunk_that_does_not_fit_fails_its_clients_with_the_reason(small_config) -> None:
    from fedsim.errors import RunError

    with pytest.raises(RunError) as error:
        run(small_config(**{"train.rounds": 1, "engine.kind": "vectorized",
                            "engine.lockstep_memory": 1e-12}), progress=False)
    message = str(error.value)
    assert "only 0 of 10 sampled clients succeeded" in message
    assert "LockstepMemoryError: one lenet5 client needs about" in message
    assert "engine.lockstep_memory = 1e-12 of the" in message


@pytest.mark.slow  # keeps the fast set under a minute
def test_dp_clipping_applies_per_client_to_lockstep_results(small_config) -> None:
    sequential, vectorized = _runs(small_config, **{
        "train.rounds": 2, "strategy.name": "dp-fixed-client", "strategy.kwargs.noise_multiplier": 0.0,
        "strategy.kwargs.clipping_norm": 0.05, "evaluation.federated_every": 0})
    _same_results(sequential, vectorized)
    assert vectorized.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("engine.kind", "vmap", "allowed: sequential, vectorized"),
    ("engine.lockstep_clients", -1, "must be an integer >= 0"),
    ("engine.lockstep_memory", 1.5, "must be a fraction of free device memory in (0, 1]"),
    ("engine.compile", True, "compiles the lockstep step: set engine.kind = 'vectorized'"),
])
def test_bad_engine_settings_are_refused(small_config, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        small_config(**{key: value})


def test_the_vectorized_engine_needs_a_worker_that_hosts_many_clients(small_config) -> None:
    with pytest.raises(ConfigError, match="executor 'flower' runs one client per node"):
        small_config(**{"engine.kind": "vectorized", "executor.kind": "flower"})


@pytest.mark.slow  # keeps the fast set under a minute
def test_vectorized_results_do_not_depend_on_the_number_of_cohort_workers(small_config) -> None:
    """Each worker trains its shard in lockstep; a client's result does not depend on its chunk-mates."""
    from test_cohort import run_on_cohort

    overrides = {"train.rounds": 2, "engine.kind": "vectorized", "evaluation.federated_every": 0}
    tables = {}
    for workers in (1, 3):
        rounds, clients, _, _, _ = run_on_cohort(small_config(**overrides, **{"output.name": f"w{workers}"}), workers)
        assert rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]
        tables[workers] = (rounds.drop(columns=["wall_seconds"]), clients.drop(columns=["seconds"]))
    pd.testing.assert_frame_equal(tables[1][0], tables[3][0])
    pd.testing.assert_frame_equal(tables[1][1], tables[3][1])


@pytest.mark.slow  # keeps the fast set under a minute
def test_asynchronous_rounds_group_clients_by_the_model_version_they_start_from(small_config) -> None:
    overrides = {"time.devices.kind": "tiers", "train.rounds": 3, "train.clients_per_round": 6,
                 "evaluation.federated_every": 0, "strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3}
    sequential, vectorized = _runs(small_config, **overrides)
    _same_results(sequential, vectorized)
    np.testing.assert_allclose(vectorized.rounds["staleness_mean"], sequential.rounds["staleness_mean"])
    train = vectorized.clients[vectorized.clients["phase"] == "train"]
    assert (train["engine"] == "vectorized").sum() >= 6  # the first cohort starts from one model


@pytest.mark.slow  # torch.compile takes 10-30 s on CPU the first time
def test_a_compiled_lockstep_step_gives_the_eager_results_and_reports_its_compile_time(small_config) -> None:
    overrides = {"train.rounds": 2, "train.batch_size": 10, "partition.scheme": "iid", "data.synthetic_train": 500,
                 "evaluation.federated_every": 0, "engine.kind": "vectorized"}
    eager = run(small_config(**overrides, **{"output.name": "eager"}), progress=False)
    compiled = run(small_config(**overrides, **{"output.name": "compiled", "engine.compile": True}), progress=False)
    np.testing.assert_allclose(compiled.rounds["test_loss"], eager.rounds["test_loss"], rtol=1e-4)
    compile_seconds = compiled.rounds["compile_seconds"].tolist()
    assert compile_seconds[1] > 0.5 and compile_seconds[2] == 0, "compiled once, reused in the next round"
    assert (eager.rounds["compile_seconds"].iloc[1:] == 0).all()


@pytest.mark.ray
def test_vectorized_engine_on_ray_cohort_workers_matches_in_process(small_config) -> None:
    overrides = {"train.rounds": 2, "engine.kind": "vectorized", "evaluation.federated_every": 0}
    reference = run(small_config(**overrides, **{"output.name": "reference", "executor.kind": "in-process"}),
                    progress=False)
    on_ray = run(small_config(**overrides, **{"output.name": "ray", "executor.kind": "cohort",
                                              "executor.workers": 2}), progress=False)
    pd.testing.assert_frame_equal(on_ray.rounds.drop(columns="wall_seconds"), reference.rounds.drop(columns="wall_seconds"),
                                  check_exact=False, rtol=1e-6)
    assert on_ray.rounds["clients_vectorized"].iloc[1:].tolist() == [10, 10]


@pytest.mark.slow  # waits out a 10 s chunk limit
def test_a_hung_client_in_a_lockstep_chunk_fails_alone(small_config) -> None:
    """The chunk's limit (10 clients x 1 s) expires; its clients retrain one by one and only the stuck one fails."""
    import time

    from test_cohort import hung_client_config

    started = time.perf_counter()
    result = run(hung_client_config(small_config, **{"engine.kind": "vectorized"}), progress=False)
    assert time.perf_counter() - started < 60, "the run did not wait for the stuck client"
    train = result.clients[result.clients["phase"] == "train"]
    failed = train[train["status"] == "failed"]
    assert failed["client_id"].tolist() == [3]
    assert "exceeded executor.client_timeout = 1 s" in failed["error"].iloc[0]
    ok = train[train["status"] == "ok"]
    assert set(ok["engine"]) == {"sequential: its lockstep chunk exceeded executor.client_timeout x its size"}
    assert result.rounds["clients_succeeded"].iloc[-1] == 9


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_client_raising_in_a_lockstep_chunk_fails_alone(small_config, tmp_path, monkeypatch) -> None:
    (tmp_path / "raising_hooks.py").write_text(
        "class RaiseFor:\n    def __init__(self, client=0):\n        self.client = client\n"
        "    def prepare(self, data, ctx):\n        if ctx.client_id == self.client:\n"
        "            raise RuntimeError('bad data')\n        return data\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(small_config(**{"train.rounds": 1, "engine.kind": "vectorized", "evaluation.federated_every": 0,
                                 "hooks": [{"name": "raising_hooks:RaiseFor", "client": 2}]}), progress=False)
    train = result.clients[result.clients["phase"] == "train"]
    assert train.loc[train["status"] == "failed", "client_id"].tolist() == [2]
    assert "RuntimeError: bad data" in train.loc[train["status"] == "failed", "error"].iloc[0]
    assert set(train.loc[train["status"] == "ok", "engine"]) == {
        "sequential: its lockstep chunk raised (see the worker's log)"}


@pytest.mark.slow  # keeps the fast set under a minute
def test_the_summary_counts_the_clients_each_engine_trained(small_config) -> None:
    _, vectorized = _runs(small_config, **{"train.rounds": 2, "evaluation.federated_every": 0})
    assert vectorized.summary["engine"] == "vectorized"
    assert vectorized.summary["trained_by_engine"] == {"vectorized": 20}
    assert vectorized.summary["compile_seconds"] == 0.0
