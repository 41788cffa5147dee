"""fedsim's error types: what the Python API raises, and how the command line exits.

The exit statuses are a contract (the table in ``docs/reliability.md``; the command line,
:mod:`fedsim.frontends.cli`, maps the errors below to them):

- **0** -- success: the run (or every run of a comparison) finished and is published.
- **1** (:data:`EXIT_FAILED`) -- :class:`RunError`: a run started and then failed (too few
  clients succeeded, the model diverged, the strategy produced nothing). The run's partial
  output is kept as ``<name>.failed`` with ``error.txt``.
- **2** (:data:`EXIT_INPUT`) -- :class:`InputError`: the user's input is wrong (a config value,
  a dataset file, an optional package the config needs but that cannot be imported, an output
  path that is a file, a folder in the way, a run that cannot be resumed). Raised before the
  run folder exists: nothing was written.
- **130 / 143** (:data:`fedsim.ops.interrupt.EXIT_INTERRUPTED` /
  :data:`~fedsim.ops.interrupt.EXIT_TERMINATED`) -- :class:`fedsim.ops.interrupt.RunInterrupted`:
  SIGINT (Ctrl-C) or SIGTERM stopped the run at a safe point; it is kept as
  ``<name>.interrupted`` with its checkpoint, and no process of it dumps a crash report.

The specific errors (``ConfigError``, ``DatasetError``, ``StrategyError``, ``DivergenceError``, ...)
derive from these, so callers can catch a whole family. A leaf module: every package imports it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2


class FedsimError(Exception):
    """Base of every error fedsim raises on purpose."""


class InputError(FedsimError, ValueError):
    """Bad input: a config value, a data file, a folder in the way. Nothing was written."""


class RunError(FedsimError, RuntimeError):
    """A run failed after it started; its partial output is kept as ``<name>.failed``."""


class RunDirectoryExists(InputError, FileExistsError):
    """The output path is taken: by a run (without --overwrite), by another process's claim, or by
    something fedsim did not create."""
