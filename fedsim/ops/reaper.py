"""Ray's processes go when fedsim goes, even when fedsim is killed outright.

Ray's own processes (GCS, raylet, workers, dashboard and runtime-env agents) are descendants of
the process that started Ray. On a normal exit or Ctrl-C fedsim shuts them down; after SIGKILL
nothing of fedsim runs, and some of Ray's agents live on for a minute or more. So while Ray
runs, a tiny watcher process (``python -m fedsim.ops.reaper <pid>``, in a session of its own)
remembers the descendants of fedsim's process once a second; when that process is gone it
kills the remembered ones that still exist -- identified by pid *and* start time, so a reused
pid is never hit -- and exits. It never touches any other process. Linux only (``/proc``);
elsewhere :func:`start_reaper` does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_SECONDS = 1.0
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid``, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm)": state ppid ... starttime (22nd field)
    return int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (children, their children, ...) -> its start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
                starts[int(entry.name)] = stat[1]
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found and pid in starts:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, []))
    return found


def watch(pid: int) -> None:
    """Remember ``pid``'s descendants while it lives; then kill those still there."""
    own = _stat(pid)
    if own is None:
        return
    known: dict[int, str] = {}
    while (current := _stat(pid)) is not None and current[1] == own[1]:
        known.update(descendants(pid))
        time.sleep(POLL_SECONDS)
    known.pop(os.getpid(), None)  # the watcher itself was started by the watched process
    for child, started in known.items():
        stat = _stat(child)
        if stat is not None and stat[1] == started:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass


_started: dict[int, int] = {}  # watched pid -> watcher pid


def start_reaper() -> int | None:
    """Start the watcher for this process once (Linux); its pid, or None where ``/proc`` is missing.

    ``posix_spawn`` in a new session with stdio on ``/dev/null``: the watcher outlives a
    killed fedsim, and no ``Popen`` object is left to complain that its child still runs.
    """
    if not (_PROC / str(os.getpid()) / "stat").is_file() or not hasattr(os, "posix_spawn"):
        return None
    watcher = _started.get(os.getpid())
    if watcher is not None and _stat(watcher) is not None:
        return watcher
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _started[os.getpid()] = os.posix_spawn(sys.executable, [sys.executable, "-m", "fedsim.ops.reaper", str(os.getpid())],
                                           os.environ, file_actions=devnull, setsid=True)
    return _started[os.getpid()]


if __name__ == "__main__":
    watch(int(sys.argv[1]))
