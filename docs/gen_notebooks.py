"""Put the repository's notebooks into the site, as they are committed (outputs included).

Run by the mkdocs-gen-files plugin during every build (not a page of the site): every
``notebooks/*.ipynb`` is copied, unchanged, to ``notebooks/`` in the site's sources, where
mkdocs-jupyter renders it into a page without executing it (``execute: false`` in
``mkdocs.yml``). The notebooks stay where they are in the repository; ``mkdocs.yml``'s ``nav``
lists them under "Notebooks".
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]

for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    target = Path("notebooks", notebook.name)
    with mkdocs_gen_files.open(target, "wb") as fd:
        fd.write(notebook.read_bytes())
    mkdocs_gen_files.set_edit_path(target, notebook.relative_to(ROOT))
