"""Ray's processes go when fedsim goes, even when fedsim is killed outright.

Ray's own processes (GCS, raylet, workers, dashboard and runtime-env agents) are descendants of
the process that started Ray. On a normal exit or Ctrl-C fedsim shuts them down; after SIGKILL
nothing of fedsim runs, and some of Ray's agents live on for a minute or more. So while Ray
runs, a tiny watcher process (``python -m fedsim.ops.reaper <pid>``, in a session of its own)
finds them in two ways and kills them once fedsim's process is gone:

- it remembers the descendants of fedsim's process twice a second, identified by pid *and*
  start time, so a reused pid is never hit;
- fedsim's process carries an environment tag (``FEDSIM_REAPER_OWNER=<pid>:<start time>``)
  that every process it starts inherits. A process started in the last moments before the
  kill, or orphaned when its parent died first, is not in the remembered tree but still
  carries the tag; the watcher looks for it in ``/proc/<pid>/environ`` after the kill.

It then kills what it found, sweeps again until nothing tagged is left (a dying raylet may
still have started a worker), and exits. It never touches any other process: the tag names one
process incarnation. Linux only (``/proc``); elsewhere :func:`start_reaper` does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
SWEEPS = 5  # at most this many kill sweeps after fedsim's process is gone
TAG = "FEDSIM_REAPER_OWNER"
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid``, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm)": state ppid ... starttime (22nd field)
    return int(fields[1]), fields[19]


def _pids() -> list[int]:
    return [int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit()]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (children, their children, ...) -> its start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
            starts[pid] = stat[1]
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found and pid in starts:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, []))
    return found


def tagged(tag: str) -> dict[int, str]:
    """Every process whose environment carries ``TAG=tag`` -> its start time (other users' are unreadable)."""
    needle = f"{TAG}={tag}".encode()
    found: dict[int, str] = {}
    for pid in _pids():
        try:
            environ = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            stat = _stat(pid)
            if stat is not None:
                found[pid] = stat[1]
    return found


def _kill(processes: dict[int, str]) -> int:
    """SIGKILL each (pid, start time) that still exists as that incarnation; how many were signalled."""
    killed = 0
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def watch(pid: int) -> None:
    """Remember ``pid``'s descendants while it lives; then kill them and every process carrying its tag."""
    own = _stat(pid)
    if own is None:
        return
    tag = f"{pid}:{own[1]}"
    known: dict[int, str] = {}
    while (current := _stat(pid)) is not None and current[1] == own[1]:
        known.update(descendants(pid))
        time.sleep(POLL_SECONDS)
    me = os.getpid()
    for _ in range(SWEEPS):
        found = {**known, **tagged(tag)}
        found.pop(me, None)  # the watcher itself was started by the watched process
        known = {}
        if not _kill(found):
            break
        time.sleep(0.2)


_started: dict[int, int] = {}  # watched pid -> watcher pid


def start_reaper() -> int | None:
    """Start the watcher for this process once (Linux); its pid, or None where ``/proc`` is missing.

    Sets this process's tag in ``os.environ`` first, so every process started from now on
    (Ray's included) inherits it. ``posix_spawn`` in a new session with stdio on
    ``/dev/null``: the watcher outlives a killed fedsim, and no ``Popen`` object is left to
    complain that its child still runs.
    """
    own = _stat(os.getpid())
    if own is None or not hasattr(os, "posix_spawn"):
        return None
    watcher = _started.get(os.getpid())
    if watcher is not None and _stat(watcher) is not None:
        return watcher
    os.environ[TAG] = f"{os.getpid()}:{own[1]}"
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _started[os.getpid()] = os.posix_spawn(sys.executable, [sys.executable, "-m", "fedsim.ops.reaper", str(os.getpid())],
                                           os.environ, file_actions=devnull, setsid=True)
    return _started[os.getpid()]


if __name__ == "__main__":
    watch(int(sys.argv[1]))
