"""Ctrl-C and SIGTERM: stop a run within seconds at a safe point, keeping everything it finished.

A first SIGINT (Ctrl-C) or SIGTERM (``kill``, a batch scheduler, ``docker stop``) does not
kill the process mid-write: :func:`handling_interrupts` turns it into a *stop request* and
remembers which signal asked, and the places that wait or loop -- the round loop between
phases, the executors while they wait for replies, the client runner between clients, the
training loop between batches -- call :func:`check_stop`, which raises
:class:`RunInterrupted`. The run directory is then kept as ``<name>.interrupted`` with its last
checkpoint, and the command exits with ``128 + the signal's number``: 130 after SIGINT, 143
after SIGTERM (:mod:`fedsim.runs.experiment`, :mod:`fedsim.frontends.cli`). A second signal
interrupts at once (a ``KeyboardInterrupt``), so nothing can make either signal ineffective.

Ray's ``ray.init`` installs its own SIGTERM handler (it kills Ray's processes under the
running driver, whose core worker then aborts with a crash dump); fedsim starts Ray itself and
calls :func:`reclaim_signals` right after (:mod:`fedsim.runs.simulate`), so SIGTERM stops a
run on Ray the way Ctrl-C does.

This module is a leaf: the client side (training loop, runner) imports it too.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals that request a stop
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: the shell's convention for "ended by SIGINT"
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: ... and for "ended by SIGTERM"

_stop = threading.Event()
_signal: int | None = None  # the signal that requested the stop (None: a request from code, or none)
_handler = None  # the handler of the active handling_interrupts block (main thread only)


def signal_name(signum: int) -> str:
    """How a stop signal is named in messages: ``Ctrl-C`` (SIGINT) or ``SIGTERM``."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_status(signum: int | None = None) -> int:
    """The exit status of a run stopped by ``signum`` (default: the signal that asked): 128 + its number."""
    signum = _signal if signum is None else signum
    return 128 + (signum if signum is not None else signal.SIGINT)


class RunInterrupted(BaseException):
    """The run was asked to stop (Ctrl-C or SIGTERM); ``signum`` says by which signal.

    A ``BaseException``, like ``KeyboardInterrupt``: code that turns a client's ``Exception``
    into an error reply must not swallow it. Without an explicit ``signum`` it takes the signal
    that requested the current stop (SIGINT when the stop was requested by code).
    """

    def __init__(self, *args: object, signum: int | None = None) -> None:
        super().__init__(*args)
        self.signum = int(signum if signum is not None else _signal if _signal is not None else signal.SIGINT)

    @property
    def exit_status(self) -> int:
        """130 after SIGINT, 143 after SIGTERM."""
        return exit_status(self.signum)


def request_stop(signum: int | None = None) -> None:
    """Ask every loop in this process to stop at its next safe point (``signum``: the signal that asked)."""
    global _signal
    if signum is not None:
        _signal = signum
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def stop_signal() -> int | None:
    """The signal that requested the current stop, if a signal did."""
    return _signal


def check_stop() -> None:
    """Raise :class:`RunInterrupted` if a stop was requested."""
    if _stop.is_set():
        by = signal_name(_signal) if _signal is not None else "the user (Ctrl-C)"
        raise RunInterrupted(f"interrupted by {by}")


def clear_stop() -> None:
    global _signal
    _signal = None
    _stop.clear()


def _on_stop_signal(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
    """A first stop signal requests a stop; a second one (either kind) interrupts at once."""
    if _stop.is_set():
        raise KeyboardInterrupt
    request_stop(signum)
    name = signal_name(signum)
    print(f"\nfedsim: {name}: stopping after the current step ({name} again to abort at once)",
          file=sys.stderr, flush=True)


def reclaim_signals() -> None:
    """Within :func:`handling_interrupts`, put fedsim's handler back on SIGINT and SIGTERM.

    For code that starts something which installs its own handlers (``ray.init`` does, for
    SIGTERM). Does nothing outside the block or off the main thread.
    """
    if _handler is not None and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handler)


@contextmanager
def handling_interrupts() -> Iterator[None]:
    """Within the block, a first SIGINT or SIGTERM requests a stop; a second one interrupts at once.

    Only the main thread can install signal handlers; elsewhere (e.g. a notebook's worker
    thread) the block runs with the handlers it already has.
    """
    global _handler
    clear_stop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in STOP_SIGNALS}
    outer, _handler = _handler, _on_stop_signal
    try:
        yield
    finally:
        _handler = outer
        for signum, handler in previous.items():  # None: a handler not set from Python (restore the default)
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
