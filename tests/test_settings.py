"""Settings owned by their modules: sections, tagged tables, renamed keys, the generated reference, the plan."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import warnings
from pathlib import Path

import pandas as pd
import pytest
import tomli_w

import fedsim.runs.plan as plan_module
from fedsim.config import ConfigError, ExperimentConfig, RenamedKeyWarning, read_config, set_value
from fedsim.config.parse import key_index
from fedsim.config.reference import BEGIN, END, reference
from fedsim.config.renamed import KIND_SHORTHANDS, RENAMED
from fedsim.config.validation import load_config, validate
from fedsim.core.sampling import sample_size
from fedsim.settings import HELP
from fedsim.strategies import build_strategy
from fedsim.timing.settings import LognormalDevices, TierDevices

ROOT = Path(__file__).resolve().parents[1]

# every renamed key with a value of its type (a kind shorthand names a kind)
OLD_VALUES = {
    "simulation.num_cpus_per_client": 2.0, "simulation.num_gpus_per_client": 0.0, "simulation.device": "cpu",
    "simulation.ray_num_cpus": 2, "simulation.ray_address": "", "simulation.node_wait": 30.0,
    "simulation.executor": "in-process", "simulation.workers": 2, "simulation.round_timeout": 60.0,
    "simulation.client_timeout": 5.0, "simulation.streaming": False, "simulation.min_success_fraction": 0.25,
    "simulation.fail_clients": [3], "simulation.engine": "vectorized", "simulation.lockstep_clients": 4,
    "simulation.lockstep_memory": 0.25, "simulation.compile": False,
    "time.deadline": 2.0, "time.over_selection": 0.2, "time.train_dropped": True,
    "time.concurrency": 3,
    **{f"distill.{k}": v for k, v in {
        "transfer_size": 64, "transfer_classes": [1], "transfer_dataset": "", "transfer_path": "", "teacher": "server",
        "teacher_epochs": 2, "lambda_ce": 0.5, "lambda_kd": 0.5, "lambda_rep": 0.5, "temperature": 2.0, "tau": 2.0,
        "digest_epochs": 2, "digest_batch_size": 16, "digest_lr": 0.1, "tpriv_size": 50}.items()},
}
# keys of one kind of a tagged table: (kind key, kind, key, value)
OLD_KIND_VALUES = [
    ("time.devices", "lognormal", "time.seconds_per_sample", 0.01), ("time.devices", "lognormal", "time.download_mbps", 8.0),
    ("time.devices", "lognormal", "time.upload_mbps", 2.0), ("time.devices", "lognormal", "time.latency", 0.1),
    ("time.devices", "lognormal", "time.compute_sigma", 0.2), ("time.devices", "lognormal", "time.network_sigma", 0.3),
    ("time.devices", "tiers", "time.round_jitter", 0.1),
    ("time.devices", "tiers", "time.tiers", ["fast"]), ("time.devices", "tiers", "time.tier_weights", [1.0]),
    ("time.devices", "file", "time.devices_file", "devices.csv"),
    ("time.availability", "bernoulli", "time.availability_p", 0.5),
    ("time.availability", "daily", "time.daily_on_hours", 6.0), ("time.availability", "daily", "time.daily_period_hours", 12.0),
    ("time.availability", "trace", "time.trace_file", "trace.csv"), ("time.availability", "trace", "time.trace_period", 60.0),
]


def get(config: ExperimentConfig, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_every_renamed_key_is_covered_and_names_an_existing_key() -> None:
    covered = set(OLD_VALUES) | {old for _, _, old, _ in OLD_KIND_VALUES} | set(KIND_SHORTHANDS)
    assert covered == set(RENAMED), "each renamed key has a case here"
    keys = {path for paths in key_index().values() for path in paths}
    assert set(RENAMED.values()) <= keys, sorted(set(RENAMED.values()) - keys)


@pytest.mark.parametrize("old", sorted(OLD_VALUES))
def test_an_old_key_loads_with_one_warning_naming_the_new_key(old: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = read_config(None, {old: OLD_VALUES[old]})
    renamed = [w for w in caught if issubclass(w.category, RenamedKeyWarning)]
    assert len(renamed) == 1 and str(renamed[0].message) == f"config key {old} is deprecated: use {RENAMED[old]}"
    assert "\n" not in str(renamed[0].message)
    assert get(config, RENAMED[old]) == OLD_VALUES[old]


@pytest.mark.parametrize(("kind_key", "kind", "old", "value"), OLD_KIND_VALUES)
def test_an_old_key_of_a_tagged_table_lands_in_its_kind(kind_key: str, kind: str, old: str, value: object) -> None:
    with pytest.warns(RenamedKeyWarning, match=f"use {RENAMED[old]}"):
        config = read_config(None, {kind_key: kind, old: value})
    assert get(config, RENAMED[kind_key]) == kind and get(config, RENAMED[old]) == value
    with pytest.warns(RenamedKeyWarning, match=f"{old} .* is ignored: .* which has no"):  # it never applied there
        read_config(None, {old: value})


def test_an_old_config_file_gives_the_same_config_as_the_new_one(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text('''seed = 3
[simulation]
executor = "in-process"
num_cpus_per_client = 2.0
fail_clients = [1]
engine = "vectorized"
min_success_fraction = 0.3
[time]
deadline = 2.5
devices = "lognormal"
seconds_per_sample = 0.004
availability = "daily"
daily_on_hours = 10.0
[distill]
temperature = 3.0
''')
    new = tmp_path / "new.toml"
    new.write_text('''seed = 3
[runtime]
num_cpus_per_client = 2.0
[executor]
kind = "in-process"
[engine]
kind = "vectorized"
[faults]
fail_clients = [1]
[train]
min_success_fraction = 0.3
[time.devices]
seconds_per_sample = 0.004
kind = "lognormal"
[time.availability]
kind = "daily"
on_hours = 10.0
[time.policy]
deadline = 2.5
[latent_distill]
temperature = 3.0
''')
    with pytest.warns(RenamedKeyWarning):
        from_old = load_config(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedKeyWarning)  # the new file uses no old name
        from_new = load_config(new)
    assert from_old.to_dict() == from_new.to_dict()
    assert isinstance(from_new.time.devices, LognormalDevices) and from_new.time.devices.seconds_per_sample == 0.004


def test_a_tagged_table_takes_only_its_kinds_keys_and_switches_kind_keeping_shared_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'time.devices.tiers': \[time.devices\] \(kind "
                                          r"'lognormal'\) has the keys kind, compute_sigma.*; tiers is a key of kind "
                                          r"'tiers' \(set time.devices.kind\)"):
        read_config(None, {"time.devices.kind": "lognormal", "time.devices.tiers": ["fast"]})
    with pytest.raises(ConfigError, match=r"time.devices.kind = 'phone': allowed: none, lognormal, tiers, file"):
        read_config(None, {"time.devices.kind": "phone"})
    config = read_config(None, {"time.devices.kind": "lognormal", "time.devices.compute_sigma": 0.1,
                                "time.devices.seconds_per_sample": 0.01})
    set_value(config, "time.devices.kind", "tiers")  # an override switching kind
    assert isinstance(config.time.devices, TierDevices) and config.time.devices.compute_sigma == 0.1
    with pytest.raises(ConfigError, match="is a table of settings"):
        set_value(config, "time.policy", 3)


@pytest.mark.parametrize(("key", "message"), [
    ("executor.compile", "compile belongs in engine.compile"),
    ("train.streaming", "streaming belongs in executor.streaming"),
    ("runtime.deadline", "deadline belongs in time.policy.deadline"),
    ("train.learning_rate", r"\[train\] has the keys mode, rounds"),
    ("trian.rounds", "unknown config section 'trian'.*did you mean train"),
    ("latent_distill.temprature", "did you mean latent_distill.temperature"),
])
def test_an_unknown_or_misplaced_key_names_where_it_belongs(key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_config(None, {key: 1})


def test_every_key_has_help_and_the_written_config_reads_back(tmp_path: Path) -> None:
    def walk(cls: type, prefix: str):  # noqa: ANN202
        for f in dataclasses.fields(cls):
            name = f"{prefix}.{f.name}" if prefix else f.name
            options = f.metadata.get("kinds")
            if options:
                for kind_cls in options.values():
                    yield from walk(kind_cls, name)
            elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                yield from walk(f.default_factory, name)
            else:
                yield name, f.metadata.get(HELP, "")

    keys = dict(walk(ExperimentConfig, ""))
    assert len(keys) > 90 and not [k for k, text in keys.items() if len(text) < 10], "every key explains itself"
    config = read_config(None, {"time.devices.kind": "tiers", "time.availability.kind": "bernoulli",
                                "strategy.name": "fedprox", "strategy.kwargs.proximal_mu": 0.1, "hooks": [{"name": "select", "rho": 0.5}]})
    path = tmp_path / "config.toml"
    path.write_bytes(tomli_w.dumps(config.to_dict()).encode())  # as a run directory records it
    raw = tomllib.loads(path.read_text())
    assert raw["time"]["devices"]["kind"] == "tiers" and raw["time"]["availability"] == {"kind": "bernoulli", "p": 0.8}
    assert load_config(path).to_dict() == config.to_dict()


def test_the_configuration_page_holds_the_generated_reference() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    generated = page[page.index(BEGIN):page.index(END) + len(END)] + "\n"
    assert generated == reference(), "regenerate it: .venv/bin/python -m fedsim.config.reference docs/configuration.md"
    for key in ("time.devices.seconds_per_sample", "executor.streaming", "latent_distill.temperature",
                "faults.fail_clients", "engine.compile", "simulation.executor"):
        assert f"`{key}`" in generated


def test_validation_returns_the_plan_every_derived_value_comes_from(small_config, monkeypatch) -> None:  # noqa: ANN001
    from fedsim import run

    config = small_config(**{"train.rounds": 2, "train.clients_per_round": 4, "evaluation.clients_per_eval": 3,
                             "strategy.name": "dp-fixed-server", "strategy.kwargs.noise_multiplier": 0.01,
                             "strategy.kwargs.clipping_norm": 10.0, "output.name": "derived"})
    plan = validate(config)
    assert (plan.clients_per_round, plan.clients_per_eval, plan.strategy.name) == (4, 3, "dp-fixed-server")
    assert plan.recipe.lr == config.train.lr and plan.strategy.stream_key is None and not plan.strategy.asynchronous
    sizes, builds = [], []
    monkeypatch.setattr(plan_module, "sample_size", lambda *a: sizes.append(a) or sample_size(*a))
    monkeypatch.setattr(plan_module, "build_strategy", lambda *a, **k: builds.append(a[0]) or build_strategy(*a, **k))
    result = run(config, progress=False)
    assert len(sizes) == 2, "clients per round and per evaluation, derived once (the plan)"
    assert builds == ["dp-fixed-server", "dp-fixed-server"], "built once to check it, once for the run"
    assert result.rounds.loc[1:, "clients_sampled"].tolist() == [4, 4]
    assert result.summary["dp_sampling_rate"] == pytest.approx(0.4)


def test_fault_injection_travels_in_the_run_spec_not_in_messages(small_config) -> None:
    from fedsim.runs.prepare import prepare

    plan = prepare(small_config(**{"faults.fail_clients": [2, 5], "output.name": "faults"}))
    spec = json.loads((plan.staging / "spec.json").read_text())
    assert spec["behaviours"] == [{"name": "fail", "clients": [2, 5], "params": {}}]
    from fedsim.runs.server import round_loop

    loop = round_loop(plan, plan.strategy.build(), None, [], None)  # type: ignore[arg-type]
    assert set(loop.task_config) == {"fedsim.run-dir", "fedsim.client-timeout"}, "nothing about faults on the wire"


def as_written_before_the_reshape(folder: Path) -> None:
    """Turn a run directory into what an earlier fedsim wrote: old key names in ``config.toml``, a
    format-1 checkpoint (the scheduler's state as the last round extension's), a spec without
    per-client behaviour (fault injection then travelled in every message)."""
    def flat(table: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in table.items():
            dotted = f"{prefix}.{key}" if prefix else key
            out.update(flat(value, dotted) if isinstance(value, dict) and key != "kwargs" else {dotted: value})
        return out

    old_name = {new: old for old, new in RENAMED.items()}
    raw: dict = {}
    for key, value in flat(tomllib.loads((folder / "config.toml").read_text())).items():
        *parents, last = old_name.get(key, key).split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / "config.toml").write_bytes(tomli_w.dumps(raw).encode())
    spec = json.loads((folder / "spec.json").read_text())
    del spec["behaviours"]
    (folder / "spec.json").write_text(json.dumps(spec))
    state_file = folder / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    extensions = state["extensions"]["__dict__"]
    extensions.append([f"{len(extensions)}:AsynchronousScheduler", state.pop("scheduler")])
    state["format"] = 1
    state_file.write_text(json.dumps(state))


@pytest.mark.slow  # two runs; keeps the fast set under a minute
def test_a_run_started_by_an_earlier_fedsim_resumes_to_the_same_results(small_config) -> None:  # noqa: ANN001
    from fedsim import resume, run
    from fedsim.ops.interrupt import RunInterrupted
    from interrupting import StopAfter, same_results

    settings = {"time.devices.kind": "tiers", "strategy.name": "fedbuff", "strategy.kwargs.buffer_size": 3,
                "train.clients_per_round": 6, "train.rounds": 4, "evaluation.federated_every": 0,
                "faults.fail_clients": [7]}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "earlier"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(2)])
    folder = Path(config.output.dir) / "earlier.interrupted"
    as_written_before_the_reshape(folder)
    assert "[simulation]" in (folder / "config.toml").read_text()
    with pytest.warns(RenamedKeyWarning, match="config key simulation.executor is deprecated: use executor.kind"):
        result = resume(folder, progress=False, extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
    failed = result.clients[result.clients["status"] == "failed"]
    assert set(failed["client_id"]) == {7}, "the old config's fault injection still reaches the client"


def test_a_run_s_setting_is_read_under_its_name_or_an_old_one() -> None:
    from fedsim.outputs.results import RunResult

    empty = pd.DataFrame()
    new = RunResult(Path("."), empty, empty, empty, {}, {"time": {"policy": {"deadline": 3.0}}})
    old = RunResult(Path("."), empty, empty, empty, {}, {"time": {"deadline": 2.0, "devices": "tiers"}})
    assert new.setting("time.policy.deadline") == 3.0 and old.setting("time.policy.deadline") == 2.0
    assert old.setting("time.devices.kind") == "tiers" and new.setting("time.devices.kind", "none") == "none"


def test_a_run_made_with_other_random_streams_is_not_resumed_when_it_draws_from_them(small_config) -> None:  # noqa: ANN001
    """fedsim 0.2.0 draws augmentation and dropout from per-client generators: an earlier run that
    used them is refused (naming both versions) and left as it was; one that did not resumes."""
    import json

    from fedsim import resume, run
    from fedsim.errors import InputError
    from fedsim.ops.interrupt import RunInterrupted, clear_stop
    from interrupting import StopAfter

    config = small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "output.name": "augmented",
                             "hooks": [{"name": "augment", "transform": "flip_crop", "mode": "online"}]})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    clear_stop()  # a resume would clear it; this one is refused first
    folder = Path(config.output.dir) / "augmented.interrupted"
    spec = json.loads((folder / "spec.json").read_text())
    assert (spec["fedsim_version"], spec["random_streams"]) == ("0.2.0", 2)
    del spec["fedsim_version"], spec["random_streams"]  # as fedsim 0.1.0 wrote it
    (folder / "spec.json").write_text(json.dumps(spec))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=r"run by fedsim 0\.1\.0 \(random streams 1\); this fedsim 0\.2\.0 "
                                         r"\(random streams 2\) draws the augment hook's parameters differently"):
        resume(folder, progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
