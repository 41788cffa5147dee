"""Property tests of fedsim's front door: whatever a user writes is loaded or refused clearly.

Hypothesis generates config documents (random text, random bytes, and tables of fedsim's real
sections and keys with random values written by ``tomli_w``), ``--set`` override strings, and
device and trace files (random bytes, random CSVs over the real column names). The properties:
a config either loads or raises :class:`ConfigError`; a data file is either returned as a
checked table or refused with the reader's error naming the file. Any other exception is a bug.

The runs are derandomized and keep no example database, so every run (and CI) tries the same
examples; ``max_examples`` keeps the whole file to a few seconds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.config import ConfigError, ExperimentConfig
from fedsim.config.parse import key_index, parse_override, read_config
from fedsim.config.renamed import RENAMED
from fedsim.config.validation import load_config
from fedsim.inputs import InputFileError
from fedsim.settings import kind_options
from fedsim.timing.availability import TraceError, read_trace
from fedsim.timing.devices import PROFILE_COLUMNS, DeviceError, read_device_file

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KEYS = sorted({path for paths in key_index().values() for path in paths} | set(RENAMED))
SECTIONS = sorted({key.split(".")[0] for key in KEYS} | {"time.devices", "time.availability", "time.policy"})
# words the schema knows, so that random documents reach past the type checks into the rules
WORDS = ["file", "tiers", "lognormal", "none", "trace", "daily", "bernoulli", "always", "fedavg", "fedprox",
         "fedbuff", "scaffold", "latent_distill", "cohort", "in-process", "npz", "synthetic", "cifar10", "lenet5",
         "resnet18", "dirichlet", "iid", "federated", "centralized", "fast", "slow", "crucial", "kd", "augment",
         "/nonexistent.csv", ".", ""]
HOOK_NAMES = ["crucial", "select", "augment", "kd", "nosuch", ":Hook", ".:Hook", "..relative:Hook",
              "fedsim_no_such_module:Hook", "fedsim.errors:InputError", "fedsim.errors:"]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=10),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | st.sampled_from(WORDS), inner, max_size=3), max_leaves=6)
hooks = st.lists(st.fixed_dictionaries({"name": st.sampled_from(HOOK_NAMES)},
                                       optional={"weight": values, "epochs": values, "p": values}), max_size=2)
keys = st.one_of(st.sampled_from(KEYS), st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(SECTIONS),
                                                  st.text(max_size=6)), st.text(max_size=8))


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; a key whose table is already a value is left out."""
    document: dict[str, Any] = {}
    for dotted, value in flat.items():
        *tables, name = dotted.split(".")
        here = document
        for table in tables:
            here = here.setdefault(table, {})
            if not isinstance(here, dict):
                break
        else:
            here.setdefault(name, value)
    return document


def _annotation(dotted: str) -> Any:
    """The declared type of the schema key ``dotted`` (a tagged table's key: of the kind that has it)."""
    cls: Any = ExperimentConfig
    *tables, name = dotted.split(".")
    for table in tables:
        f = {f.name: f for f in dataclasses.fields(cls)}[table]
        options = kind_options(f)
        cls = f.default_factory if options is None else next(
            (kind for kind in options.values() if name in {g.name for g in dataclasses.fields(kind)}),
            next(iter(options.values())))
    return typing.get_type_hints(cls).get(name, Any)


def _typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the key's own type (small, extreme and boundary ones), so that documents reach the rules."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-2, max_value=40) | st.sampled_from([2**31, 2**63 - 1, -(2**63)])
    if annotation is float:
        return st.sampled_from([0.0, 1.0, 0.5, -1.0, 1e-300, 1e300]) | st.floats(min_value=-2, max_value=1e6)
    if annotation is str:
        return st.sampled_from(WORDS) | st.text(max_size=6)
    if origin is list:
        return st.lists(_typed(typing.get_args(annotation)[0]), max_size=4)
    if origin is dict or annotation is dict:  # strategy.kwargs: a strategy's keyword arguments
        return st.dictionaries(st.sampled_from(["mu", "buffer_size", "eta", "server_lr", "beta_1", "tau",
                                                "momentum", "alpha"]) | st.text(max_size=4), scalars, max_size=3)
    return values


TYPED_KEYS = [k for k in KEYS if k not in RENAMED and k != "hooks" and not k.endswith(".kind")]
KIND_KEYS = {"time.devices.kind": ["none", "lognormal", "tiers", "file"],
             "time.availability.kind": ["always", "bernoulli", "daily", "trace"]}
typed_entries = st.one_of(
    *(st.tuples(st.just(k), _typed(_annotation(k))) for k in TYPED_KEYS),
    *(st.tuples(st.just(k), st.sampled_from(options)) for k, options in KIND_KEYS.items()),
)
documents = st.builds(lambda entries, flat: _nested({**dict(entries), **flat}),
                      st.lists(typed_entries, max_size=6), st.dictionaries(keys, values, max_size=2)).flatmap(
    lambda document: st.builds(lambda h: {**document, **({"hooks": h} if h else {})}, hooks))
toml_lines = st.lists(st.one_of(
    st.sampled_from([f"[{s}]" for s in SECTIONS] + ["[[hooks]]", "[strategy.kwargs]"]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from([k.split(".")[-1] for k in KEYS]) | st.text(max_size=6),
              st.sampled_from(["1", "-1", "0.5", "nan", "inf", "true", '"file"', '"tiers"', "[1, 2]", '"x"', "{}",
                               "1979-05-27", "'''", '"\\u0000"']) | st.text(max_size=6)),
    st.text(max_size=12)), max_size=8).map("\n".join)


def _loads_or_config_error(load) -> ExperimentConfig | None:  # noqa: ANN001
    """Call ``load``; a :class:`ConfigError` with a message is the only failure allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old key names warn; that is not what these tests check
        try:
            return load()
        except ConfigError as err:
            assert str(err).strip(), "a ConfigError must say what is wrong"
            return None


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# -- (a) config files -----------------------------------------------------------------------------

@FUZZ
@given(document=documents)
def test_any_config_table_loads_or_raises_config_error(tmp_path_factory, document) -> None:
    path = _write(tmp_path_factory.mktemp("cfg"), "config.toml", tomli_w.dumps(document).encode())
    config = _loads_or_config_error(lambda: load_config(path))
    assert config is None or isinstance(config, ExperimentConfig)
    _loads_or_config_error(lambda: read_config(path))


@FUZZ
@given(text=toml_lines | st.text(max_size=60))
def test_any_config_text_loads_or_raises_config_error(tmp_path_factory, text) -> None:
    path = _write(tmp_path_factory.mktemp("cfg"), "config.toml", text.encode("utf-8", "surrogatepass"))
    _loads_or_config_error(lambda: load_config(path))
    _loads_or_config_error(lambda: read_config(path))


@FUZZ
@given(data=st.binary(max_size=80))
def test_any_config_bytes_load_or_raise_config_error_naming_the_file(tmp_path_factory, data) -> None:
    path = _write(tmp_path_factory.mktemp("cfg"), "config.toml", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_config(path)
        except ConfigError as err:
            if "TOML" in str(err) or "UTF-8" in str(err):
                assert str(path) in str(err)


# -- (b) --set overrides --------------------------------------------------------------------------

overrides = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=12) | st.sampled_from(WORDS)),
    st.builds(lambda k, v: f"{k}={tomli_w.dumps({'v': v})[4:].strip()}", keys, values),
)


@FUZZ
@given(texts=st.lists(overrides, min_size=1, max_size=3))
def test_any_override_loads_or_raises_config_error(texts) -> None:
    for text in texts:
        try:
            key, _ = parse_override(text)
        except ConfigError:
            assert "=" not in text
        else:
            assert isinstance(key, str)
    _loads_or_config_error(lambda: load_config(None, texts))


# -- (c) the device file and the availability trace -------------------------------------------------

CELLS = st.one_of(st.sampled_from(["0", "1", "2", "0.5", "-1", "1e400", "nan", "inf", "fast", "", " 3 ", "1.0",
                                   "99999999999999999999", "phone", '"4"', "0x10"]),
                  st.text(max_size=5))


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    return ("\n".join(",".join(cells) for cells in [header, *rows]) + "\n").encode("utf-8", "surrogatepass")


def _table_bytes(columns: list[str]) -> st.SearchStrategy[bytes]:
    header = st.lists(st.sampled_from(columns) | st.text(max_size=4), min_size=1, max_size=len(columns) + 1)
    return st.one_of(
        st.binary(max_size=60),
        header.flatmap(lambda h: st.lists(st.lists(CELLS, min_size=len(h), max_size=len(h)), max_size=4)
                       .map(lambda rows: _csv(h, rows))),
        st.lists(st.lists(CELLS, max_size=7), max_size=4).map(lambda rows: _csv(list(columns), rows)),
    )


def _refused_naming(err: InputFileError, path: Path) -> None:
    assert err.path == path and str(path) in str(err), str(err)


DEVICE_COLUMNS = [*PROFILE_COLUMNS, "client_id", "device", "weight"]


@FUZZ
@given(data=_table_bytes(DEVICE_COLUMNS))
def test_any_device_file_is_a_checked_table_or_refused_naming_the_file(tmp_path_factory, data) -> None:
    path = _write(tmp_path_factory.mktemp("dev"), "devices.csv", data)
    try:
        frame = read_device_file(path)
    except DeviceError as err:
        _refused_naming(err, path)
        return
    values = frame[list(PROFILE_COLUMNS)].to_numpy(np.float64)
    assert len(frame) and np.isfinite(values).all() and (values[:, :3] > 0).all() and (values[:, 3] >= 0).all()
    assert ("client_id" in frame) != ("device" in frame)


@FUZZ
@given(data=_table_bytes(["client_id", "start", "end"]), period=st.sampled_from([0.0, 1.0, 50.0]))
def test_any_trace_is_a_checked_table_or_refused_naming_the_file(tmp_path_factory, data, period) -> None:
    path = _write(tmp_path_factory.mktemp("trace"), "trace.csv", data)
    try:
        frame = read_trace(path, period)
    except TraceError as err:
        _refused_naming(err, path)
        return
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["client_id", "start", "end"]
    assert pd.api.types.is_integer_dtype(frame["client_id"]) and (frame["client_id"] >= 0).all()
    start, end = frame["start"].to_numpy(), frame["end"].to_numpy()
    assert len(frame) and (start >= 0).all() and (start < end).all() and all(map(math.isfinite, end))
    assert period == 0 or (end <= period).all()
