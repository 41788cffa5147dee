"""fedsim's error types: what the Python API raises, and how the command line exits.

- :class:`InputError` -- the user's input is wrong (a config value, a dataset file, an existing
  folder in the way, a run that cannot be resumed). Raised before anything is written; the
  command line exits with status 2.
- :class:`RunError` -- a run started and then failed (too few clients succeeded, the model
  diverged, the strategy produced nothing). The run's partial output is kept as
  ``<name>.failed``; the command line exits with status 1.
- :class:`fedsim.ops.interrupt.RunInterrupted` -- Ctrl-C; the run is kept as ``<name>.interrupted``
  with its checkpoint; exit status 130.

The specific errors (``ConfigError``, ``DatasetError``, ``StrategyError``, ``DivergenceError``, ...)
derive from these, so callers can catch a whole family. A leaf module: every package imports it.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_INPUT = 2


class FedsimError(Exception):
    """Base of every error fedsim raises on purpose."""


class InputError(FedsimError, ValueError):
    """Bad input: a config value, a data file, a folder in the way. Nothing was written."""


class RunError(FedsimError, RuntimeError):
    """A run failed after it started; its partial output is kept as ``<name>.failed``."""
