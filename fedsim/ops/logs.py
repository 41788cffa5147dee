"""Quiet Flower and Ray unless the user asks for their logs (``--verbose``).

Without ``--verbose``, Flower logs errors only, Python warnings are hidden, and Ray's driver
prints no worker logs (``log_to_driver``, :func:`fedsim.runs.simulate.backend_config`). Ray still
forwards the errors its processes report (the ``(raylet) ...`` lines); :func:`quiet_ray_teardown`
drops the ones that are only the noise of Flower shutting its actors down
(:data:`TEARDOWN_NOISE`) and keeps every other, so a real error is never hidden.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Ray's reports that are only the end of a run, not a problem: Flower's terminate_all_actors sends
# every actor a `terminate` task (which exits the actor on purpose) and shuts Ray down at once; with
# the task retries fedsim gives Ray (WORKER_TASK_RETRIES), Ray reports that task as failed and "to
# be retried", e.g. "(raylet) Task ClientAppActor.terminate failed. There are 1 retries remaining,
# so the task will be retried. Error: ...". Reports about ClientAppActor.run (a client's real
# work) never match.
TEARDOWN_NOISE = (
    re.compile(r"\bClientAppActor\.terminate\b"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_teardown_noise(line: str) -> bool:
    """Whether a line Ray prints on the driver is only the noise of tearing the actors down."""
    text = _ANSI.sub("", line)
    return any(pattern.search(text) for pattern in TEARDOWN_NOISE)


@contextmanager
def quiet_flower(verbose: bool) -> Iterator[None]:
    """Within the block, Flower logs errors only and warnings are hidden, unless ``verbose``."""
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    # Ray must not hide the GPUs from workers whose clients ask for none of a GPU's share --
    # verbose or not, or --verbose would move clients to the CPU
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        flwr_logger.setLevel(previous)


def without_noise(print_lines: Callable[..., None]) -> Callable[..., None]:
    """``print_lines`` (Ray's ``print_to_stdstream(data, ...)``, ``data["lines"]`` the lines) minus the
    lines :func:`is_teardown_noise` matches; a batch left empty is not printed at all."""
    def filtered(data: dict, *args: object, **kwargs: object) -> None:
        lines = [line for line in data.get("lines", []) if not is_teardown_noise(str(line))]
        if lines:
            print_lines({**data, "lines": lines}, *args, **kwargs)

    filtered.__wrapped__ = print_lines  # type: ignore[attr-defined]
    return filtered


@contextmanager
def quiet_ray_teardown(verbose: bool) -> Iterator[None]:
    """Within the block, and unless ``verbose``, Ray's driver does not print :data:`TEARDOWN_NOISE`.

    Ray's driver prints what its processes report through ``ray._private.worker.print_to_stdstream``
    (looked up at every call, by the thread that listens for the reports); the block wraps it
    with :func:`without_noise`. Where that function is missing (another Ray), nothing changes.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        ray_worker = None
    original = getattr(ray_worker, "print_to_stdstream", None)
    if verbose or original is None:
        yield
        return
    ray_worker.print_to_stdstream = without_noise(original)
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original
