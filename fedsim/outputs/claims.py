"""One owner per run folder: a claim that one process, and only one, writes ``<name>``.

Before a run or comparison writes anything for ``<parent>/<name>``, it makes the folder
``<parent>/.<name>.claim`` with one ``mkdir``: atomic, also on NFS, so of two processes exactly
one succeeds. The winner writes ``owner.json`` into it (pid, host, start time, run or
comparison); a second process asking for the same name is refused
(:class:`~fedsim.errors.RunDirectoryExists`, exit status 2) with the holder named. The claim is
released when the folder gets its final name or preparation fails
(:mod:`fedsim.outputs.rundir`).

A claim left by a process that died (same host, pid gone, or the pid now belongs to a process
started after the claim) is taken over: renamed aside to a unique name, deleted, and the
``mkdir`` tried again, so of several processes taking one stale claim over only one wins. A
claim from another host is never taken over automatically -- fedsim cannot see that host's
processes -- and its message names the folder to delete once that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from fedsim.errors import RunDirectoryExists

CLAIM, OWNER = ".claim", "owner.json"  # the claim folder .<name>.claim and its owner record
# A claim without a readable owner.json is one being made right now (mkdir done, owner.json not yet
# written: microseconds) or one whose maker was killed in between. Only the second is older than a
# minute: that long covers any pause of a live process between the two steps, even on a loaded NFS.
UNOWNED_CLAIM_SECONDS = 60.0
_ATTEMPTS = 100  # tries to claim (stale claims taken over) before giving up

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
    if pid != os.getpid() and not alive(pid):
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


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (not this process itself)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
