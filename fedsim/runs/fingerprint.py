"""The fingerprint of a run's inputs (``inputs.json``), recorded at start and checked on resume.

A resumed run must read what the interrupted one read, or its finished rounds and the rounds
to come mix two experiments in one result. When a run is prepared, :func:`record` writes
``inputs.json`` into its run directory: the resolved config (its canonical TOML text in the
current schema and that text's SHA-256) and, for every file the run reads, its path, size,
``mtime_ns`` and SHA-256. :func:`check` compares a run directory against it before a resume
touches anything and raises an :class:`~fedsim.errors.InputError` (exit status 2) naming the
file and what changed, or the config keys that were edited with their old and new values.

What is fingerprinted, by the config key that names it:

- ``data.path`` -- the ``npz`` dataset file;
- ``dataset <name>.npy`` -- for the built-in datasets (``cifar10``, ``cifar100``, ``synthetic``),
  the four arrays decoded into fedsim's cache (``x_train``, ``y_train``, ``x_test``, ``y_test``),
  not the source folder. The source (torchvision's ``cifar-10-batches-py``, eight pickled
  batches) is read once, to fill the cache; every process of the run then reads the cache, and
  the cache folder's name follows the source's location, not its content. The arrays are thus
  exactly the data the run trains on; a cleared cache decoded again from the same source gives
  the same bytes and resumes, a changed one is refused. ``meta.json`` is left out: it is derived
  from the arrays (and records absolute paths);
- ``time.devices.path`` (``time.devices.kind = "file"``) and ``time.availability.path``
  (``time.availability.kind = "trace"``) -- the device file and the availability trace. The run
  keeps copies of both (``devices.csv``, ``availability.csv``), but a changed original means the
  config no longer describes the run;
- ``latent_distill.transfer_path`` (or ``transfer <name>.npy`` for a built-in transfer dataset) --
  the distillation transfer set when it comes from another dataset.

The content hash decides: size and ``mtime_ns`` only decide whether a file is hashed again, so
a ``touch`` or a byte-identical copy resumes. Files are hashed in 1 MiB chunks (a 163 MB file
takes a fraction of a second). A run directory without ``inputs.json`` (made by a fedsim before
0.2.0 recorded it) resumes without these checks, as it did before.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import warnings
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.config import ExperimentConfig
from fedsim.config.parse import from_dict
from fedsim.datasets import DataSettings, materialize
from fedsim.datasets.cache import ARRAY_NAMES, resolve_npz_path
from fedsim.errors import InputError

INPUTS_FILE = "inputs.json"
FORMAT = 1
CHUNK = 1 << 20  # hash 1 MiB at a time: constant memory for any file size
DISTILL_STRATEGY = "latent-distill"  # the strategy whose method reads latent_distill.transfer_*
_UNSET = object()  # a config key one side lacks


@dataclass(frozen=True)
class FileFingerprint:
    """One input file as it was: where, how big, when last modified, and its content's SHA-256."""

    role: str  # the config key (or cache array) that makes the run read it
    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, role: str, path: Path, known: FileFingerprint | None = None) -> FileFingerprint:
        """``path``'s fingerprint; ``known``'s hash is reused when the size and mtime are unchanged."""
        stat = path.stat()
        version = (str(path), stat.st_size, stat.st_mtime_ns)
        if known is not None and (known.path, known.size, known.mtime_ns) == version:
            return replace(known, role=role)
        return cls(role, *version, _hash_once(*version))


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's content, read in :data:`CHUNK`-sized pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _hash_once(path: str, size: int, mtime_ns: int) -> str:
    """:func:`sha256_of`, once per file version in this process: the runs of a comparison share one dataset."""
    return sha256_of(Path(path))


def canonical_config(config: ExperimentConfig) -> str:
    """The config as ``config.toml`` holds it: TOML of every setting, in the current schema."""
    return tomli_w.dumps(config.to_dict())


def _dataset_files(data: DataSettings, role: str, array_role: str) -> dict[str, Path]:
    """An ``npz`` dataset's file (under ``role``), else the arrays of its cache folder."""
    if data.dataset == "npz":
        return {role: resolve_npz_path(data).resolve()}
    folder = materialize(data).folder.resolve()
    return {f"{array_role} {name}.npy": folder / f"{name}.npy" for name in ARRAY_NAMES}


def input_files(config: ExperimentConfig) -> dict[str, Path]:
    """Every file a run of ``config`` reads, by the config key (or cache array) that names it."""
    files = _dataset_files(config.data, "data.path", "dataset")
    devices, availability = config.time.devices, config.time.availability
    if devices.kind == "file":
        files["time.devices.path"] = Path(devices.path).expanduser().resolve()
    if availability.kind == "trace":
        files["time.availability.path"] = Path(availability.path).expanduser().resolve()
    distill = config.latent_distill
    if config.strategy.name == DISTILL_STRATEGY and distill.transfer_dataset:
        source = replace(config.data, dataset=distill.transfer_dataset, path=distill.transfer_path, classes=[])
        files.update(_dataset_files(source, "latent_distill.transfer_path", "transfer"))
    return files


def record(config: ExperimentConfig, folder: Path) -> Path:
    """Write ``inputs.json`` into ``folder``: the resolved config and every input file's fingerprint."""
    text = canonical_config(config)
    entries = [FileFingerprint.of(role, path) for role, path in input_files(config).items()]
    inputs = {"format": FORMAT, "config": {"sha256": hashlib.sha256(text.encode()).hexdigest(), "toml": text},
              "files": [asdict(entry) for entry in entries]}
    path = Path(folder) / INPUTS_FILE
    path.write_text(json.dumps(inputs, indent=2))
    return path


def _recorded(folder: Path) -> tuple[dict[str, Any], list[FileFingerprint]] | None:
    """The recorded config (``sha256``, ``toml``) and file fingerprints; None without ``inputs.json``."""
    path = folder / INPUTS_FILE
    if not path.exists():
        return None
    try:
        inputs = json.loads(path.read_text())
        config = inputs["config"]
        if not isinstance(config.get("toml"), str):
            raise TypeError("the config's text is not a string")
        return config, [FileFingerprint(**entry) for entry in inputs["files"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path} cannot be read ({type(error).__name__}: {error}); it records what the run "
                         "started with, so the run cannot be checked before resuming: restore the file, or "
                         "start a new run") from error


def check(folder: Path, config: ExperimentConfig) -> None:
    """Refuse to resume ``folder`` with ``config`` (its ``config.toml``) if it or an input changed.

    Raises :class:`~fedsim.errors.InputError` naming the edited config keys (old and new values),
    or the file that changed and how. Does nothing for a run without ``inputs.json``.
    """
    recorded = _recorded(Path(folder))
    if recorded is None:
        return
    started, files = recorded
    check_config(config, started)
    check_files(config, files)


def check_config(config: ExperimentConfig, recorded: dict[str, Any]) -> None:
    """The run's ``config.toml``, resolved, must be the config it started with."""
    text = canonical_config(config)
    if hashlib.sha256(text.encode()).hexdigest() == recorded.get("sha256"):
        return
    with warnings.catch_warnings():  # the recorded text in an older schema: its renamed keys are no news
        warnings.simplefilter("ignore")
        started = from_dict(tomllib.loads(recorded["toml"]))
    changes = differences(_flat(started.to_dict()), _flat(config.to_dict()))
    if changes:
        raise InputError(f"config.toml was edited since the run started: {'; '.join(changes)}; a resumed run "
                         "must use the config it started with: restore it, or start a new run")


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        flat.update(_flat(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every dotted key whose value differs (``(unset)`` where one lacks it)."""
    keys = sorted(set(before) | set(after))
    return [f"{key} {_show(before, key)} -> {_show(after, key)}" for key in keys
            if before.get(key, _UNSET) != after.get(key, _UNSET)]


def _show(table: dict[str, Any], key: str) -> str:
    if key not in table:
        return "(unset)"
    value = table[key]
    return repr(value) if isinstance(value, str) else json.dumps(value)


def check_files(config: ExperimentConfig, recorded: list[FileFingerprint]) -> None:
    """Every recorded input file must still hold the same bytes (hashed again only when its stat changed)."""
    current = input_files(config)
    for before in recorded:
        path = current.get(before.role, Path(before.path))
        problem = _change(before, path)
        if problem:
            moved = "" if str(path) == before.path else f" (the run started with {before.path})"
            raise InputError(f"{path}{moved} changed since the run started: {problem}; a resumed run must read "
                             f"what it started with ({before.role}): restore the file, or start a new run")


def _change(before: FileFingerprint, path: Path) -> str:
    """What differs between ``before`` and the file at ``path`` now ("" when its content is the same)."""
    if not path.is_file():
        return "it is gone" if not path.exists() else "it is no longer a file"
    size = path.stat().st_size
    if size != before.size:
        return f"it was {before.size} bytes, now {size}"
    now = FileFingerprint.of(before.role, path, before)
    if now.sha256 != before.sha256:
        return f"its content differs (sha256 {before.sha256[:12]}… -> {now.sha256[:12]}…)"
    return ""
