"""Reading a config: TOML files and ``section.key=value`` overrides, names and types checked.

Every value goes through :func:`set_value`, which walks the schema by the dotted key: a
section (``train``), a nested section (``time.policy``), a tagged section whose ``kind`` picks
its dataclass (``time.devices.kind``), a table of keyword arguments (``strategy.kwargs.mu``)
and finally a value, checked against the field's type. A key that does not exist is refused
with the keys that do and, where the name exists elsewhere, where it belongs; an old key name
(:mod:`fedsim.config.renamed`) is set under its new name with a one-line warning. Value rules
(ranges, allowed names, how sections combine) are :mod:`fedsim.config.validation`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from fedsim.inputs import InputFileError, read_document
from fedsim.settings import Section, kind_options

from .renamed import KIND_SHORTHANDS, RENAMED, RenamedKeyWarning
from .schema import ConfigError, ExperimentConfig, is_section

# ----------------------------------------------------------------------------- the schema, walked


def _fields(section: Section | type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section)}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def key_index() -> dict[str, list[str]]:
    """Every key's last name -> the dotted keys that have it (all kinds of tagged tables included)."""
    index: dict[str, list[str]] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            name = f"{prefix}.{f.name}" if prefix else f.name
            options = kind_options(f)
            if options is not None:
                index.setdefault("kind", []).append(f"{name}.kind")
                for kind_cls in options.values():
                    walk(kind_cls, name)
            elif is_section(f):
                walk(f.default_factory, name)  # type: ignore[arg-type]
            elif name not in index.setdefault(f.name, []):
                index[f.name].append(name)

    walk(ExperimentConfig, "")
    return {key: sorted(set(paths)) for key, paths in index.items()}


def _section_label(prefix: str) -> str:
    return f"[{prefix}]" if prefix else "the top level"


def _unknown(dotted: str, prefix: str, section: Section, name: str,
             kinds: dict[str, type[Section]] | None = None) -> ConfigError:
    """The error for ``name`` not being a key of ``section``: what it has, and where ``name`` is.

    ``kinds``: the options of a tagged section (``section`` is one of them): a key of another
    kind is named with the kind that has it.
    """
    fields = _fields(section)
    allowed = (["kind"] if kinds else []) + list(fields)
    where = [path for path in key_index().get(name, []) if path != dotted]
    owners = [kind for kind, cls in (kinds or {}).items() if name in _fields(cls)]
    hint = ""
    if owners:
        hint = f"; {name} is a key of kind {' or '.join(repr(k) for k in owners)} (set {prefix}.kind)"
    elif where:
        hint = f"; {name} belongs in {' or '.join(where[:4])}"
    else:
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    kind = f" (kind {section.kind!r})" if kinds else ""
    return ConfigError(f"unknown config key {dotted!r}: {_section_label(prefix)}{kind} has the keys "
                       f"{', '.join(allowed)}{hint}")


# ----------------------------------------------------------------------------- values


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: must be a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} = {value!r}: must be a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: must be a string")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: must be a list")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: must be a table of keyword arguments")
        return dict(value)
    if annotation is Any:
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error


def current_name(dotted: str, value: Any = None) -> str:
    """The key's current name, with a one-line warning when ``dotted`` is an old name.

    ``value`` tells ``time.devices.kind = "tiers"`` (the old one-word kind) from the new table.
    """
    new = RENAMED.get(dotted)
    if new is None:
        return dotted
    if dotted in KIND_SHORTHANDS and isinstance(value, dict):
        return dotted  # the new table itself, not the old one-word kind
    warnings.warn(f"config key {dotted} is deprecated: use {new}", RenamedKeyWarning, stacklevel=4)
    return new


def set_value(config: ExperimentConfig, dotted_key: str, value: Any) -> None:
    """Set ``dotted_key`` (``section.key``, ``time.devices.kind``, ``strategy.kwargs.name``) on ``config``.

    Names and types are checked; a key set under an old name is renamed with a warning; setting a
    tagged section's ``kind`` switches it to that kind's dataclass, keeping the values of the keys
    both kinds have.
    """
    key = current_name(dotted_key, value)
    legacy = key != dotted_key
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"config key {dotted_key!r}: keys look like 'section.key'")
    section: Section = config
    prefix = ""
    kinds = None  # the options when ``section`` is one kind of a tagged table (its ``kind`` picks the dataclass)
    # walk the schema name by name: sections (a tagged one as its current kind), then the value or a table entry
    for i, name in enumerate(parts):
        here = f"{prefix}.{name}" if prefix else name
        if name == "kind" and kinds and i == len(parts) - 1:
            _switch_kind(config, prefix, value)
            return
        fields = _fields(section)
        if name not in fields:
            if legacy:  # an old key of another kind than the one chosen: it never applied
                warnings.warn(f"config key {dotted_key} ({key}) is ignored: {_section_label(prefix)} is of kind "
                              f"{section.kind!r}, which has no {name}", RenamedKeyWarning, stacklevel=3)
                return
            if not prefix:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"unknown config section {name!r} (in {dotted_key!r}); keys look like 'section.key' "
                                  f"with section one of: {', '.join(fields)}{hint}")
            raise _unknown(key, prefix, section, name, kinds)
        f = fields[name]
        last = i == len(parts) - 1
        if is_section(f):
            if last:
                raise ConfigError(f"{key} is a table of settings ([{key}]); set one of its keys, e.g. "
                                  f"{key}.{next(iter(_fields(getattr(section, name))), 'kind')}")
            section, prefix, kinds = getattr(section, name), here, kind_options(f)
            continue
        annotation = _hints(type(section))[name]
        if last:
            setattr(section, name, _coerce(key, value, annotation))
            return
        if typing.get_origin(annotation) is dict and i == len(parts) - 2:  # strategy.kwargs.<argument>
            getattr(section, name)[parts[-1]] = value
            return
        raise ConfigError(f"unknown config key {dotted_key!r}: {here} is a single value, not a table")


def _switch_kind(config: ExperimentConfig, prefix: str, kind: Any) -> None:
    """``<prefix>.kind = kind``: the tagged section at ``prefix`` becomes that kind."""
    *path, name = prefix.split(".")
    parent: Section = config
    for part in path:
        parent = getattr(parent, part)
    options = kind_options(_fields(parent)[name])
    assert options is not None, f"{prefix} is not a tagged section"
    if not isinstance(kind, str) or kind not in options:
        raise ConfigError(f"{prefix}.kind = {kind!r}: allowed: {', '.join(options)}")
    current = getattr(parent, name)
    if current.kind == kind:
        return
    fresh = options[kind]()
    for key in _fields(fresh):
        if hasattr(current, key):
            setattr(fresh, key, getattr(current, key))
    setattr(parent, name, fresh)


# ----------------------------------------------------------------------------- files and overrides


def _entries(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of a parsed TOML document, a table's ``kind`` before its other keys.

    Tables become dotted keys down to the schema's values; a table-valued key (``strategy.kwargs``)
    or a list of tables (``hooks``) is one value.
    """
    def is_kind(key: str, value: Any) -> bool:
        dotted = f"{prefix}.{key}" if prefix else key
        return key == "kind" or (dotted in KIND_SHORTHANDS and isinstance(value, str))

    ordered = sorted(raw.items(), key=lambda item: not is_kind(*item))
    out: list[tuple[str, Any]] = []
    for key, value in ordered:
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not _is_value_table(dotted):
            out += _entries(value, dotted)
        else:
            out.append((dotted, value))
    return out


def _is_value_table(dotted: str) -> bool:
    """Whether a table at ``dotted`` is one value (a dict-typed key, such as ``strategy.kwargs``)."""
    section: Any = ExperimentConfig
    for name in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(section)} if dataclasses.is_dataclass(section) else {}
        f = fields.get(name)
        if f is None:
            return False
        if is_section(f):
            options = kind_options(f)
            section = next(iter(options.values())) if options else f.default_factory
            continue
        annotation = _hints(section if isinstance(section, type) else type(section))[name]
        return typing.get_origin(annotation) is dict
    return False


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build a config from a nested dict (a parsed TOML file), checking names and types."""
    config = ExperimentConfig()
    for key, value in _entries(raw):
        if "." not in key and key not in ("seed", "hooks"):
            if key in _fields(config):
                raise ConfigError(f"[{key}] must be a table of settings, got {value!r}")
            raise ConfigError(f"unknown config section or key {key!r}; allowed: {', '.join(_fields(config))}")
        set_value(config, key, value)
    return config


def read_config(path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML file (or start from defaults) and apply overrides; names and types checked.

    Value rules are not checked here: :func:`fedsim.config.validation.load_config` does both.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = read_document(Path(path), "config file")
        except InputFileError as err:  # missing, a folder, not UTF-8, not TOML: the file and the place named
            raise ConfigError(str(err)) from err
    config = from_dict(raw)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_value(config, key, value)
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as TOML, bare words as strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw_value = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return key, value
