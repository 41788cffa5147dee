"""Config loading and validation: every bad value is refused with field, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import ConfigError, ExperimentConfig, parse_override
from fedsim.config.validation import load_config, validate, validate_against_dataset


def test_defaults_are_valid_and_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[train]\nrounds = 7\nlr = 1\n[model]\nname = "resnet8"\n')
    config = load_config(path, ["train.batch_size=8", "partition.alpha=0.1", "data.classes=[3, 5]",
                                "strategy.kwargs.weighted_by_key=num-examples"])
    assert config.seed == 3 and config.train.rounds == 7
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 8 and config.partition.alpha == 0.1
    assert config.data.classes == [3, 5] and config.model.name == "resnet8"
    assert config.strategy.kwargs == {"weighted_by_key": "num-examples"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("partition.alpha=0", "partition.alpha = 0.0: must be > 0"),
        ("partition.alpha=-1", "partition.alpha = -1.0: must be > 0"),
        ("partition.scheme=zipf", "partition.scheme = 'zipf': allowed: iid, dirichlet"),
        ("partition.num_clients=0", "partition.num_clients = 0: must be >= 1"),
        ("partition.val_fraction=1.0", "partition.val_fraction = 1.0: must be in [0, 1)"),
        ("train.fraction_train=0", "train.fraction_train = 0.0: must be in (0, 1]"),
        ("train.fraction_train=1.5", "train.fraction_train = 1.5: must be in (0, 1]"),
        ("train.clients_per_round=11", "train.clients_per_round = 11: must be <= partition.num_clients (10)"),
        ("train.rounds=0", "train.rounds = 0: must be >= 1"),
        ("train.lr=0", "train.lr = 0.0: must be > 0"),
        ("train.momentum=1", "train.momentum = 1.0: must be in [0, 1)"),
        ("train.batch_size=0", "train.batch_size = 0: must be >= 1"),
        ("train.local_epochs=-2", "train.local_epochs = -2: must be >= 1"),
        ("model.name=vgg99", "model.name = 'vgg99': allowed: niid_cnn"),
        ("model.representation_dim=-4", "model.representation_dim = -4: must be >= 0"),
        ("strategy.name=fedfoo", "strategy.name = 'fedfoo': allowed: fedavg, uniform, ema"),
        ("data.dataset=mnist", "data.dataset = 'mnist': allowed: synthetic, cifar10, cifar100, npz"),
        ("data.dataset=npz", "dataset 'npz' needs data.path"),
        ("data.classes=[3, 3]", "data.classes = [3, 3]: class ids must be distinct"),
        ("data.classes=[3]", "keep at least 2 classes"),
        ("runtime.device=tpu", "runtime.device = 'tpu': allowed: 'auto', 'cpu', 'cuda'"),
        ("runtime.num_gpus_per_client=-0.5", "runtime.num_gpus_per_client = -0.5: must be >= 0"),
        ("train.min_success_fraction=0", "train.min_success_fraction = 0.0: must be in (0, 1]"),
        ("faults.fail_clients=[10]", "faults.fail_clients = [10]: client ids must be in 0..9"),
        ("executor.client_timeout=-1", "executor.client_timeout = -1.0: must be a finite number of seconds >= 0"),
        ("executor.round_timeout=inf", "executor.round_timeout = inf: must be a finite number"),
        ("executor.round_timeout=0", "executor.round_timeout = 0.0: must be a finite number of seconds > 0"),
        ("output.checkpoint_every=-2", "output.checkpoint_every = -2: must be >= 0"),
        ("seed=4294967296", "seed = 4294967296: must be an integer in 0..4294967295"),
        ("runtime.num_cpus_per_client=4096", "runtime.num_cpus_per_client = 4096.0: this machine gives Ray"),
        ("runtime.num_gpus_per_client=1", "runtime.num_gpus_per_client = 1.0: this machine has 0 visible GPU"),
        ("executor.workers=-2", "executor.workers = -2: must be >= 0"),
        ("executor.kind=ray", "executor.kind = 'ray': allowed: cohort, flower, in-process"),
        ("output.format=xlsx", "output.format = 'xlsx': allowed: csv, parquet"),
        ("output.name=a/b", "output.name = 'a/b': must be a plain directory name"),
        ("evaluation.federated_every=-1", "evaluation.federated_every = -1: must be >= 0"),
        ("seed=-1", "seed = -1: must be an integer in 0..4294967295"),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.rounds=2.5", "train.rounds = 2.5: must be an integer"),
        ("train.lr=fast", "train.lr = 'fast': must be a number"),
        ("output.figures=1", "output.figures = 1: must be true or false"),
        ("train.epochs=3", "unknown config key 'train.epochs': [train] has the keys mode, rounds"),
        ("optimizer.lr=3", "unknown config section 'optimizer' (in 'optimizer.lr')"),
        ("data.classes=3", "data.classes = 3: must be a list"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_types_and_keys_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr=-1", "partition.alpha=0"])
    assert "train.lr = -1.0" in str(info.value) and "partition.alpha = 0.0" in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nrounds = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trian]\nrounds = 3\n")
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*did you mean train"):
        load_config(unknown)


def test_dataset_dependent_checks() -> None:
    config = ExperimentConfig()
    config.partition.num_clients = 50
    with pytest.raises(ConfigError, match="partition.num_clients = 50: must be <= the 40 training samples"):
        validate_against_dataset(validate(config), num_train=40, num_classes=10)
    config.partition.num_clients = 10
    config.partition.scheme = "dirichlet-per-client"
    config.partition.samples_per_client = 300
    with pytest.raises(ConfigError, match="samples_per_client = 300: x 10 clients exceeds the 2000"):
        validate_against_dataset(validate(config), num_train=2000, num_classes=10)
    config.partition.scheme = "shards"
    config.partition.classes_per_client = 3
    with pytest.raises(ConfigError, match="classes_per_client = 3: must be <= the dataset's 2 classes"):
        validate_against_dataset(validate(config), num_train=2000, num_classes=2)


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("train.lr=0.5") == ("train.lr", 0.5)
    assert parse_override("model.name=resnet8") == ("model.name", "resnet8")
    assert parse_override('output.name="x y"') == ("output.name", "x y")
    assert parse_override("data.classes=[1,2]") == ("data.classes", [1, 2])


def test_run_modes_are_checked() -> None:
    with pytest.raises(ConfigError, match="train.mode = 'async': allowed: federated, one-shot, centralized"):
        load_config(None, ["train.mode=async"])
    with pytest.raises(ConfigError, match="one-shot mode aggregates exactly once: set train.rounds = 1"):
        load_config(None, ["train.mode=one-shot", "train.rounds=3"])
    with pytest.raises(ConfigError, match="one-shot mode trains every client"):
        load_config(None, ["train.mode=one-shot", "train.rounds=1", "train.fraction_train=0.5"])
    assert load_config(None, ["train.mode=one-shot", "train.rounds=1"]).train.mode == "one-shot"
