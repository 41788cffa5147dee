"""The repository stands alone: no file in it points at notes that are not in it.

Papers are cited by authors, title and year (``docs/methods.md`` has the list), never by a
private label, and no file refers a reader to documents outside the repository. This test
scans every tracked (or new, not ignored) text file, notebooks included, outputs and all.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Other guard tests list the same words; their guard lines (file -> text on the line) are exempt.
GUARD_LINES = {"tests/test_notebooks.py": "for word in ("}

FORBIDDEN = [
    ("a private paper label", re.compile(r"seed[\s_-]*00", re.IGNORECASE)),
    ("a note outside the repository", re.compile(re.escape("METHODS" + ".md"))),
    ("a note outside the repository", re.compile(re.escape("DESIGN" + ".md"))),
    ("a path outside the repository", re.compile(re.escape(".." + "/shared"))),
]


def tracked_files() -> list[str]:
    try:
        # tracked files plus new ones not yet added (but not ignored ones: .venv, build outputs)
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:  # not a git checkout (e.g. an sdist)
        pytest.skip(f"git ls-files unavailable: {err}")
    return [name for name in out.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files (a NUL byte, or not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but deleted or renamed in the working tree
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_refers_outside_the_repository():
    problems = []
    for name in tracked_files():
        if name == THIS:
            continue
        text = text_of(ROOT / name)
        if text is None:
            continue
        for what, pattern in FORBIDDEN:  # on the whole text: a label may be wrapped over two lines
            for match in pattern.finditer(text):
                line_number = text.count("\n", 0, match.start()) + 1
                line = text.splitlines()[line_number - 1].strip()
                if name in GUARD_LINES and GUARD_LINES[name] in line:
                    continue
                problems.append(f"{name}:{line_number}: {what} {match.group(0)!r}: {line[:120]}")
    assert not problems, (
        "cite papers by authors, title and year (see docs/methods.md) and refer only to files in "
        "the repository:\n" + "\n".join(problems)
    )
