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

**One owner per name.** Before any of this, a process *claims* ``<name>``: it makes the folder
``.<name>.claim`` next to it with one ``mkdir`` (atomic, also on NFS: of two processes exactly
one succeeds) and writes ``owner.json`` into it (pid, host, start time, run or comparison). A
second process asking for the same name is refused (:class:`RunDirectoryExists`, exit status 2)
with the holder named; a time-stamped default name moves on to the next free name instead. The
claim is released when the folder gets its final name (published, ``.failed``, ``.interrupted``)
or preparation fails. A claim left by a process that died (same host, pid gone, or the pid now
belongs to a process started after the claim) is taken over; a claim from another host is never
taken over automatically -- fedsim cannot see that host's processes -- and its message names the
folder to delete once that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
import traceback
from pathlib import Path

import tomli_w

from fedsim.config import ExperimentConfig
from fedsim.errors import InputError
from fedsim.core.spec import CONFIG_FILE

MARKER = ".fedsim-run"
FAILED, INTERRUPTED = ".failed", ".interrupted"
_STAGING = ".staging-"
CLAIM, OWNER = ".claim", "owner.json"  # the claim folder .<name>.claim and its owner record
# A claim without a readable owner.json is one being made right now (mkdir done, owner.json not yet
# written: microseconds) or one whose maker was killed in between. Only the second is older than a
# minute: that long covers any pause of a live process between the two steps, even on a loaded NFS.
UNOWNED_CLAIM_SECONDS = 60.0
_ATTEMPTS = 100  # tries to claim (stale claims taken over, default names raced) before giving up


class RunDirectoryExists(InputError, FileExistsError):
    """The output path is taken: by a run (without --overwrite) or by something fedsim did not create."""


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


# -- claims: one owner per run folder ------------------------------------------------------------

def claim_path(final: Path) -> Path:
    """``.<name>.claim`` next to ``final``: the folder whose creation makes a process its owner."""
    final = Path(final)
    return final.parent / f".{final.name}{CLAIM}"


def read_owner(claim: Path) -> dict | None:
    """A claim's ``owner.json`` (None when it is missing or unreadable)."""
    try:
        owner = json.loads((Path(claim) / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def acquire(final: Path, what: str = "run") -> Path:
    """Claim ``final`` for this process (``what``: ``run`` or ``comparison``); returns the claim folder.

    One ``os.mkdir`` decides between processes. A stale claim (see :func:`_stale`) is renamed
    aside to a unique name and deleted, then the ``mkdir`` is tried again, so of several
    processes taking one stale claim over only one wins. Raises :class:`RunDirectoryExists`
    naming the claim's holder when it is held (or may be: a claim from another host).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    claim = claim_path(final)
    for _ in range(_ATTEMPTS):
        try:
            os.mkdir(claim)
        except FileExistsError:
            owner = read_owner(claim)
            if not _stale(claim, owner):
                raise RunDirectoryExists(_held_message(final, claim, owner)) from None
            _take_aside(claim, owner)
            continue
        try:
            _write_owner(claim, what)
        except FileNotFoundError:  # taken aside as unowned in the instant before owner.json was written
            continue
        return claim
    raise RunDirectoryExists(f"{final} could not be claimed: its claim {claim} was replaced {_ATTEMPTS} times "
                             "while this process tried; wait a moment and try again")


def release(final: Path) -> None:
    """Remove ``final``'s claim if this process holds it (pid and host in ``owner.json``); else nothing."""
    if not holds(final):
        return
    claim = claim_path(final)
    aside = claim.with_name(f"{claim.name}.released-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(claim, aside)  # gone in one step: nobody sees a half-deleted claim
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def holds(final: Path) -> bool:
    """Whether this process holds ``final``'s claim."""
    owner = read_owner(claim_path(final)) or {}
    return owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()


def _write_owner(claim: Path, what: str) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}
    partial = claim / f".{OWNER}.{os.getpid()}"
    partial.write_text(json.dumps(owner))
    os.replace(partial, claim / OWNER)  # readers see no owner.json or a whole one


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return float("inf")  # gone already: nothing to wait for


def _stale(claim: Path, owner: dict | None) -> bool:
    """Whether a claim's holder is gone: a dead pid on this host, or an owner record never written.

    A claim from another host is never stale here: fedsim cannot see that host's processes.
    On this host a pid that is alive but belongs to a process started after the claim (the
    pid was reused) is gone too.
    """
    if owner is None:
        return _age(claim) > UNOWNED_CLAIM_SECONDS
    if owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return True
    if pid != os.getpid() and not _alive(pid):
        return True
    return _started_after(pid, owner.get("started"))


def _started_after(pid: int, started: object) -> bool:
    """Whether process ``pid`` started after ``started`` (so it is not the one that claimed then).

    Needs ``psutil`` (installed with Ray); without it a reused pid counts as the holder.
    """
    try:
        import psutil

        created = psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no psutil, or the process just ended: no evidence of reuse
        return False
    return isinstance(started, (int, float)) and created > float(started) + 1.0


def _take_aside(claim: Path, owner: dict | None) -> None:
    """Rename a stale claim to a unique name and delete it; a claim that changed hands is put back.

    Between reading the stale owner and the rename another process may have taken the claim
    over and made its own: then the folder moved aside is not the stale one, and it goes back.
    """
    aside = claim.with_name(f"{claim.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(claim, aside)
    except FileNotFoundError:
        return  # another process took it aside first
    if read_owner(aside) != owner or (owner is None and _age(aside) <= UNOWNED_CLAIM_SECONDS):
        try:
            os.rename(aside, claim)
        except OSError:
            pass  # a third process claimed meanwhile; the next attempt sees its claim
        return
    shutil.rmtree(aside, ignore_errors=True)


def _held_message(final: Path, claim: Path, owner: dict | None) -> str:
    """Who holds ``final`` and what to do: wait, choose another name, or delete a dead host's claim."""
    if owner is None:
        return (f"{final} is being claimed by another process right now ({claim} has no {OWNER} yet); wait for "
                f"it, or choose another name (output.name / --name). A claim without {OWNER} older than "
                f"{UNOWNED_CLAIM_SECONDS:.0f} s counts as abandoned and is taken over")
    holder = "a comparison" if owner.get("what") == "comparison" else "a run"
    host = owner.get("host", "?")
    text = (f"{final} is being written by {holder}: process {owner.get('pid', '?')} on host {host} since "
            f"{_when(owner.get('started'))} (claim {claim.name}); wait for it, or choose another name "
            "(output.name / --name)")
    if host != socket.gethostname():
        text += (f". fedsim cannot check a process on another host, so it never takes this claim over: if that "
                 f"process is known to be gone, delete the folder {claim}")
    else:
        text += f". If no fedsim process {owner.get('pid', '?')} is running, delete the folder {claim}"
    return text


def _when(started: object) -> str:
    if not isinstance(started, (int, float)):
        return "an unknown time"
    moment = time.localtime(float(started))
    today = time.localtime()[:3] == moment[:3]
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", moment)


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


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    if folder.name.startswith(".") and _STAGING in folder.name and _alive(int(marker.get("pid", 0))):
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
