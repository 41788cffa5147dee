"""Every Python file of the repository compiles without a warning.

An invalid escape sequence in a docstring (e.g. ``ArrayRecord``\\ s) is a warning Python prints
when it compiles the file, which users see as noise in their logs the first time they run
(``flwr run .`` compiles a fresh copy of the project every time).
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_file_compiles_without_a_warning() -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(listed) > 50
    noisy = {}
    for name in listed:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile((ROOT / name).read_text(encoding="utf-8"), name, "exec")
        if caught:
            noisy[name] = [str(w.message) for w in caught]
    assert not noisy, noisy
