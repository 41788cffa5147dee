"""Readers of the files a user supplies, one per format, each naming the place of a bad value.

* :mod:`~fedsim.inputs.tables` -- CSV tables against declared columns (file, line, column);
* :mod:`~fedsim.inputs.archives` -- NPZ archives against declared arrays (file, array);
* :mod:`~fedsim.inputs.documents` -- TOML documents (file, byte offset or line and column).

Each raises :class:`InputFileError` (an :class:`~fedsim.errors.InputError`: exit status 2),
or the caller's subclass of it, before a run writes anything. A folder where a file is
expected, or nothing at the path, is said as such.
"""

from __future__ import annotations

from .archives import ArraySpec, array_error, read_archive
from .documents import read_document
from .files import InputFileError, require_file
from .tables import Column, Table, read_table

__all__ = ["ArraySpec", "Column", "InputFileError", "Table", "array_error", "read_archive", "read_document",
           "read_table", "require_file"]
