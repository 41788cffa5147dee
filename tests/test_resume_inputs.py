"""A resume reads what the run started with, or refuses (R-RESUME-REFUSE, R-INPUTS).

Each test interrupts a small in-process run after its first round, changes one thing in or
around the kept run directory, and resumes through the command line: a changed input file, an
edited ``config.toml`` or a damaged checkpoint gives exit status 2 naming the file (or the keys)
and leaves the run directory as it was; a ``touch`` or a byte-identical copy resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedsim.frontends.cli import main
from fedsim.ops.interrupt import RunInterrupted, request_stop
from fedsim.runs.experiment import run
from fedsim.datasets import materialize
from fedsim.errors import InputError
from fedsim.runs.fingerprint import INPUTS_FILE, check, record

SMALL = {"train.rounds": 2, "partition.num_clients": 4, "evaluation.federated_every": 0, "data.synthetic_train": 200,
         "data.synthetic_test": 40, "partition.min_partition_size": 5}


def interrupted(config) -> Path:  # noqa: ANN001
    """Run ``config`` until the end of round 1 (Ctrl-C then); the kept ``<name>.interrupted`` folder."""
    with pytest.raises(RunInterrupted):  # Ctrl-C once round 1 is written (no extension: the CLI resumes it)
        run(config, progress=False, on_round=lambda row: row["round"] == 1 and request_stop())
    kept = Path(config.output.dir) / f"{config.output.name}.interrupted"
    assert (kept / INPUTS_FILE).is_file()
    return kept


def resumed(kept: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``fedsim run --resume kept``: its exit status and what it printed on stderr."""
    capsys.readouterr()
    status = main(["run", "--resume", str(kept), "--no-progress"])
    return status, capsys.readouterr().err


def refused(kept: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    """The resume exits 2 with every fragment in its message, and touches no file of the run."""
    before = snapshot(kept)
    status, err = resumed(kept, capsys)
    assert status == 2, err
    for fragment in fragments:
        assert fragment in err, err
    assert snapshot(kept) == before
    assert not list(kept.parent.glob(".*staging*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_npz(path: Path, seed: int) -> Path:
    """A small dataset: 200 training and 40 test 32x32 RGB images of 10 classes, pixels drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 255, (200, 32, 32, 3), dtype=np.uint8), y_train=np.arange(200) % 10,
             x_test=rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8), y_test=np.arange(40) % 10)
    return path


def test_a_replaced_dataset_file_is_refused_and_a_copy_of_the_same_bytes_resumes(small_config, tmp_path,
                                                                                 capsys) -> None:
    """R-INPUTS: same shape and size, other pixels -> exit 2 naming data.npz; the old bytes copied back resume."""
    data = write_npz(tmp_path / "data.npz", seed=0)
    original = data.read_bytes()
    kept = interrupted(small_config(**SMALL, **{"data.dataset": "npz", "data.path": str(data),
                                                "output.name": "npz"}))
    write_npz(data, seed=1)
    assert data.stat().st_size == len(original) and data.read_bytes() != original
    refused(kept, capsys, f"{data} changed since the run started: its content differs (sha256 ")
    data.write_bytes(original[: len(original) // 2])
    refused(kept, capsys, f"it was {len(original)} bytes, now {len(original) // 2}")
    data.unlink()
    refused(kept, capsys, f"{data} changed since the run started: it is gone")

    copy = tmp_path / "copy.npz"
    copy.write_bytes(original)
    shutil.copyfile(copy, data)  # the same bytes, a new mtime
    os.utime(data, ns=(1, 1))  # and touched to another time
    status, err = resumed(kept, capsys)
    assert status == 0, err
    assert (tmp_path / "runs" / "npz").is_dir() and not kept.exists()


def test_a_changed_device_file_or_trace_is_refused(small_config, tmp_path, capsys) -> None:
    """R-INPUTS: the device file (time.devices.kind = "file") and the availability trace are fingerprinted."""
    devices = tmp_path / "devices.csv"
    devices.write_text("device,weight,seconds_per_sample,download_mbps,upload_mbps,latency\n"
                       "fast,0.5,0.0004,80.0,30.0,0.02\nslow,0.5,0.006,3.0,0.5,0.25\n")
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,start,end\n" + "".join(f"{c},0,1000000\n" for c in range(4)))
    kept = interrupted(small_config(**SMALL, **{
        "time.devices.kind": "file", "time.devices.path": str(devices), "time.availability.kind": "trace",
        "time.availability.path": str(trace), "output.name": "timed"}))

    original = devices.read_text()
    devices.write_text(original.replace("0.0004", "0.0005"))
    refused(kept, capsys, f"{devices} changed since the run started: its content differs", "time.devices.path")
    devices.write_text(original)
    trace.write_text(trace.read_text().replace("3,0,1000000", "3,50,1000000"))
    refused(kept, capsys, f"{trace} changed since the run started: it was ", "time.availability.path")


def test_an_edited_config_is_refused_naming_the_key_and_both_values(small_config, capsys) -> None:
    """R-INPUTS: train.lr 0.01 -> 0.05 in the run's config.toml -> exit 2 naming the key and both values."""
    kept = interrupted(small_config(**SMALL, **{"train.lr": 0.01, "output.name": "edited"}))
    raw = tomllib.loads((kept / "config.toml").read_text())
    raw["train"]["lr"] = 0.05
    (kept / "config.toml").write_bytes(tomli_w.dumps(raw).encode())
    refused(kept, capsys, "config.toml was edited since the run started: train.lr 0.01 -> 0.05; a resumed run "
                          "must use the config it started with")


def test_a_checkpoint_cut_in_half_is_refused_naming_the_file(small_config, capsys) -> None:
    """R-RESUME-REFUSE: a truncated arrays.npz -> exit 2 naming <run>/checkpoint/arrays.npz, nothing touched."""
    kept = interrupted(small_config(**SMALL, **{"output.name": "cut"}))
    arrays = kept / "checkpoint" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    refused(kept, capsys, f"{arrays} cannot be read", "the checkpoint is damaged")


def test_a_checkpoint_with_wrong_or_missing_arrays_is_refused_naming_the_array(small_config, capsys) -> None:
    """R-RESUME-REFUSE: a model array of another shape, with NaN, or missing -> exit 2 naming it."""
    kept = interrupted(small_config(**SMALL, **{"output.name": "shapes"}))
    path = kept / "checkpoint" / "arrays.npz"
    state = json.loads((kept / "checkpoint" / "state.json").read_text())
    name, ref = state["arrays"]["__arrayrecord__"][0]  # the global model's first array
    with np.load(path) as data:
        original = {key: data[key] for key in data.files}
    shape = original[ref].shape

    np.savez(path, **{**original, ref: np.zeros((shape[0] + 1, *shape[1:]), original[ref].dtype)})
    refused(kept, capsys, f"{path}: the model's array {name!r} has shape ({shape[0] + 1}, ",
            f"the run's model needs {shape}")
    np.savez(path, **{**original, ref: np.full(shape, np.nan, original[ref].dtype)})
    refused(kept, capsys, f"{path}: the model's array {name!r} holds NaN or Inf values")
    np.savez(path, **{key: value for key, value in original.items() if key != ref})
    refused(kept, capsys, f"{path} lacks the array '{ref}' that state.json refers to")


def test_a_run_made_before_inputs_were_recorded_resumes_without_the_check(small_config, capsys) -> None:
    """R-INPUTS: a run directory without inputs.json (an earlier fedsim) resumes as before."""
    kept = interrupted(small_config(**SMALL, **{"output.name": "earlier"}))
    (kept / INPUTS_FILE).unlink()
    status, err = resumed(kept, capsys)
    assert status == 0, err
    assert not kept.exists() and (kept.parent / "earlier" / "rounds.csv").is_file()



def test_a_built_in_dataset_s_cache_and_a_transfer_set_file_are_fingerprinted(small_config, tmp_path) -> None:
    """R-INPUTS: the decoded cache's arrays (a cleared cache decodes the same bytes again) and latent-distill's
    transfer-set file are compared like any input."""
    public = write_npz(tmp_path / "public.npz", seed=0)
    config = small_config(**{"data.cache_dir": str(tmp_path / "cache"), "strategy.name": "latent-distill",
                             "model.representation_dim": 16, "latent_distill.transfer_dataset": "npz",
                             "latent_distill.transfer_path": str(public), "latent_distill.transfer_size": 100})
    folder = tmp_path / "run"
    folder.mkdir()
    record(config, folder)
    check(folder, config)

    write_npz(public, seed=1)
    with pytest.raises(InputError, match=f"{public} changed since the run started: its content differs .*"
                                         r"\(latent_distill.transfer_path\)"):
        check(folder, config)
    write_npz(public, seed=0)
    cache = materialize(config.data).folder
    labels = np.load(cache / "y_train.npy")
    np.save(cache / "y_train.npy", labels[::-1])  # the same labels in another order: same size, other bytes
    with pytest.raises(InputError, match=f"{cache / 'y_train.npy'} changed since the run started: its content "
                                         r"differs .*\(dataset y_train.npy\)"):
        check(folder, config)
    shutil.rmtree(cache)  # a cleared cache is decoded again, to the same bytes
    check(folder, config)
