"""The configuration reference, generated from the schema: every key, its default and its help.

Each key is declared once, with its help, next to the code that reads it
(:func:`fedsim.settings.setting`); this module turns the schema into the tables of
``docs/configuration.md``, between the markers :data:`BEGIN` and :data:`END`, so the page cannot
drift from the code (a test compares them). Regenerate it with::

    .venv/bin/python -m fedsim.config.reference docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from fedsim.settings import HELP, kind_options

from .renamed import RENAMED
from .schema import ExperimentConfig, is_section

BEGIN = "<!-- generated from the schema by fedsim.config.reference: do not edit by hand -->"
END = "<!-- end of the generated reference -->"


def _markdown(text: str) -> str:
    """A docstring's first line in Markdown: RST roles and double backticks become code spans."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text.replace("``", "`"))


def _summary(cls: type) -> str:
    return _markdown((cls.__doc__ or "").strip().splitlines()[0])


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value: Any = f.default_factory()  # type: ignore[misc]
    else:
        value = f.default
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, dict):
        text = "{}" if not value else repr(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]"
    else:
        text = repr(value)
    return f"`{text}`"


def _rows(cls: type, prefix: str) -> list[str]:
    rows = []
    for f in dataclasses.fields(cls):
        if is_section(f):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        rows.append(f"| `{key}` | {_default(f)} | {f.metadata.get(HELP, '')} |")
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| key | default | meaning |", "|---|---|---|", *rows, ""]


def _section(cls: type, name: str, level: int) -> list[str]:
    """The reference of one section (and its nested sections, a level deeper)."""
    lines = [f"{'#' * level} `[{name}]`", "", _summary(cls), ""]
    rows = _rows(cls, name)
    if rows:
        lines += _table(rows)
    for f in dataclasses.fields(cls):
        if not is_section(f):
            continue
        child = f"{name}.{f.name}"
        options = kind_options(f)
        if options is None:
            lines += _section(f.default_factory, child, level + 1)  # type: ignore[arg-type]
            continue
        default = f.default_factory().kind  # type: ignore[misc]
        lines += [f"{'#' * (level + 1)} `[{child}]`", "", f.metadata.get(HELP, ""), "",
                  f"A tagged table: `kind` (default `\"{default}\"`) chooses one of the kinds below, and the "
                  "table takes only that kind's keys.", ""]
        for kind, kind_cls in options.items():
            lines += [f"- `kind = \"{kind}\"`: {_summary(kind_cls)}"]
        lines.append("")
        for kind, kind_cls in options.items():
            rows = _rows(kind_cls, child)
            if rows:
                lines += [f"Keys of `kind = \"{kind}\"`:", "", *_table(rows)]
    return lines


def reference() -> str:
    """The generated part of ``docs/configuration.md``."""
    lines = [BEGIN, "", "### Top level", "", *_table(_rows(ExperimentConfig, ""))]
    for f in dataclasses.fields(ExperimentConfig):
        if is_section(f):
            lines += _section(f.default_factory, f.name, 3)  # type: ignore[arg-type]
    lines += ["### Renamed keys", "",
              "Keys of earlier versions still load, with a one-line warning naming the new key:", "",
              "| old key | new key |", "|---|---|",
              *[f"| `{old}` | `{new}` |" for old, new in RENAMED.items()], "", END]
    return "\n".join(lines) + "\n"


def rewrite(page: Path) -> bool:
    """Put the current reference between the markers of ``page``; return whether it changed."""
    text = page.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    new = text[:start] + reference() + text[end:]
    if new != text:
        page.write_text(new)
    return new != text


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")
    print(f"{target}: {'updated' if rewrite(target) else 'already current'}")
