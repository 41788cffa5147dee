"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is the folder ``<run dir>/checkpoint/``:

- ``state.json`` -- plain JSON: the round it was taken after, the strategy's attributes, the
  round extensions' :meth:`~fedsim.core.extension.RoundExtension.state`, the scheduler's
  :meth:`~fedsim.core.schedule.Scheduler.state` (a simulated clock's time, clients still
  training), the recorder's position (the byte length of every table, its run-level extras) and
  the RNG states of ``random``, NumPy and torch;
- ``arrays.npz`` -- every array those refer to (the global model, FedAdam's moments, FedAvgM's
  momentum, a committee's peer models, ...), written with NumPy and read back with
  ``allow_pickle=False``: loading a checkpoint never unpickles an object;
- ``client_state/`` -- the client-state store as it was (hard links to the files of that
  moment: clients replace their files, they never modify them, so a link is a snapshot).

A checkpoint is written to a temporary folder and moved into place with ``rename``; a run
killed while writing one keeps the previous one. Values are converted by :func:`encode` and
:func:`decode`, which know JSON scalars, lists, tuples, dicts (any keys), NumPy arrays and
scalars, torch tensors and Flower ``ArrayRecord``s, and refuse anything else by name -- a
strategy holding state fedsim cannot restore fails at the first checkpoint, not at resume.
Floats go through ``repr`` in JSON, so they come back bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.errors import InputError

from .spec import CLIENT_STATE

FORMAT = 2  # 1: the scheduler's state was the last round extension's (read too)
FOLDER = "checkpoint"
_TMP = ".checkpoint.tmp"
_OLD = ".checkpoint.old"
STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"


class CheckpointError(InputError):
    """A checkpoint cannot be read (missing, corrupt, another format) or a state cannot be saved."""


def encode(value: Any, arrays: dict[str, np.ndarray], where: str = "state") -> Any:
    """``value`` as JSON, with arrays moved into ``arrays`` (copied) and referred to by key."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return {"__scalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": _store(value.detach().cpu().numpy(), arrays, where)}
    if isinstance(value, np.ndarray):
        return {"__array__": _store(value, arrays, where)}
    if isinstance(value, ArrayRecord):
        return {"__arrayrecord__": [[key, _store(value[key].numpy(), arrays, f"{where}.{key}")]
                                    for key in value.keys()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, arrays, where), encode(v, arrays, f"{where}.{k}")]
                             for k, v in value.items()]}
    raise CheckpointError(f"cannot checkpoint {where}: a {type(value).__module__}.{type(value).__name__} "
                          "(supported: numbers, strings, lists, dicts, NumPy arrays, tensors, ArrayRecords)")


def _store(array: np.ndarray, arrays: dict[str, np.ndarray], where: str) -> str:
    if array.dtype.hasobject:
        raise CheckpointError(f"cannot checkpoint {where}: an array of Python objects")
    key = f"a{len(arrays)}"
    arrays[key] = np.array(array, copy=True)
    return key


def decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__scalar__" in value:
        return np.dtype(value["__scalar__"]).type(value["value"])
    if "__tensor__" in value:
        return torch.from_numpy(arrays[value["__tensor__"]].copy())
    if "__array__" in value:
        return arrays[value["__array__"]].copy()
    if "__arrayrecord__" in value:
        return ArrayRecord(OrderedDict((key, Array(arrays[ref].copy())) for key, ref in value["__arrayrecord__"]))
    if "__tuple__" in value:
        return tuple(decode(v, arrays) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in value["__dict__"]}
    raise CheckpointError(f"unknown checkpoint entry {sorted(value)}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy's attributes (a wrapped strategy's too), functions left out.

    Flower's strategies keep their state in plain attributes (FedAdam's ``m_t``/``v_t``,
    FedAvgM's ``momentum_vector``, adaptive clipping's ``clipping_norm``, ``current_arrays``);
    saving all of them, constants included, restores any of them without knowing each one.
    """
    state: dict[str, Any] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, Strategy):
            state[name] = {"strategy": strategy_state(value)}
        elif not callable(value):
            state[name] = {"value": value}
    return state


def load_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    for name, entry in state.items():
        if "strategy" in entry:
            load_strategy_state(getattr(strategy, name), entry["strategy"])
        else:
            setattr(strategy, name, entry["value"])


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class Checkpoint:
    """A run's state after round ``server_round`` (see the module docstring)."""

    server_round: int
    arrays: ArrayRecord
    strategy: dict[str, Any]
    extensions: dict[str, Any]
    recorder: dict[str, Any]
    rng: dict[str, Any]
    scheduler: dict[str, Any] | None = None  # None: a run without a scheduler (the centralized baseline)

    @classmethod
    def capture(cls, server_round: int, arrays: ArrayRecord, strategy: Strategy | None, extension: Any,
                recorder: Any, scheduler: Any = None) -> Checkpoint:
        """The run's state now: ``extension`` and ``scheduler`` have ``state()``, ``recorder`` has ``position()``."""
        return cls(server_round, arrays, strategy_state(strategy) if strategy is not None else {},
                   extension.state(), recorder.position(), rng_state(),
                   scheduler.state() if scheduler is not None else None)

    def restore(self, strategy: Strategy | None, extension: Any, recorder: Any, scheduler: Any = None) -> ArrayRecord:
        """Put the state back into the strategy, the extension(s), the scheduler, the tables, the
        client-state store and the RNGs; return the global arrays to continue from."""
        if strategy is not None:
            load_strategy_state(strategy, self.strategy)
        try:
            extension.load_state(self.extensions)
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{error}: resume with the same round extensions the run had "
                                  "(fedsim.resume(..., extensions=[...]))") from error
        if scheduler is not None:
            scheduler.load_state(self.scheduler or {})
        recorder.restore(self.recorder)
        self.restore_client_state(recorder.folder)
        set_rng_state(self.rng)
        return self.arrays

    def write(self, run_dir: Path) -> Path:
        """Write atomically to ``run_dir/checkpoint`` (replacing the previous one)."""
        run_dir = Path(run_dir)
        tmp = run_dir / _TMP
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        arrays: dict[str, np.ndarray] = {}
        state = {
            "format": FORMAT, "round": self.server_round,
            "arrays": encode(self.arrays, arrays, "global model"),
            "strategy": encode(self.strategy, arrays, "strategy"),
            "extensions": encode(self.extensions, arrays, "extensions"),
            "recorder": encode(self.recorder, arrays, "recorder"),
            "rng": encode(self.rng, arrays, "rng"),
            "scheduler": encode(self.scheduler, arrays, "scheduler"),
        }
        text = json.dumps(state)
        with (tmp / ARRAYS_FILE).open("wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        with (tmp / STATE_FILE).open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _snapshot(run_dir / CLIENT_STATE, tmp / CLIENT_STATE)
        final, old = run_dir / FOLDER, run_dir / _OLD
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def read(cls, run_dir: Path) -> Checkpoint:
        """The run's checkpoint (the previous one if a write was cut short).

        Raises :class:`CheckpointError` naming the file (``state.json`` or ``arrays.npz``) and
        what is wrong with it: unreadable (a cut-short or overwritten file), another format, or
        arrays the state refers to that the archive lacks.
        """
        run_dir = Path(run_dir)
        folder = run_dir / FOLDER
        if not (folder / STATE_FILE).is_file() and (run_dir / _OLD / STATE_FILE).is_file():
            folder = run_dir / _OLD
        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(f"{run_dir} has no checkpoint (no {FOLDER}/{STATE_FILE}); it stopped before "
                                  "its first checkpoint, so it cannot be resumed: start it again")
        state = _read_state(folder / STATE_FILE)
        arrays = _read_arrays(folder / ARRAYS_FILE)
        try:
            extensions = decode(state["extensions"], arrays)
            scheduler = decode(state["scheduler"], arrays) if "scheduler" in state else _scheduler_of(extensions)
            return cls(int(state["round"]), decode(state["arrays"], arrays), decode(state["strategy"], arrays),
                       extensions, decode(state["recorder"], arrays), decode(state["rng"], arrays), scheduler)
        except CheckpointError:
            raise
        except KeyError as error:
            raise CheckpointError(f"{folder / ARRAYS_FILE} lacks the array {error} that {STATE_FILE} refers to: "
                                  f"{DAMAGED}") from error
        except (OSError, ValueError, TypeError) as error:
            raise CheckpointError(f"the checkpoint in {folder} cannot be read ({type(error).__name__}: {error}): "
                                  f"{DAMAGED}") from error

    def check_model(self, expected: dict[str, tuple[int, ...]], run_dir: Path) -> None:
        """The global arrays must be the run's model: ``expected`` names and shapes, finite floats.

        A checkpoint of another model (a wrong file copied in) or with NaN/Inf weights (a damaged
        file) would fail inside the first round, or silently continue from garbage.
        """
        where = Path(run_dir) / FOLDER / ARRAYS_FILE
        names = list(self.arrays.keys())
        missing, extra = [k for k in expected if k not in names], [k for k in names if k not in expected]
        if missing or extra:
            raise CheckpointError(f"{where} does not hold the run's model: "
                                  + "; ".join(part for part in (
                                      f"missing {_some(missing)}" if missing else "",
                                      f"unknown {_some(extra)}" if extra else "") if part)
                                  + f": {DAMAGED}")
        for name in names:
            array = self.arrays[name].numpy()
            if tuple(array.shape) != tuple(expected[name]):
                raise CheckpointError(f"{where}: the model's array {name!r} has shape {tuple(array.shape)}, the run's "
                                      f"model needs {tuple(expected[name])}: {DAMAGED}")
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise CheckpointError(f"{where}: the model's array {name!r} holds NaN or Inf values: {DAMAGED}")

    def restore_client_state(self, run_dir: Path) -> None:
        """Put the checkpoint's client-state store back in place of the current one."""
        run_dir = Path(run_dir)
        folder = run_dir / FOLDER if (run_dir / FOLDER).is_dir() else run_dir / _OLD
        shutil.rmtree(run_dir / CLIENT_STATE, ignore_errors=True)
        _snapshot(folder / CLIENT_STATE, run_dir / CLIENT_STATE)


DAMAGED = ("the checkpoint is damaged and the run cannot be resumed from it: restore the file from a backup, "
           "or start the run again")


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json``, parsed and of a format this fedsim reads."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}): {DAMAGED}") from error
    if not isinstance(state, dict) or state.get("format") not in (1, FORMAT):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}; this fedsim reads 1 and {FORMAT}")
    return state


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of ``arrays.npz``, read in full (a cut-short archive fails here, naming the file)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {DAMAGED}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}): {DAMAGED}") from error


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def _scheduler_of(extensions: dict[str, Any]) -> dict[str, Any] | None:
    """A format-1 checkpoint kept the scheduler's state as its last round extension's: take it out."""
    keys = [key for key in extensions if key.endswith("Scheduler")]
    return extensions.pop(keys[-1]) if keys else None


def _snapshot(source: Path, target: Path) -> None:
    """Hard-link (or, across filesystems, copy) the files of ``source`` into ``target``, folders included
    (the store has one folder per method); files being written (dot-files) are left out."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir():
            _snapshot(path, target / path.name)
        elif path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)


def discard_partial(run_dir: Path) -> None:
    """Remove a checkpoint write that was cut short."""
    shutil.rmtree(Path(run_dir) / _TMP, ignore_errors=True)
