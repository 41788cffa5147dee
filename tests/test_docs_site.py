"""The documentation site builds cleanly, every page is in its navigation, and the README stays a landing page.

``mkdocs build --strict`` turns every warning into an error: a broken link between pages, a
missing anchor or image, a page left out of the nav (``validation`` in ``mkdocs.yml``), a
docstring that mkdocstrings cannot render. The build reads the code statically and shows the
notebooks without executing them. It takes about 6 s on 2 cores, which the fast set (just under
a minute) has no room for, so the build is marked ``slow``; the checks of the nav and the README
are cheap and stay in the fast set.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"
README_MAX_LINES = 150


def nav_pages(nav) -> list[str]:
    """Every page path in an mkdocs nav (nested lists of titles -> pages or sections)."""
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += nav_pages(value)
        else:
            pages.append(value)
    return pages


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_docs_page_is_in_the_nav():
    """MkDocs only reports pages missing from the nav as INFO; a page nobody can reach is a bug."""
    listed = set(nav_pages(mkdocs_config()["nav"]))
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    missing = sorted(pages - listed)
    assert not missing, f"docs pages not in mkdocs.yml's nav: {missing}"
    dangling = sorted(p for p in listed if p.endswith(".md") and p not in pages)
    assert not dangling, f"mkdocs.yml's nav lists pages that do not exist: {dangling}"


def test_every_notebook_is_in_the_nav():
    listed = set(nav_pages(mkdocs_config()["nav"]))
    notebooks = {f"notebooks/{path.name}" for path in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks, "no notebooks found"
    assert notebooks <= listed, f"notebooks not in mkdocs.yml's nav: {sorted(notebooks - listed)}"


def ci_test_command() -> str:
    """The line of .ci/run that sets up the environment and runs pytest."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run should run pytest on exactly one line, found {lines}"
    return lines[0]


def test_readme_is_a_short_landing_page_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(readme.splitlines())} lines; keep it a landing page of at most "
        f"{README_MAX_LINES} and move details into docs/")
    test_command = ci_test_command()
    assert test_command in readme, f"README must show .ci/run's test command verbatim: {test_command}"
    setup = test_command.split(" && ")[:2]  # the venv and the install, shared by the main job
    main_job = " && ".join([*setup, ".venv/bin/fedsim run --config configs/quickstart.toml"])
    assert main_job in readme, f"README must show the main job's command: {main_job}"
    assert 'FLWR_TELEMETRY_ENABLED=0 .venv/bin/pytest -m "not ray and not slow"' in readme


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "README should link into docs/"
    missing = sorted({t for t in targets if not (ROOT / t).is_file()})
    assert not missing, f"README links to missing docs files: {missing}"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    command = [str(MKDOCS), "build", "--strict", "--site-dir", str(site)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]

    # the API reference is generated from the code, one page per module
    loop = site / "reference" / "fedsim" / "core" / "loop" / "index.html"
    assert loop.is_file(), "no API page for fedsim.core.loop"
    assert "round loop" in loop.read_text()
    for package in ("clients", "strategies", "datasets"):  # the folders mapped into fedsim
        assert (site / "reference" / "fedsim" / package / "index.html").is_file(), package
    # each notebook is a page, with its committed outputs (figures), not executed
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), f"no page for {notebook.name}"
        assert "data:image/png;base64" in page.read_text(), f"{notebook.name}: outputs missing"
    configuration = (site / "configuration" / "index.html").read_text()
    assert "partition.num_clients" in configuration
    assert (site / "figures" / "cifar10_fedavg_dir0.5_s0_accuracy.png").is_file()
