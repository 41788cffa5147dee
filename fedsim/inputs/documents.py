"""TOML documents: a file that is not UTF-8 or not valid TOML is named with the place of the fault.

:func:`read_document` returns the parsed document. Bytes that are not UTF-8 (TOML files are
UTF-8 by definition) are named by their byte offset and line; a syntax error by the line and
column that :mod:`tomllib` reports, so both read like a compiler's message:

    config file 'exp.toml' is not valid TOML: line 2, column 10: Invalid value
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from .files import InputFileError, decode_utf8, describe, read_bytes

_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")  # how tomllib places its message
_END = re.compile(r"\s*\(at end of document\)\s*$")


def read_document(path: Path | str, label: str, error: type[InputFileError] = InputFileError) -> dict[str, Any]:
    """The TOML document in ``path``; ``error`` names the file and the place of any fault in it."""
    path = Path(path)
    text = decode_utf8(read_bytes(path, label, error), path, label, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        place = _WHERE.search(message)
        if place:
            line, column = int(place.group(1)), int(place.group(2))
            detail = f"line {line}, column {column}: {message[:place.start()]}"
        else:
            line = column = None
            detail = f"at the end of the file: {message[:_END.search(message).start()]}" if _END.search(message) \
                else message
        raise error(f"{describe(label, path)} is not valid TOML: {detail}", path=path, row=line,
                    column=column) from err
