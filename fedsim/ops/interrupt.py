"""Ctrl-C: stop a run within seconds at a safe point, keeping everything it finished.

A first SIGINT does not kill the process mid-write: :func:`handling_interrupts` turns it into
a *stop request*, and the places that wait or loop -- the round loop between phases, the
executors while they wait for replies, the client runner between clients, the training loop
between batches -- call :func:`check_stop`, which raises :class:`RunInterrupted`. The run
directory is then kept as ``<name>.interrupted`` with its last checkpoint, and the command
exits with status 130 (:mod:`fedsim.runs.experiment`, :mod:`fedsim.frontends.cli`). A second Ctrl-C restores
Python's default behaviour (an immediate ``KeyboardInterrupt``), so nothing can make Ctrl-C
ineffective.

This module is a leaf: the client side (training loop, runner) imports it too.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # the shell's convention for "ended by SIGINT"

_stop = threading.Event()


class RunInterrupted(BaseException):
    """The user asked the run to stop (Ctrl-C).

    A ``BaseException``, like ``KeyboardInterrupt``: code that turns a client's ``Exception``
    into an error reply must not swallow it.
    """


def request_stop() -> None:
    """Ask every loop in this process to stop at its next safe point."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def check_stop() -> None:
    """Raise :class:`RunInterrupted` if a stop was requested."""
    if _stop.is_set():
        raise RunInterrupted("interrupted by the user (Ctrl-C)")


def clear_stop() -> None:
    _stop.clear()


@contextmanager
def handling_interrupts() -> Iterator[None]:
    """Within the block, a first Ctrl-C requests a stop; a second one interrupts at once.

    Only the main thread can install signal handlers; elsewhere (e.g. a notebook's worker
    thread) the block runs with the handler it already has.
    """
    clear_stop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):  # noqa: ANN001, ARG001 - signal handler signature
        if _stop.is_set():
            raise KeyboardInterrupt
        request_stop()
        print("\nfedsim: stopping after the current step (Ctrl-C again to abort at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
