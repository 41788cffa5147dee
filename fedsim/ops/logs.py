"""Quiet Flower and Ray unless the user asks for their logs (``--verbose``)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


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
