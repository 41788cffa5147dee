"""Run directories: named, marked as fedsim's, published atomically, never partially replaced.

A run writes into a hidden staging folder next to its final location,
``.<name>.staging-<pid>``, which holds a marker file (:data:`MARKER`) from its first moment.
How it ends decides its name:

- finished: renamed to ``<name>`` (one ``rename``, atomic on one filesystem);
- failed: renamed to ``<name>.failed``, with the traceback in ``error.txt``;
- interrupted (Ctrl-C, or any other exit that is not a failure of the run itself): renamed to
  ``<name>.interrupted``, resumable with ``fedsim run --resume``.

A staging folder is left behind only when the process is killed outright (SIGKILL, power
loss); ``fedsim run --resume <name>`` finds and continues it. ``--overwrite`` replaces only a
folder carrying the marker -- never any other directory, file or symlink -- and the old run
is moved aside first and deleted only after the new one is in place.

**One owner per name.** Before any of this, a process claims ``<name>``
(:mod:`fedsim.outputs.claims`): a second process asking for the same name is refused
(:class:`~fedsim.errors.RunDirectoryExists`, exit status 2) naming the holder, while a
time-stamped default name moves on to the next free name instead. The claim is released when
the folder gets its final name (published, ``.failed``, ``.interrupted``) or preparation fails.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path

import tomli_w

from fedsim.config import ExperimentConfig
from fedsim.errors import InputError, RunDirectoryExists
from fedsim.outputs.claims import acquire, alive, claim_path, release
from fedsim.core.spec import CONFIG_FILE

MARKER = ".fedsim-run"
FAILED, INTERRUPTED = ".failed", ".interrupted"
_STAGING = ".staging-"
_ATTEMPTS = 100  # tries to find a free default name while other processes claim them


def default_run_name(config: ExperimentConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{run_label(config)}-{config.data.dataset}-{config.partition.scheme}-s{config.seed}-{stamp}"


def run_label(config: ExperimentConfig) -> str:
    """``centralized``, or the strategy name (with ``-oneshot`` in one-shot mode)."""
    if config.train.mode == "centralized":
        return "centralized"
    return config.strategy.name + ("-oneshot" if config.train.mode == "one-shot" else "")


def is_run_directory(path: Path) -> bool:
    """A real directory (not a symlink) that fedsim created: it holds the marker file."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def read_marker(path: Path) -> dict:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def write_marker(folder: Path, final: Path, kind: str = "run", status: str = "running") -> None:
    text = json.dumps({"fedsim": kind, "final": str(final), "status": status, "pid": os.getpid()})
    (Path(folder) / MARKER).write_text(text)


def check_replaceable(path: Path, overwrite: bool, what: str = "run directory") -> None:
    """Refuse ``path`` unless it is free, or a fedsim folder and ``overwrite`` was asked for."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise RunDirectoryExists(f"{what} {path} already exists; choose another name (output.name / --name) "
                                 "or pass --overwrite (output.overwrite = true) to replace it")
    if not is_run_directory(path):
        kind = "a symlink" if path.is_symlink() else "a file" if not path.is_dir() else "a folder fedsim did not create"
        raise RunDirectoryExists(f"{path} is {kind} (no {MARKER} marker): --overwrite replaces only fedsim's own "
                                 "run directories; move it away or choose another output.name")


def untaken(parent: Path, name: str) -> Path:
    """``parent / name`` for a *default* (time-stamped) name, or ``name-2``, ``name-3``, ... when
    that is taken, e.g. by another run started in the same second. A name the user chose is
    never changed: taking it is refused instead (:func:`check_replaceable`)."""
    candidate, n = parent / name, 2
    while (candidate.exists() or candidate.is_symlink() or any(parent.glob(f".{candidate.name}{_STAGING}*"))
           or os.path.lexists(claim_path(candidate))):
        candidate, n = parent / f"{name}-{n}", n + 1
    return candidate


def staging_path(final: Path) -> Path:
    return final.parent / f".{final.name}{_STAGING}{os.getpid()}"


def create_staging(final: Path, kind: str = "run", overwrite: bool = False, what: str | None = None) -> Path:
    """A new, marked staging folder for ``final``, which this process claims first (:func:`acquire`).

    ``final`` is checked again under the claim (:func:`check_replaceable`): another process may
    have published it since it was first checked. ``kind`` is ``run`` or ``comparison``; ``what``
    names the folder in messages (default ``"<kind> directory"``). Raises
    :class:`RunDirectoryExists` leaving neither a staging folder nor a claim.
    """
    final = Path(final)
    acquire(final, kind)
    staging, made = staging_path(final), False
    try:
        check_replaceable(final, overwrite, what or f"{kind} directory")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        made = True
        write_marker(staging, final, kind)
    except BaseException:
        if made:
            shutil.rmtree(staging, ignore_errors=True)
        release(final)
        raise
    return staging


def create_output_staging(parent: Path, name: str | None, default: str, overwrite: bool = False,
                          kind: str = "run") -> tuple[Path, Path]:
    """(final path, staging folder) of a run or comparison, claimed by this process.

    ``name`` is the user's choice (refused when taken: :func:`create_staging`); without one the
    time-stamped ``default`` is used, or ``default-2``, ``default-3``, ... when taken or claimed,
    also when another process claims it between the look and the claim: a default name is never
    refused.
    """
    parent = Path(parent).expanduser()
    if name:
        final = parent / name
        return final, create_staging(final, kind, overwrite)
    for _ in range(_ATTEMPTS):
        final = untaken(parent, default)
        try:
            return final, create_staging(final, kind)
        except RunDirectoryExists:
            continue  # another process claimed or published it after untaken() looked: the next name
    raise RunDirectoryExists(f"no free name {default}, {default}-2, ... in {parent} after {_ATTEMPTS} tries; "
                             "choose a name (output.name / --name)")


def discard(staging: Path, final: Path) -> None:
    """Remove the staging folder of a run whose preparation failed, and release its claim."""
    try:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        release(final)


def write_config(config: ExperimentConfig, folder: Path) -> Path:
    path = folder / CONFIG_FILE
    path.write_bytes(tomli_w.dumps(config.to_dict()).encode())
    return path


def _replace(source: Path, target: Path) -> Path:
    """Rename ``source`` to ``target``; a fedsim folder already there is moved aside, then deleted.

    At every moment either the old or the new folder is complete under ``target`` (or, for
    an instant between the two renames, the old one is still whole under its aside name).
    """
    aside = None
    if target.exists() or target.is_symlink():
        if not is_run_directory(target):
            raise RunDirectoryExists(f"{target} appeared while the run was going and is not a fedsim run "
                                     "directory; the result stays in " + str(source))
        aside = target.parent / f".{target.name}.replaced-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        target.rename(aside)
    source.rename(target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def publish(staging: Path, final: Path, kind: str = "run") -> Path:
    """Move the finished staging folder to its final name (replacing it only if allowed earlier)."""
    try:
        shutil.rmtree(staging / "checkpoint", ignore_errors=True)  # a finished run needs no resume
        write_marker(staging, final, kind, "complete")
        return _replace(staging, final)
    finally:
        release(final)


def mark_failed(staging: Path, final: Path, error: BaseException, kind: str = "run") -> Path:
    """Keep a failed run's partial output as ``<name>.failed`` with the traceback."""
    try:
        (staging / "error.txt").write_text("".join(traceback.format_exception(error)))
        write_marker(staging, final, kind, "failed")
        return _replace(staging, _free(final.with_name(final.name + FAILED)))
    finally:
        release(final)


def mark_interrupted(staging: Path, final: Path, kind: str = "run") -> Path:
    """Keep an interrupted run as ``<name>.interrupted``; ``fedsim run --resume`` continues it."""
    try:
        write_marker(staging, final, kind, "interrupted")
        return _replace(staging, _free(final.with_name(final.name + INTERRUPTED)))
    finally:
        release(final)


def _free(path: Path) -> Path:
    """``path`` if it is free or fedsim's; else the first free ``path-2``, ``path-3``, ..."""
    candidate, number = path, 1
    while (candidate.exists() or candidate.is_symlink()) and not is_run_directory(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def find_resumable(path: Path) -> tuple[Path, Path]:
    """(the folder to continue, its final path) for ``fedsim run --resume path``.

    ``path`` may be the interrupted or failed folder itself, a staging folder left by a killed
    process, or the run's final path (then the newest of its interrupted, failed and staging
    folders is taken).
    """
    path = Path(path).expanduser()
    if is_run_directory(path):
        marker = read_marker(path)
        if marker.get("status") == "complete":
            raise InputError(f"{path} is a finished run; there is nothing to resume")
        candidates = [path]
    else:
        siblings = [path.with_name(path.name + INTERRUPTED), path.with_name(path.name + FAILED),
                    *path.parent.glob(f".{path.name}{_STAGING}*")] if path.parent.is_dir() else []
        candidates = [c for c in siblings if is_run_directory(c)]
        if not candidates:
            raise InputError(f"nothing to resume at {path}: it is not a fedsim run directory, and there is no "
                             f"{path.name}{INTERRUPTED}, {path.name}{FAILED} or staging folder of it")
    folder = max(candidates, key=lambda c: c.stat().st_mtime)
    marker = read_marker(folder)
    if folder.name.startswith(".") and _STAGING in folder.name and alive(int(marker.get("pid", 0))):
        raise InputError(f"{folder} belongs to a run that is still going (process {marker['pid']}); "
                         "stop it first or wait for it")
    if marker.get("fedsim") != "run":
        raise InputError(f"{folder} is a {marker.get('fedsim', 'fedsim')} directory; only single runs can be "
                         "resumed (run the comparison again)")
    return folder, Path(marker.get("final") or _final_name(folder))


def _final_name(folder: Path) -> Path:
    name = folder.name
    for suffix in (INTERRUPTED, FAILED):
        if name.endswith(suffix):
            return folder.with_name(name[: -len(suffix)])
    if name.startswith(".") and _STAGING in name:
        return folder.with_name(name[1:].split(_STAGING)[0])
    return folder


def claim(folder: Path, final: Path, overwrite: bool = False) -> Path:
    """Take ``folder`` (a run to resume) over for this process: rename it to this process's staging name.

    ``final`` is claimed first (:func:`acquire`); under the claim ``folder`` must still be there
    (another process resuming the same run may have taken it) and ``final`` still replaceable.
    On refusal the claim is released and nothing is touched.
    """
    acquire(final)
    try:
        if not is_run_directory(folder):
            raise RunDirectoryExists(f"{folder} was taken over by another process resuming the same run; "
                                     f"it continues as {final}")
        check_replaceable(final, overwrite)
        staging = staging_path(final)
        if folder != staging:
            folder.rename(staging)
    except BaseException:
        release(final)
        raise
    (staging / "error.txt").unlink(missing_ok=True)
    write_marker(staging, final)
    return staging
