"""Re-execute the teaching notebooks and store their outputs in place.

The notebooks are committed *with* their outputs so that a reader browsing the repository sees
the tables and figures without running anything. After changing a notebook (or fedsim), refresh
them with::

    .venv/bin/python notebooks/execute.py                          # all notebooks, in place
    .venv/bin/python notebooks/execute.py 03_latent_distillation   # only some (name, path or prefix: 03)

Every notebook runs on fedsim's built-in ``synthetic`` dataset (no download), in a private
temporary folder that is deleted afterwards, so the stored outputs contain no absolute paths of
this machine and no execution timestamps. ``tests/test_notebooks.py`` executes copies of the
notebooks the same way (without writing them) and checks that the committed outputs are
complete and belong to the current cell sources (``metadata.fedsim.sources_sha256``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent
COMMAND = ".venv/bin/python notebooks/execute.py"
TIMEOUT = 900  # seconds per cell


def notebooks() -> list[Path]:
    """The teaching notebooks, in reading order."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def sources_sha256(notebook: nbformat.NotebookNode) -> str:
    """A digest of the code cells' sources: the stored outputs were produced from these."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


# stream lines that only say the kernel has no widget front end (tqdm, Ray), or that Ray shut down
NOISE = (
    re.compile(r"TqdmWarning: IProgress not found"),
    re.compile(r"from \.autonotebook import tqdm as notebook_tqdm"),
    re.compile(r"Missing packages: \['ipywidgets'\]"),
    # Ray's shutdown chatter when the runtime stops its actors (timestamped, not about the notebook)
    re.compile(r"ClientAppActor\.terminate failed"),
    re.compile(r"Failed to push error to driver"),
)


def _scrub(notebook: nbformat.NotebookNode, folder: str) -> None:
    """Replace the private temporary folder in text outputs, drop the NOISE lines from the
    streams and the per-cell execution metadata."""
    pattern = re.compile(re.escape(folder) + r"[^\s'\"),\]]*")

    def fix(text: str) -> str:
        return pattern.sub("<tmp>", text)

    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "stream":
                lines = output.text.splitlines(keepends=True)
                output.text = "".join(line for line in lines if not any(p.search(line) for p in NOISE))
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and not o.text.strip())]
        for output in cell.outputs:
            if "text" in output:
                output.text = fix(output.text)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output.data[mime] = fix(value)


def execute(notebook: nbformat.NotebookNode, timeout: int = TIMEOUT) -> nbformat.NotebookNode:
    """Execute a copy of ``notebook`` top to bottom and return it (raises on a cell error).

    The kernel runs in a fresh temporary folder (its working directory and ``TMPDIR``, so every
    run directory the notebook makes lands there) that is removed afterwards.
    """
    notebook = copy.deepcopy(notebook)
    folder = tempfile.mkdtemp(prefix="fsnb-")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "FLWR_TELEMETRY_ENABLED", "RAY_DEDUP_LOGS")}
    os.environ.update({"TMPDIR": folder, "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "1"})
    try:  # the kernel inherits this environment
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": folder}})
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
    _scrub(notebook, folder)
    notebook.metadata["fedsim"] = {"sources_sha256": sources_sha256(notebook), "executed_by": COMMAND}
    return notebook


def _resolve(name: str) -> Path:
    path = Path(name)
    if path.suffix != ".ipynb":
        path = path.with_suffix(".ipynb")
    if not path.exists():
        path = NOTEBOOK_DIR / path.name
    if not path.exists():  # a prefix such as "03" names the notebook that starts with it
        matches = [p for p in notebooks() if p.name.startswith(Path(name).name)]
        if len(matches) != 1:
            raise SystemExit(f"no single notebook {name!r} in {NOTEBOOK_DIR}")
        path = matches[0]
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="names or paths (default: all notebooks)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [_resolve(n) for n in args.notebooks] if args.notebooks else notebooks()
    total = time.perf_counter()
    for path in paths:
        start = time.perf_counter()
        executed = execute(nbformat.read(path, as_version=4), args.timeout)
        nbformat.write(executed, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1024:.0f} KiB", flush=True)
    print(f"executed {len(paths)} notebook(s) in {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
