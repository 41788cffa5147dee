"""The teaching notebooks execute top to bottom (on synthetic data) and are committed with their outputs.

The committed outputs come from ``.venv/bin/python notebooks/execute.py`` (see that script); the
tests execute copies in a temporary folder, so they never overwrite what is committed.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
MAX_NOTEBOOK_BYTES = 600_000
MAX_TOTAL_BYTES = 1_500_000


def _execute_module():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOK_DIR / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _outputs(notebook: nbformat.NotebookNode) -> list:
    return [output for cell in _code_cells(notebook) for output in cell.outputs]


def _images(notebook: nbformat.NotebookNode) -> list:
    return [o for o in _outputs(notebook) if "image/png" in o.get("data", {})]


def _texts(notebook: nbformat.NotebookNode) -> list[str]:
    """Every text an output shows (streams, tracebacks, text/* representations)."""
    texts = []
    for output in _outputs(notebook):
        texts.append(output.get("text", ""))
        texts.extend(output.get("traceback", []))
        texts.extend(v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str))
    return texts


@pytest.mark.ray  # the notebooks run on Flower's simulation runtime, as a reader would
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes(path: Path) -> None:
    executed = _execute_module().execute(nbformat.read(path, as_version=4))  # a copy; raises on a cell error
    assert not [o for o in _outputs(executed) if o.output_type == "error"]
    assert _images(executed), "every notebook shows at least one figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_are_complete_and_current(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    module = _execute_module()
    recorded = notebook.metadata.get("fedsim", {}).get("sources_sha256")
    assert recorded == module.sources_sha256(notebook), \
        f"{path.name}: code cells changed since the outputs were stored; run `{module.COMMAND}`"
    counts = [cell.execution_count for cell in _code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1)), \
        f"{path.name}: not executed top to bottom in one kernel (execution counts {counts})"
    assert not [o for o in _outputs(notebook) if o.output_type == "error"], f"{path.name} has error outputs"
    assert _images(notebook), f"{path.name} has no figure (image/png output)"
    assert not [cell for cell in notebook.cells if "execution" in cell.metadata], "timing metadata is stored"
    text = "\n".join(_texts(notebook))
    for private in {tempfile.gettempdir().rstrip("/") + "/", "/tmp/", str(Path.home()) + "/"} - {"//"}:
        assert private not in text, f"{path.name}: outputs contain a machine-specific path ({private})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_cell_names_the_data_and_the_command(path: Path) -> None:
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert "synthetic" in first.source
    assert _execute_module().COMMAND in first.source


def test_notebooks_stay_small() -> None:
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS}
    assert all(size < MAX_NOTEBOOK_BYTES for size in sizes.values()), sizes
    assert sum(sizes.values()) < MAX_TOTAL_BYTES, sizes


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_cite_papers_not_private_notes(path: Path) -> None:
    text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    for word in ("seed 00", "METHODS.md", "DESIGN.md"):
        assert word not in text, f"{path.name} mentions {word!r}"


def test_there_is_a_quickstart_notebook() -> None:
    assert "01_quickstart.ipynb" in IDS
