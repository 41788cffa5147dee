"""How a section of the experiment config is declared: a dataclass with its rules beside it.

Every section of the config (``[train]``, ``[executor]``, ``[time.devices]``,
``[latent_distill]``, ...) is a dataclass that lives next to the code that reads it, in a
small ``settings`` module of that package (a leaf: importing it loads none of the code that reads the settings), and
:mod:`fedsim.config.schema` lists the sections. This module gives those dataclasses their
vocabulary:

* :func:`setting` declares a key: its default and one line of help. The help is what the
  configuration reference (``docs/configuration.md``) is generated from, so every key is
  explained in exactly one place.
* :class:`Section` is the base class: :meth:`Section.check` returns the problems of the
  section's own values, each worded by :func:`problem` (``key = value: what is allowed``).
  Rules that look at several sections belong to the module that owns the behaviour and are
  listed in :mod:`fedsim.config.validation`.
* A **tagged** section is one of several dataclasses, chosen by its ``kind`` key: for example
  ``[time.devices] kind = "lognormal"`` takes only the lognormal model's keys. :func:`kinds`
  declares such a field; each kind is a :class:`Section` subclass with a ``kind`` class
  attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

HELP = "help"  # field metadata: one line explaining the key
KINDS = "kinds"  # field metadata of a tagged section: kind name -> its dataclass


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 - the key's help text
            factory: Callable[[], Any] | None = None) -> Any:
    """A config key: its ``default`` (or a ``factory`` for lists and tables) and its ``help``."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={HELP: help})
    return dataclasses.field(default=default, metadata={HELP: help})


def kinds(options: dict[str, type[Section]], default: str, help: str = "") -> Any:  # noqa: A002
    """A tagged section: one of ``options`` (kind name -> dataclass), ``default`` unless set."""
    return dataclasses.field(default_factory=options[default], metadata={HELP: help, KINDS: options})


def problem(key: str, value: object, allowed: str) -> str:
    """One validation problem, worded the same everywhere: ``key = value: what is allowed``."""
    return f"{key} = {value!r}: {allowed}"


def problems(prefix: str, checks: Iterable[tuple[bool, str, object, str]]) -> list[str]:
    """The failed checks among ``(ok, key, value, allowed)``, keys prefixed with ``prefix.``."""
    return [problem(f"{prefix}.{key}" if prefix else key, value, allowed)
            for ok, key, value, allowed in checks if not ok]


class Section:
    """Base of a config section's dataclass.

    ``kind`` is set by the kinds of a tagged section (``""`` for a plain section).
    :meth:`check` is called with the section's dotted name (``"time.devices"``), so that every
    problem names the key as the user writes it.
    """

    kind: ClassVar[str] = ""

    def check(self, prefix: str) -> list[str]:
        """Problems with this section's own values (none by default)."""
        return []


def help_of(cls: type, name: str) -> str:
    """The help line of key ``name`` of a section class."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get(HELP, ""))
    raise KeyError(name)


def kind_options(f: dataclasses.Field) -> dict[str, type[Section]] | None:
    """The kinds of a tagged field (None for any other field)."""
    return f.metadata.get(KINDS)
