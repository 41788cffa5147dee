"""Generate the site's API reference: one page per module, found by walking the source folders.

Run by the mkdocs-gen-files plugin during every build (not a page of the site). It walks the
folders of the import package ``fedsim`` as ``setup.py`` maps them (``fedsim/``, and
``clients/``, ``strategies/``, ``datasets/`` as ``fedsim.clients``, ``fedsim.strategies``,
``fedsim.datasets``), so a module that is added, moved or removed changes the reference on the
next build without any list to edit. Every module gets a page ``reference/<dotted path>.md``
holding one mkdocstrings directive (``::: fedsim.core.loop``), a package its folder's
``index.md``; ``reference/SUMMARY.md`` is the navigation tree (mkdocs-literate-nav). Modules
whose name starts with an underscore are private and skipped, except packages' ``__init__.py``.
Nothing is imported: mkdocstrings reads the source statically.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mkdocs_gen_files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def _layout():
    """docs/griffe_fedsim.py, which reads the package -> folder mapping from setup.py."""
    spec = importlib.util.spec_from_file_location("griffe_fedsim", DOCS / "griffe_fedsim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modules() -> list[tuple[tuple[str, ...], Path]]:
    """(dotted parts, source file) of every public module and package, packages first."""
    found = []
    for package, folder in _layout().package_roots().items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            relative = path.relative_to(base).with_suffix("")
            # only modules inside packages: every folder on the way holds an __init__.py
            folders = [base.joinpath(*relative.parts[:i]) for i in range(len(relative.parts))]
            if not all((f / "__init__.py").is_file() for f in folders):
                continue
            parts = tuple(package.split(".")) + relative.parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(part.startswith("_") for part in parts):
                continue
            found.append((parts, path))
    return sorted(found)


nav = mkdocs_gen_files.Nav()
for parts, path in modules():
    is_package = path.name == "__init__.py"
    page = Path(*parts, "index.md") if is_package else Path(*parts[:-1], f"{parts[-1]}.md")
    nav[parts] = page.as_posix()
    with mkdocs_gen_files.open(Path("reference", page), "w") as fd:
        fd.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
    mkdocs_gen_files.set_edit_path(Path("reference", page), path.relative_to(ROOT))

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as nav_file:
    nav_file.writelines(nav.build_literate_nav())
