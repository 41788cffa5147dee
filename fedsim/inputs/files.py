"""What every reader shares: the error that names a place in a file, and opening the file.

A reader reports a bad input as :class:`InputFileError`: the message names the file, the
place in it (a line and a column of a CSV or TOML file, an array of an NPZ archive), the bad
value and what is allowed, and the attributes carry the same place for code that wants it.
It is an :class:`~fedsim.errors.InputError`, so the command line exits with status 2, and a
reader raises it before a run writes anything.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.errors import InputError


class InputFileError(InputError):
    """A user-supplied file is missing, unreadable or holds a bad value; the message says where.

    ``path``: the file; ``row``: the 1-based line (a CSV's header is line 1; a TOML file's line);
    ``column``: a CSV column's name, a TOML file's 1-based character column, or an NPZ array's
    name. Each is ``None`` where it does not apply.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, row: int | None = None,
                 column: str | int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.row = row
        self.column = column


def describe(label: str, path: Path) -> str:
    """How messages name a file: ``device file '/data/devices.csv'``."""
    return f"{label} {str(path)!r}"


def require_file(path: Path, label: str, error: type[InputFileError] = InputFileError) -> Path:
    """``path``, after checking that it is a file: a folder or nothing there is an ``error`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{describe(label, path)} is a folder, not a file", path=path)
    if not path.is_file():
        raise error(f"{describe(label, path)} does not exist (no such file)", path=path)
    return path


def unreadable(path: Path, label: str, err: OSError, error: type[InputFileError] = InputFileError) -> InputFileError:
    """The error for a file the system refuses to read (permissions, I/O)."""
    return error(f"{describe(label, path)} cannot be read: {err.strerror or err}", path=path)


def read_bytes(path: Path, label: str, error: type[InputFileError] = InputFileError) -> bytes:
    """The file's bytes; a missing file, a folder or an unreadable file is an ``error`` naming it."""
    path = require_file(path, label, error)
    try:
        return path.read_bytes()
    except OSError as err:
        raise unreadable(path, label, err, error) from err


def decode_utf8(data: bytes, path: Path, label: str, error: type[InputFileError] = InputFileError) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); other bytes name their position."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise error(f"{describe(label, path)} is not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset "
                    f"{err.start} (line {line}, column {column}) cannot be decoded; save the file as UTF-8",
                    path=path, row=line, column=column) from err
