"""NPZ archives read against declared arrays: every problem names the file and the array.

:func:`read_archive` opens the file with ``allow_pickle=False`` always (an archive is data,
never code), and checks, for each declared :class:`ArraySpec`, that the array is present (or
optional), of an allowed dtype kind and number of dimensions, and finite where it holds floats.
A file that is not a zip archive, a folder, a missing file and an array that needs pickle (an
object array) are each an :class:`~fedsim.inputs.files.InputFileError` naming the file (and
the array). Rules that depend on what the arrays mean (an image layout, labels that are class
ids) stay with the caller, which names the array with :func:`array_error`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import InputFileError, describe, require_file, unreadable

_KIND_NAMES = {"u": "unsigned integers", "i": "integers", "f": "floats", "b": "booleans", "U": "text", "S": "bytes"}


@dataclass(frozen=True)
class ArraySpec:
    """One array of an archive: its name, the dtype kinds (``numpy.dtype.kind``) and dimensions allowed.

    ``kinds``: e.g. ``"u"`` (unsigned integers), ``"iuf"`` (any number); empty = any. ``ndims``: the
    numbers of dimensions allowed; empty = any. Float arrays must be finite.
    """

    name: str
    kinds: str = ""
    ndims: tuple[int, ...] = ()
    required: bool = True

    def allowed(self) -> str:
        kinds = " or ".join(_KIND_NAMES.get(k, k) for k in self.kinds) or "any dtype"
        ndims = " or ".join(str(n) for n in self.ndims)
        return kinds + (f" with {ndims} dimensions" if ndims else "")


def array_error(path: Path, label: str, name: str, message: str,
                error: type[InputFileError] = InputFileError) -> InputFileError:
    """The error for a problem with array ``name``: ``npz dataset 'x.npz', array y_train: <message>``."""
    return error(f"{describe(label, path)}, array {name}: {message}", path=path, column=name)


def read_archive(path: Path | str, arrays: Sequence[ArraySpec], label: str,
                 error: type[InputFileError] = InputFileError) -> dict[str, np.ndarray]:
    """The declared arrays of an ``.npz`` file (optional ones only when present), each checked.

    Raises ``error`` naming the file for a missing file, a folder, a file that is not a readable zip
    archive, missing arrays (``lacks the arrays [...]``), and naming the array for one that cannot be
    read, needs pickle, or has a dtype, a number of dimensions or non-finite values not allowed.
    """
    path = Path(path)
    where = describe(label, path)
    require_file(path, label, error)
    try:
        if not zipfile.is_zipfile(path):
            raise error(f"{where} is not a readable .npz archive (not a zip file); re-create or re-copy it",
                        path=path)
        archive = np.load(path, allow_pickle=False)
    except InputFileError:
        raise
    except OSError as err:
        raise unreadable(path, label, err, error) from err
    except Exception as err:  # noqa: BLE001 - numpy and zipfile raise many types for a damaged archive
        raise error(f"{where} is not a readable .npz archive ({err}); re-create or re-copy it", path=path) from err
    with archive:
        missing = sorted(a.name for a in arrays if a.required and a.name not in archive.files)
        if missing:
            raise error(f"{where} lacks the arrays {missing}; it must hold "
                        f"{', '.join(a.name for a in arrays if a.required)}", path=path)
        return {spec.name: _checked(archive, spec, path, label, error)
                for spec in arrays if spec.name in archive.files}


def _checked(archive: np.lib.npyio.NpzFile, spec: ArraySpec, path: Path, label: str,
             error: type[InputFileError]) -> np.ndarray:
    try:
        array = archive[spec.name]
    except ValueError as err:  # an object array: numpy would need pickle
        if "allow_pickle" in str(err):
            raise array_error(path, label, spec.name, "holds Python objects, which need pickle (never loaded); "
                              f"allowed: {spec.allowed()}", error) from err
        raise array_error(path, label, spec.name, f"cannot be read ({err}); re-create or re-copy the file",
                          error) from err
    except Exception as err:  # noqa: BLE001 - a damaged member: zlib, zipfile, numpy format errors
        raise array_error(path, label, spec.name, f"cannot be read ({err}); re-create or re-copy the file",
                          error) from err
    if spec.kinds and array.dtype.kind not in spec.kinds:
        raise array_error(path, label, spec.name, f"has dtype {array.dtype}; allowed: {spec.allowed()}", error)
    if spec.ndims and array.ndim not in spec.ndims:
        raise array_error(path, label, spec.name, f"has shape {array.shape}; allowed: {spec.allowed()}", error)
    if array.dtype.kind in "fc":
        bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))
        if len(bad):
            first = np.unravel_index(bad[0], array.shape)
            raise array_error(path, label, spec.name, f"{len(bad)} value(s) are not finite (the first, "
                              f"{array.reshape(-1)[bad[0]]}, at index {tuple(int(i) for i in first)}); allowed: "
                              "finite numbers", error)
    return array
