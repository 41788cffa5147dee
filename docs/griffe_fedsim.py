"""Griffe extension for the API reference: fedsim's package layout and its docstrings' roles.

Not a page of the site (``mkdocs.yml`` excludes ``*.py`` from it); mkdocstrings loads it while
building. It does two things, both at build time and without importing fedsim:

* **Layout.** The import package ``fedsim`` spans four top-level folders: ``fedsim/`` itself,
  and ``clients/``, ``strategies/`` and ``datasets/`` as ``fedsim.clients``,
  ``fedsim.strategies`` and ``fedsim.datasets`` (``setup.py``'s ``ROOTS``). Griffe reads source
  folders as they lie, so after it has read ``fedsim/`` this attaches the other folders as
  subpackages of ``fedsim``. The mapping is read from ``setup.py`` itself, so the two cannot
  drift apart.
* **Roles.** Docstrings use Sphinx roles (``:class:`X```, ``:func:`y```, ``:mod:`z```, ...),
  which Markdown does not know; each becomes a code span (``X``), with Sphinx's conventions
  (``~a.b.C`` shows ``C``; ``title <target>`` shows ``title``), and a paragraph that ends in
  ``::`` before an indented literal block ends in ``:`` (the block is a code block in Markdown
  as it is in reStructuredText).
* **Grouped parameters.** A NumPy-style entry that documents several parameters at once
  (``staleness, staleness_exponent : float``) becomes one entry per parameter with the same
  text, so that each one's type and default are taken from its own place in the signature
  (griffe would give all of them the first one's).

The source files are never changed: this rewrites griffe's copy of each docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]

# :role:`text`, with an optional domain (:py:class:`X`)
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|ref|term|type):`([^`]+)`")
# "text::" at the end of a line introduces a literal block in reStructuredText
LITERAL_BLOCK = re.compile(r"(?<=\S)::[ \t]*$", re.M)


def package_roots() -> dict[str, str]:
    """Import package -> folder, as ``setup.py`` maps them (``{"fedsim": "fedsim", ...}``)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ROOTS"
                                                for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise RuntimeError("setup.py no longer defines ROOTS: update docs/griffe_fedsim.py")


def role_text(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<[^<>]+>", text)
    if titled:
        text = titled.group(1)
    elif text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def markdown_roles(text: str) -> str:
    """``text`` with every Sphinx role written as a Markdown code span, ``text::`` as ``text:``."""
    return LITERAL_BLOCK.sub(":", ROLE.sub(role_text, text))


PARAMETER_SECTIONS = {"Parameters", "Other Parameters", "Attributes"}
GROUP = re.compile(r"(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*:.*)?")


def split_grouped_parameters(text: str) -> str:
    """NumPy sections' ``a, b : T`` entries written as one ``a : T`` and one ``b : T`` entry."""
    lines = text.split("\n")
    out: list[str] = []
    in_section = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()):  # a section title
            in_section = line.strip() in PARAMETER_SECTIONS and not line.startswith(" ")
            out += [line, lines[i + 1]]
            i += 2
            continue
        group = GROUP.fullmatch(line) if in_section else None
        if group is None:
            out.append(line)
            i += 1
            continue
        description = []
        i += 1
        while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
            if not lines[i].strip() and (i + 1 == len(lines) or not lines[i + 1].startswith((" ", "\t"))):
                break  # a blank line that ends the entry
            description.append(lines[i])
            i += 1
        for name in re.split(r"\s*,\s*", group.group(1)):
            out += [name + (group.group(2) or ""), *description]
    return "\n".join(out)


class FedsimLayout(griffe.Extension):
    """Attach ``clients/``, ``strategies/``, ``datasets/`` to ``fedsim``; rewrite docstrings for Markdown."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = split_grouped_parameters(markdown_roles(obj.docstring.value))

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        roots = package_roots()
        if pkg.name not in roots:
            return
        for dotted, folder in roots.items():
            parent_name, _, name = dotted.rpartition(".")
            if parent_name != pkg.name or name in pkg.members and pkg.members[name].is_module:
                continue
            # Load the folder as a top-level package of its own (it is one, on disk), then move it
            # under fedsim: griffe derives every object's dotted path from its parents.
            sub = loader.load(ROOT / folder, try_relative_path=True)
            loader.modules_collection.members.pop(sub.name, None)
            sub.name = name
            sub.parent = pkg
            pkg.set_member(name, sub)
