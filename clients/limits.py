"""Per-client time limits on a worker (``executor.client_timeout``).

A real-time POSIX timer interrupts the client's Python code, so a worker moves on to its next
client instead of hanging on one; the round's timeout bounds the worker as a whole.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ClientTimeout(Exception):
    """A client took longer than ``executor.client_timeout`` on its worker."""


def can_limit_time() -> bool:
    """Whether this thread can interrupt a client: POSIX timers signal the main thread only."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float, client_id: int) -> Iterator[None]:
    """Raise :class:`ClientTimeout` in the block after ``seconds`` (0: no limit).

    A real-time timer interrupts the client's Python code (a training step in progress
    finishes first), so the worker moves on to its next client; the next client reloads its
    weights, so nothing of the interrupted one leaks. Without a main thread (or SIGALRM) no
    limit applies and the round's timeout bounds the worker instead.
    """
    if seconds <= 0 or not can_limit_time():
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001, ARG001 - signal handler signature
        raise ClientTimeout(f"client {client_id} exceeded executor.client_timeout = {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
