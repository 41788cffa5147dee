"""CSV tables read against a declared schema: every bad cell is named by file, line and column.

A :class:`Column` declares a column's kind (``float``, ``int`` or ``str``) and, for numbers, a
lower bound (``> 0``, ``>= 0``); numbers must be finite, integers are written as integers and
strings are not empty (no cell may be empty). :func:`read_table` reads the file with the standard library's CSV
reader, so that the line it names is the line an editor shows (the header is line 1; blank
lines are skipped but counted), and reports the first bad cell as

    device file 'devices.csv', line 3, column latency: 'fast' is not a number; allowed: a finite number >= 0
    device file 'devices.csv', line 4, column upload_mbps: '0' must be > 0

Columns the schema does not declare are kept as strings. Checks across rows (ids that must
list every client once, a start before an end) stay with the caller, which names a row with
:meth:`Table.error`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .files import InputFileError, decode_utf8, describe, read_bytes

_INT64 = 2**63  # integers are stored as int64


@dataclass(frozen=True)
class Column:
    """One column of a table: its name, its kind and the smallest value allowed.

    ``minimum`` with ``exclusive = True`` reads ``> minimum``, otherwise ``>= minimum``.
    ``required``: whether the header must have the column.
    """

    name: str
    kind: type = float
    minimum: float | None = None
    exclusive: bool = False
    required: bool = True

    def allowed(self) -> str:
        """What the column takes, in words: ``a finite number > 0``, ``an integer >= 0``."""
        noun = {float: "a finite number", int: "an integer", str: "a non-empty text"}[self.kind]
        if self.minimum is None:
            return noun
        return f"{noun} {'>' if self.exclusive else '>='} {self.minimum:g}"

    def parse(self, text: str) -> float | int | str:
        """The cell's value; a :class:`ValueError` says why the cell is not one this column takes."""
        text = text.strip()
        if not text:
            raise ValueError(f"the cell is empty; allowed: {self.allowed()}")
        if self.kind is str:
            return text
        try:
            value: float | int = int(text) if self.kind is int else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if self.kind is int else 'a number'}; allowed: "
                             f"{self.allowed()}") from None
        if self.kind is int and not -_INT64 <= value < _INT64:
            raise ValueError(f"{text!r} is too large for an integer id; allowed: {self.allowed()}")
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number; allowed: {self.allowed()}")
        if self.minimum is not None and (value <= self.minimum if self.exclusive else value < self.minimum):
            raise ValueError(f"{text!r} must be {'>' if self.exclusive else '>='} {self.minimum:g}")
        return value


@dataclass
class Table:
    """A checked table: its values (one typed column per declared column) and each row's line."""

    path: Path
    label: str
    frame: pd.DataFrame
    lines: np.ndarray  # the 1-based line of each row in the file
    error_type: type[InputFileError] = InputFileError

    def where(self, row: int | None = None, column: str | None = None) -> str:
        """``device file 'x.csv', line 3, column latency`` for row ``row`` (0-based) of the frame."""
        text = describe(self.label, self.path)
        if row is not None:
            text += f", line {int(self.lines[row])}"
        return text + (f", column {column}" if column else "")

    def error(self, row: int | None, column: str | None, message: str) -> InputFileError:
        """The error for a problem at row ``row`` (0-based) and ``column``, named as :meth:`where` does."""
        return self.error_type(f"{self.where(row, column)}: {message}", path=self.path,
                               row=None if row is None else int(self.lines[row]), column=column)


def read_table(path: Path | str, columns: Sequence[Column], label: str,
               error: type[InputFileError] = InputFileError) -> Table:
    """Read a CSV file with a header line and check every declared column's cells.

    Raises ``error`` (an :class:`InputFileError`) naming the file for a missing file, a folder, bytes
    that are not UTF-8, a missing header or required column, a column named twice, a row with another
    number of cells than the header, and naming line, column, value and what is allowed for a bad cell.
    """
    path = Path(path)
    text = decode_utf8(read_bytes(path, label, error), path, label, error)
    where = describe(label, path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise error(f"{where} is empty; it needs a header line naming the columns "
                        f"{', '.join(c.name for c in columns if c.required)}", path=path)
        header = [name.strip() for name in header]
        rows, lines = [], []
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if len(cells) != len(header):
                raise error(f"{where}, line {reader.line_num}: {len(cells)} cells, but the header (line 1) "
                            f"names {len(header)} columns", path=path, row=reader.line_num)
            rows.append(cells)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise error(f"{where}, line {reader.line_num}: not a readable CSV line ({err})", path=path,
                    row=reader.line_num) from err
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise error(f"{where}: the header names the column(s) {', '.join(twice)} more than once", path=path, row=1)
    missing = [c.name for c in columns if c.required and c.name not in header]
    if missing:
        raise error(f"{where} lacks the column(s) {', '.join(missing)}; the header (line 1) names "
                    f"{', '.join(header) or 'nothing'}", path=path, row=1)
    declared = {c.name: c for c in columns}
    data: dict[str, object] = {}
    for j, name in enumerate(header):
        cells = [row[j] for row in rows]
        column = declared.get(name)
        if column is None:
            data[name] = np.asarray([cell.strip() for cell in cells], dtype=object)
            continue
        values = []
        for i, cell in enumerate(cells):
            try:
                values.append(column.parse(cell))
            except ValueError as err:
                raise error(f"{where}, line {lines[i]}, column {name}: {err}",
                            path=path, row=lines[i], column=name) from None
        dtype = {float: np.float64, int: np.int64, str: object}[column.kind]
        data[name] = np.asarray(values, dtype=dtype)
    frame = pd.DataFrame(data, columns=header)
    return Table(path, label, frame, np.asarray(lines, dtype=np.int64), error)

