"""Run directories: named, never silently overwritten, published atomically.

A run writes into a hidden staging folder next to its final location; only a run that
finished is renamed to its final name (one ``rename``, atomic on one filesystem). A run that
fails is renamed to ``<name>.failed`` with the error in ``error.txt``, so partial output is
never mistaken for a result.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

import tomli_w

from fedsim.config import ExperimentConfig


class RunDirectoryExists(FileExistsError):
    """The run directory exists and overwriting was not asked for."""


def default_run_name(config: ExperimentConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{run_label(config)}-{config.data.dataset}-{config.partition.scheme}-s{config.seed}-{stamp}"


def run_label(config: ExperimentConfig) -> str:
    """``centralized``, or the strategy name (with ``-oneshot`` in one-shot mode)."""
    if config.train.mode == "centralized":
        return "centralized"
    return config.strategy.name + ("-oneshot" if config.train.mode == "one-shot" else "")


def final_run_path(config: ExperimentConfig) -> Path:
    """``output.dir / output.name``; refuses an existing directory unless ``output.overwrite``."""
    path = Path(config.output.dir).expanduser() / (config.output.name or default_run_name(config))
    if path.exists() and not config.output.overwrite:
        raise RunDirectoryExists(
            f"run directory {path} already exists; choose another output.name or pass "
            "--overwrite (output.overwrite = true) to replace it"
        )
    return path


def create_staging(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def write_config(config: ExperimentConfig, folder: Path) -> Path:
    path = folder / "config.toml"
    path.write_bytes(tomli_w.dumps(config.to_dict()).encode())
    return path


def publish(staging: Path, final: Path) -> Path:
    """Move the finished staging folder to its final name (replacing it only if allowed earlier)."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def mark_failed(staging: Path, final: Path, error: BaseException) -> Path:
    """Keep a failed run's partial output as ``<name>.failed`` with the traceback."""
    failed = final.with_name(final.name + ".failed")
    (staging / "error.txt").write_text("".join(traceback.format_exception(error)))
    if failed.exists():
        shutil.rmtree(failed)
    staging.rename(failed)
    return failed
