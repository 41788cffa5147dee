"""Fault injection: nothing lost, nothing hangs, nothing silently wrong; exact resume.

Each test names the guarantee of docs/reliability.md it checks. Runs are small synthetic
experiments in this process (the in-process executor); the Ray variants are marked ``ray``,
the longer ones (a subprocess, more strategies) ``slow``.
"""

from __future__ import annotations

import errno
import importlib
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim.outputs import rundir
from fedsim.core.checkpoint import Checkpoint, CheckpointError
from fedsim.frontends.cli import main
from fedsim.errors import InputError, RunError
from fedsim.runs.experiment import resume, run
from fedsim.ops.interrupt import RunInterrupted, request_stop
from fedsim.core.screening import DivergenceError
from interrupting import StopAfter, same_results

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ["wall_seconds"]  # timings differ between any two runs




# -- checkpoints and exact resume ---------------------------------------------------------

@pytest.mark.parametrize("strategy", ["fedadam", pytest.param("fedavgm", marks=pytest.mark.slow),
                                      pytest.param("dp-fixed-server", marks=pytest.mark.slow),
                                      pytest.param("dp-adaptive-server", marks=pytest.mark.slow)])
def test_interrupted_run_resumes_bitwise_identical(small_config, strategy) -> None:
    """R-RESUME: Ctrl-C after round 2 of 4, then --resume == the uninterrupted run (stateful strategies)."""
    kwargs = {"dp-fixed-server": {"strategy.kwargs.noise_multiplier": 0.1, "strategy.kwargs.clipping_norm": 1.0},
              "dp-adaptive-server": {"strategy.kwargs.noise_multiplier": 0.1, "strategy.kwargs.clipped_count_stddev": 1.0,
                                     "strategy.kwargs.initial_clipping_norm": 1.0}}.get(strategy, {})
    settings = {"strategy.name": strategy, "train.rounds": 4, "evaluation.federated_every": 2, **kwargs}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)

    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(2)])
    kept = Path(config.output.dir) / "resumed.interrupted"
    assert rundir.is_run_directory(kept) and not (Path(config.output.dir) / "resumed").exists()
    assert Checkpoint.read(kept).server_round == 2
    assert len(pd.read_csv(kept / "rounds.csv")) == 3  # rounds 0..2 kept
    assert not list(Path(config.output.dir).glob(".resumed.staging-*"))

    result = resume(kept, progress=False, extensions=[StopAfter(99)])
    assert result.path == Path(config.output.dir) / "resumed" and not kept.exists()
    assert not (result.path / "checkpoint").exists()
    same_results(reference.path, result.path)


@pytest.mark.slow  # keeps the fast set under a minute
def test_the_centralized_baseline_resumes_bitwise_identical(small_config) -> None:
    """R-RESUME: the centralized baseline (no clients) checkpoints and resumes like a federated run."""
    settings = {"train.mode": "centralized", "train.rounds": 3}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, on_round=lambda row: request_stop() if row["round"] == 1 else None)
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False)
    same_results(reference.path, result.path)


@pytest.mark.slow
def test_resume_after_a_kill_continues_from_the_last_checkpoint(small_config) -> None:
    """R-RESUME-KILL: a staging folder left by a killed run (rows past the checkpoint included) resumes exactly."""
    settings = {"strategy.name": "fedavgm", "train.rounds": 4, "output.checkpoint_every": 2}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "killed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(3)])  # round 3 done, checkpoint still at 2
    kept = Path(config.output.dir) / "killed.interrupted"
    staging = Path(config.output.dir) / ".killed.staging-999999"  # as a SIGKILLed process leaves it
    kept.rename(staging)
    marker = json.loads((staging / rundir.MARKER).read_text())
    (staging / rundir.MARKER).write_text(json.dumps({**marker, "status": "running", "pid": 999999}))
    assert len(pd.read_csv(staging / "rounds.csv")) == 4  # round 3's row is past the checkpoint

    result = resume(Path(config.output.dir) / "killed", progress=False,  # the final path finds the staging folder
                    extensions=[StopAfter(99)])
    same_results(reference.path, result.path)
    assert not staging.exists()


@pytest.mark.slow
def test_distillation_resumes_with_its_client_state(small_config) -> None:
    """R-RESUME: latent-distill keeps per-client models on disk; the checkpoint snapshots them."""
    settings = {"strategy.name": "latent-distill", "model.representation_dim": 16, "train.rounds": 3,
                "latent_distill.transfer_size": 120, "train.fraction_train": 0.5}
    reference = run(small_config(**settings, **{"output.name": "reference"}), progress=False)
    config = small_config(**settings, **{"output.name": "resumed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    result = resume(Path(config.output.dir) / "resumed.interrupted", progress=False, extensions=[StopAfter(99)])
    ref, res = reference.rounds.drop(columns=VOLATILE), result.rounds.drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(ref, res, check_exact=True)


def test_checkpoint_never_unpickles(small_config) -> None:
    """R-CKPT-SAFE: the arrays file loads with allow_pickle=False; the rest is JSON."""
    config = small_config(**{"strategy.name": "fedadam", "train.rounds": 2})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    folder = next(Path(config.output.dir).glob("*.interrupted")) / "checkpoint"
    json.loads((folder / "state.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    state = Checkpoint.read(folder.parent).strategy
    assert state["m_t"]["value"] is not None and state["v_t"]["value"] is not None  # FedAdam's moments


def test_resume_refuses_what_it_cannot_continue(small_config, tmp_path) -> None:
    """R-RESUME-REFUSE: no run, a finished run, a corrupt checkpoint, changed data, a live run: InputError."""
    with pytest.raises(InputError, match="nothing to resume"):
        resume(tmp_path / "nope", progress=False)
    done = run(small_config(**{"train.rounds": 1, "output.name": "done"}), progress=False)
    with pytest.raises(InputError, match="finished run"):
        resume(done.path, progress=False)
    config = small_config(**{"train.rounds": 3, "output.name": "broken"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    kept = Path(config.output.dir) / "broken.interrupted"
    (kept / "checkpoint" / "arrays.npz").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        resume(kept, progress=False)
    assert kept.is_dir()  # untouched, still resumable once repaired
    assert main(["run", "--resume", str(kept), "--no-progress"]) == 2

    config = small_config(**{"train.rounds": 3, "output.name": "changed"})
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    kept = Path(config.output.dir) / "changed.interrupted"
    counts = kept / "partition_counts.csv"
    original = counts.read_text()
    lines = original.splitlines()
    counts.write_text("\n".join([lines[0], lines[1] + "0", *lines[2:]]) + "\n")  # as if the data had changed
    with pytest.raises(InputError, match="another partition"):
        resume(kept, progress=False, extensions=[StopAfter(99)])
    counts.write_text(original)
    running = kept.with_name(f".changed.staging-{os.getppid()}")  # a process that is alive
    kept.rename(running)
    marker = json.loads((running / rundir.MARKER).read_text())
    (running / rundir.MARKER).write_text(json.dumps({**marker, "pid": os.getppid()}))
    with pytest.raises(InputError, match="still going"):
        resume(running, progress=False)
    assert running.is_dir()


def test_every_guarantee_in_the_reliability_spec_names_existing_tests() -> None:
    """docs/reliability.md stays true: each guarantee names tests that exist and carry its id or file."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| R-")]
    assert len(rows) >= 20
    for row in rows:
        ident, _, checked = [cell.strip() for cell in row.strip("|").split("|")]
        names = re.findall(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)`", checked)
        assert names, f"{ident} names no test"
        for file, name in names:
            source = (ROOT / (file or "tests/test_reliability.py")).read_text()
            assert f"def {name}(" in source, f"{ident}: {file or 'tests/test_reliability.py'} has no {name}"


# -- Ctrl-C --------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_stops_the_cli_within_seconds_and_resume_matches(tmp_path) -> None:
    """R-SIGINT: one SIGINT to `fedsim run` -> exit 130 in seconds, run kept; --resume == uninterrupted."""
    common = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_train=600", "--set",
              "data.synthetic_test=200", "--set", "partition.num_clients=10", "--set", "model.name=lenet5",
              "--set", "train.rounds=6", "--set", "executor.kind=in-process", "--set",
              "strategy.name=fedavgm", "--output", str(tmp_path / "runs"), "--no-progress"]
    common += ["--set", 'hooks=[{name="tests.user_hooks:Sleepy", seconds=0.05}]']  # rounds of about 0.5 s
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    reference = subprocess.run([sys.executable, "-m", "fedsim.frontends.cli", "run", *common, "--name", "reference"],
                               env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert reference.returncode == 0, reference.stderr
    process = subprocess.Popen([sys.executable, "-m", "fedsim.frontends.cli", "run", *common, "--name", "stopped"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    rounds = tmp_path / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for round 2's row in the staging folder
        staged = list(rounds.glob(".stopped.staging-*/rounds.csv"))
        if staged and len(staged[0].read_text().splitlines()) >= 4:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - sent < 10
    assert "resume" in stderr and "Traceback" not in stderr
    kept = rounds / "stopped.interrupted"
    assert rundir.is_run_directory(kept) and Checkpoint.read(kept).server_round >= 2

    resumed = subprocess.run([sys.executable, "-m", "fedsim.frontends.cli", "run", "--resume", str(kept), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    same_results(rounds / "reference", rounds / "stopped")


# -- silent wrong results --------------------------------------------------------------------

def test_a_diverging_run_stops_with_an_error_naming_the_round(small_config) -> None:
    """R-DIVERGE: lr = 1e30 -> clients' NaN updates are failures; then the run fails, named, not 'success'."""
    config = small_config(**{"train.lr": 1e30, "train.rounds": 3, "output.name": "boom"})
    with pytest.raises((DivergenceError, RunError)) as info:
        run(config, progress=False)
    assert "round 1" in str(info.value)
    failed = Path(config.output.dir) / "boom.failed"
    clients = pd.read_csv(failed / "clients.csv")
    assert (clients["status"] == "failed").all()
    assert clients["error"].str.contains("NaN or infinite").all()
    assert main(["run", "--set", "data.dataset=synthetic", "--set", "train.lr=1e30", "--set", "train.rounds=1",
                 "--set", "executor.kind=in-process", "--set", "partition.num_clients=4",
                 "--output", str(Path(config.output.dir)), "--no-progress"]) == 1


def test_one_nan_client_is_a_recorded_failure_and_the_round_goes_on(small_config) -> None:
    """R-NAN-CLIENT: one client's NaN update is dropped with its reason; the others are aggregated."""
    config = small_config(**{"train.rounds": 2, "hooks": [{"name": "user_hooks:PoisonClient", "client": 3}],
                             "train.min_success_fraction": 0.5})
    result = run(config, progress=False)
    train = result.clients[result.clients["phase"] == "train"]
    bad = train[train["client_id"] == 3]
    assert len(bad) and (bad["status"] == "failed").all() and bad["error"].str.contains("NaN").all()
    assert (train[train["client_id"] != 3]["status"] == "ok").all()
    assert np.isfinite(result.rounds["test_accuracy"]).all()


def test_wrong_shapes_are_a_recorded_failure(small_config) -> None:
    """R-SHAPES: a client whose update does not match the global model fails alone; the round goes on."""
    from flwr.app import Array, ArrayRecord, Message

    from fedsim.runs.server import execute
    from fedsim.clients.app import client_app
    from fedsim.runs.executors import InProcessExecutor
    from fedsim.runs.prepare import prepare
    from fedsim.core.protocol import ARRAYS

    def misshapen(msg: Message, context) -> Message:  # noqa: ANN001 - client 2 sends a transposed layer
        reply = client_app(msg, context)
        if msg.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 2:
            arrays = reply.content[ARRAYS]
            first = next(iter(arrays.keys()))
            broken = dict(arrays.items())
            broken[first] = Array(np.ascontiguousarray(arrays[first].numpy().reshape(-1)[::-1].copy()))
            reply.content[ARRAYS] = ArrayRecord(broken)
        return reply

    prepared = prepare(small_config(**{"train.rounds": 2, "evaluation.federated_every": 0}))
    state = execute(prepared, InProcessExecutor(misshapen, 10), progress=False)  # any ClientApp-like callable
    assert state.error is None, state.error
    clients = pd.read_csv(prepared.staging / "clients.csv")
    bad = clients[clients["client_id"] == 2]
    assert len(bad) == 2 and (bad["status"] == "failed").all()
    assert bad["error"].str.contains("does not match the global model").all()
    assert (clients[clients["client_id"] != 2]["status"] == "ok").all()
    assert np.isfinite(pd.read_csv(prepared.staging / "rounds.csv")["test_accuracy"]).all()


# -- data safety ------------------------------------------------------------------------------

def test_overwrite_never_replaces_a_folder_fedsim_did_not_create(small_config, tmp_path) -> None:
    """R-OVERWRITE: --overwrite refuses a foreign folder, file or symlink, and names it."""
    precious = tmp_path / "runs" / "mine"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(rundir.RunDirectoryExists, match="fedsim did not create"):
        run(small_config(**{"output.name": "mine", "output.overwrite": True}), progress=False)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "runs" / "link").symlink_to(precious)
    with pytest.raises(rundir.RunDirectoryExists, match="symlink"):
        run(small_config(**{"output.name": "link", "output.overwrite": True}), progress=False)
    assert not list((tmp_path / "runs").glob(".*staging*"))
    first = run(small_config(**{"train.rounds": 1, "output.name": "again"}), progress=False)
    second = run(small_config(**{"train.rounds": 2, "output.name": "again", "output.overwrite": True}),
                 progress=False)
    assert first.path == second.path and len(second.rounds) == 3


def test_plot_never_writes_through_a_symlink(small_config, tmp_path) -> None:
    """R-PLOT: a figure that is a symlink is replaced by a file; a figures/ symlink is refused."""
    result = run(small_config(**{"train.rounds": 1, "output.figures": True}), progress=False)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep me")
    figure = result.path / "figures" / "accuracy.png"
    figure.unlink()
    figure.symlink_to(outside)
    fedsim.plot_run(result.path)
    assert outside.read_bytes() == b"keep me" and not figure.is_symlink() and figure.stat().st_size > 1000
    shutil.rmtree(result.path / "figures")
    (result.path / "figures").symlink_to(tmp_path)
    with pytest.raises(InputError, match="symlink"):
        fedsim.plot_run(result.path)
    assert main(["plot", str(result.path)]) == 2


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_full_disk_fails_the_run_and_keeps_earlier_results(small_config, monkeypatch) -> None:
    """R-ENOSPC: a write failing with ENOSPC -> exit 1, run kept as .failed with its rounds so far; resumable."""
    from fedsim.outputs.recorder import RunRecorder

    original = RunRecorder.add_round

    def add_round(self, row):  # noqa: ANN001
        if row["round"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.rounds_path))
        original(self, row)

    monkeypatch.setattr(RunRecorder, "add_round", add_round)
    config = small_config(**{"train.rounds": 3, "output.name": "full"})
    with pytest.raises(OSError):
        run(config, progress=False)
    failed = Path(config.output.dir) / "full.failed"
    assert len(pd.read_csv(failed / "rounds.csv")) == 2 and "No space left" in (failed / "error.txt").read_text()
    monkeypatch.setattr(RunRecorder, "add_round", original)
    reference = run(small_config(**{"train.rounds": 3, "output.name": "reference"}), progress=False)
    same_results(reference.path, resume(failed, progress=False).path)


def test_a_read_only_output_folder_is_a_clear_input_error(tmp_path, capsys, monkeypatch) -> None:
    """R-READONLY: an output folder that cannot be written -> exit 2, one message, no traceback."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - EACCES even for root (no chmod bypass)
        if str(self).startswith(str(locked)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        status = main(["run", "--set", "data.dataset=synthetic", "--set", "train.rounds=1", "--set",
                       "executor.kind=in-process", "--output", str(locked / "runs"), "--no-progress"])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert status == 2 and "Permission denied" in err and "Traceback" not in err
    assert not list(locked.iterdir())


def test_failed_and_interrupted_runs_leave_no_staging_folder(small_config) -> None:
    """R-STAGING: after a failure or an interruption no hidden staging folder stays behind."""
    config = small_config(**{"train.rounds": 2, "faults.fail_clients": list(range(10)), "output.name": "x"})
    with pytest.raises(RunError):
        run(config, progress=False)
    with pytest.raises(RunInterrupted):
        run(small_config(**{"train.rounds": 2, "output.name": "y"}), progress=False, extensions=[StopAfter(1)])
    names = sorted(p.name for p in Path(config.output.dir).iterdir())
    assert names == ["x.failed", "y.interrupted"]


# -- clear errors, tools ---------------------------------------------------------------------

@pytest.mark.slow  # keeps the fast set under a minute
def test_compare_api_works_twice_and_cli_exits_1_when_a_run_failed(small_config, capsys) -> None:
    """R-COMPARE: fedsim.compare is callable repeatedly; a failed run -> exit status 1 naming it."""
    config = small_config(**{"train.rounds": 1, "evaluation.federated_every": 0})
    first = fedsim.compare(config, "fedavg", progress=False)
    importlib.import_module("fedsim.frontends.comparison")  # importing the module must not shadow the function

    config.output.name = "second"
    second = fedsim.compare(config, "uniform", progress=False)
    assert first.path != second.path and callable(fedsim.compare)
    status = main(["compare", "--set", "data.dataset=synthetic", "--set", "train.rounds=1", "--set",
                   "executor.kind=in-process", "--set", "faults.fail_clients=[0,1,2,3,4,5,6,7,8,9]",
                   "--set", "partition.num_clients=10", "--strategies", "fedavg,centralized", "--output",
                   config.output.dir, "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "FAILED fedavg" in err and "1 of 2 runs failed" in err


def test_set_values_are_toml_or_literal_strings(tmp_path) -> None:
    """R-SET: a --set value that is not valid TOML is taken literally (Windows paths keep their backslashes)."""
    from fedsim.frontends.cli import _load, build_parser

    args = build_parser().parse_args(["run", "--set", r"data.data_dir=C:\data\new", "--set", "train.lr=0.5",
                                      "--output", r"D:\runs\x", "--name", 'quote"d'])
    config = _load(args)
    assert config.data.data_dir == r"C:\data\new" and config.train.lr == 0.5
    assert config.output.dir == r"D:\runs\x" and config.output.name == 'quote"d'


def test_run_failures_are_one_message_and_exit_1(small_config, capsys) -> None:
    """R-ERRORS: too few clients -> exit 1, one message, no traceback (with --verbose: the traceback)."""
    args = ["run", "--set", "data.dataset=synthetic", "--set", "train.rounds=1", "--set",
            "executor.kind=in-process", "--set", "partition.num_clients=4", "--set",
            "faults.fail_clients=[0,1,2,3]", "--output", str(Path(small_config().output.dir)), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "only 0 of" in err and "Traceback" not in err and ".failed" in err
    assert main([*args, "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


# -- Ray: workers and the runtime ------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsim.frontends.cli", *args]


SMALL = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_train=600", "--set", "data.synthetic_test=200",
         "--set", "partition.num_clients=10", "--set", "model.name=lenet5", "--no-progress"]


def _alive_in_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.ray
def test_sigint_stops_a_ray_run_within_seconds_and_ray_is_gone(tmp_path) -> None:
    """R-SIGINT-RAY: one SIGINT during a cohort run on Ray -> exit 130 within seconds; no Ray process stays."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    process = subprocess.Popen(
        _cli("run", *SMALL, "--set", "train.rounds=30", "--set", "executor.kind=cohort", "--set",
             "executor.workers=2", "--set", 'hooks=[{name="tests.user_hooks:Sleepy", seconds=0.2}]',
             "--output", str(tmp_path / "runs"), "--name", "ray"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        staged = list((tmp_path / "runs").glob(".ray.staging-*/rounds.csv"))
        if staged and len(staged[0].read_text().splitlines()) >= 3:  # round 1 finished
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert time.monotonic() - sent < 20, f"took {time.monotonic() - sent:.0f} s to stop"
    kept = tmp_path / "runs" / "ray.interrupted"
    assert Checkpoint.read(kept).server_round >= 1
    gone = time.monotonic() + 30
    while _alive_in_group(process.pid) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not _alive_in_group(process.pid), "Ray processes outlived the run"


@pytest.mark.ray
def test_a_worker_killed_mid_round_is_restarted_and_the_results_do_not_change(small_config, tmp_path) -> None:
    """R-WORKER-DEATH: a cohort worker process dies mid-round -> Ray restarts it, its task runs again: same results."""
    def config(name: str, flag: Path):  # noqa: ANN202
        return small_config(**{"train.rounds": 3, "evaluation.federated_every": 0, "executor.kind": "cohort",
                               "executor.workers": 2, "executor.round_timeout": 120, "output.name": name,
                               "hooks": [{"name": "user_hooks:KillWorker", "client": 3, "flag": str(flag)}]})

    spared = tmp_path / "spared.flag"
    spared.write_text("never kill")
    reference = run(config("reference", spared), progress=False)
    killed = tmp_path / "killed.flag"
    started = time.monotonic()
    result = run(config("killed", killed), progress=False)
    assert killed.exists(), "the worker was not killed"
    assert (result.clients["status"] == "ok").all()
    pd.testing.assert_frame_equal(result.rounds.drop(columns=VOLATILE), reference.rounds.drop(columns=VOLATILE))
    assert time.monotonic() - started < 200


@pytest.mark.ray
def test_a_task_that_kills_its_worker_twice_fails_that_rounds_clients_only(small_config, tmp_path) -> None:
    """R-WORKER-DEATH: the retried task kills its worker again -> its clients fail that round; later rounds run."""
    flag = tmp_path / "kills.flag"
    config = small_config(**{"train.rounds": 2, "evaluation.federated_every": 0, "executor.kind": "cohort",
                             "executor.workers": 2, "executor.round_timeout": 120,
                             "train.min_success_fraction": 0.1,
                             "hooks": [{"name": "user_hooks:KillWorker", "client": 3, "flag": str(flag), "times": 2}]})
    result = run(config, progress=False)
    assert flag.read_text() == "kk"
    train = result.clients[result.clients["phase"] == "train"]
    first = train[train["round"] == 1]
    assert 3 in set(first[first["status"] == "failed"]["client_id"]) and (first["status"] == "ok").any()
    assert (train[train["round"] == 2]["status"] == "ok").all()


@pytest.mark.ray
def test_a_hung_client_on_its_own_flower_node_does_not_hold_the_run(small_config) -> None:
    """R-HANG: a client that never returns fails at the client time limit; the run ends (executor flower)."""
    config = small_config(**{"train.rounds": 1, "evaluation.federated_every": 0, "partition.num_clients": 4,
                             "executor.kind": "flower", "executor.round_timeout": 8,
                             "train.min_success_fraction": 0.5,
                             "hooks": [{"name": "user_hooks:SlowClient", "client": 1, "seconds": 600}]})
    started = time.monotonic()
    result = run(config, progress=False)
    assert time.monotonic() - started < 90, "the run waited for the hung client"
    failed = result.clients[result.clients["status"] == "failed"]
    assert failed["client_id"].tolist() == [1]


@pytest.mark.ray
def test_after_sigkill_no_ray_process_stays_and_the_run_resumes(tmp_path) -> None:
    """R-SIGKILL-RAY: fedsim killed outright -> its Ray processes are gone within seconds; --resume continues."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    process = subprocess.Popen(
        _cli("run", *SMALL, "--set", "train.rounds=3", "--set", "executor.kind=cohort", "--set",
             "executor.workers=2", "--set", 'hooks=[{name="tests.user_hooks:Sleepy", seconds=0.3}]',
             "--output", str(tmp_path / "runs"), "--name", "killed"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if list((tmp_path / "runs").glob(".killed.staging-*/checkpoint/state.json")):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    process.kill()
    process.wait(timeout=30)
    gone = time.monotonic() + 15
    while _alive_in_group(process.pid) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not _alive_in_group(process.pid), "Ray processes outlived the killed run"
    resumed = subprocess.run(_cli("run", "--resume", str(tmp_path / "runs" / "killed"), "--no-progress"),
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "runs" / "killed" / "rounds.csv")) == 4


@pytest.mark.ray
def test_a_small_round_timeout_names_the_round_timeout_not_the_start_up(small_config) -> None:
    """R-TIMEOUT-MESSAGE: start-up has its own allowance; a too-small round_timeout fails naming it."""
    config = small_config(**{"train.rounds": 1, "evaluation.federated_every": 0, "partition.num_clients": 4,
                             "executor.kind": "cohort", "executor.workers": 2,
                             "executor.round_timeout": 1,
                             "hooks": [{"name": "user_hooks:Sleepy", "seconds": 3}]})
    with pytest.raises(RunError, match="round_timeout") as info:
        run(config, progress=False)
    assert "came up" not in str(info.value)


def test_a_damaged_dataset_cache_is_decoded_again(small_config) -> None:
    """R-CACHE: a truncated or inconsistent cache file is detected and rebuilt, with a warning, not trusted."""
    from fedsim.datasets import materialize

    config = small_config(**{"train.rounds": 1})
    dataset = materialize(config.data)
    reference = dataset.load(mmap=False)
    path = dataset.folder / "x_train.npy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="is damaged"):
        rebuilt = materialize(config.data)
    assert all(np.array_equal(rebuilt.load()[k], reference[k]) for k in reference)
    np.save(rebuilt.folder / "y_test.npy", reference["y_test"][:-1])  # one label short of meta.json
    with pytest.warns(UserWarning, match="y_test.npy holds"):
        materialize(config.data)
    assert run(config, progress=False).summary["rounds"] == 1


def test_the_fast_finiteness_check_reads_every_value() -> None:
    """flat_values (the screening's view of an update) equals Array.numpy() for every layout and dtype."""
    from flwr.app import Array

    from fedsim.core.arrays import flat_values, nonfinite_keys

    cases = [np.arange(6, dtype=np.float64).reshape(2, 3), np.asfortranarray(np.ones((3, 4), np.float16)),
             np.array(5, np.int64), np.zeros((0, 3), np.float32), np.random.default_rng(0).normal(size=(7, 5))]
    for values in cases:
        got = flat_values(Array(values))
        assert np.array_equal(np.sort(got), np.sort(values.reshape(-1))), values.dtype
    poisoned = np.ones((4, 4), np.float32)
    poisoned[3, 2] = np.inf
    from flwr.app import ArrayRecord

    record = ArrayRecord({"w": Array(poisoned), "b": Array(np.zeros(4, np.float32)), "n": Array(np.array([3]))})
    assert nonfinite_keys(record) == ["w"]


def _npz(path: Path, y_train: np.ndarray, size: int = 32, y_test: np.ndarray | None = None, **extra) -> Path:
    rng = np.random.default_rng(0)
    y_test = np.arange(40) % 10 if y_test is None else y_test
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), size, size, 3), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 255, (len(y_test), size, size, 3), dtype=np.uint8), y_test=y_test, **extra)
    return path


@pytest.mark.parametrize(("labels", "extra", "message"), [
    (np.r_[np.arange(200) % 10, 255], {}, "labels run up to 255, but ids [10, 11, 12, 13, 14]"),
    (np.r_[np.arange(200) % 10, -1], {}, "labels [-1] are negative"),
    (np.r_[np.arange(200) % 10, 12], {"class_names": np.array([str(i) for i in range(10)])},
     "labels [12] are outside 0..9 (the file names 10 classes)"),
    (np.r_[np.arange(200) % 10, 0.5], {}, "labels must be integer class ids"),
])
def test_labels_outside_the_classes_are_refused_when_the_data_is_loaded(small_config, tmp_path, labels, extra,
                                                                        message) -> None:
    """R-LABELS: a label that is not a class id 0..C-1 is refused at load time, naming file, labels and range."""
    path = _npz(tmp_path / "data.npz", labels, **extra)
    with pytest.raises(InputError, match=re.escape(message)):
        run(small_config(**{"data.dataset": "npz", "data.path": str(path)}), progress=False)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_images_the_models_cannot_take_are_refused_before_the_run(small_config, tmp_path) -> None:
    """R-IMAGES: 28x28 images with a 32x32 model -> one input error naming the model and the size."""
    path = _npz(tmp_path / "small.npz", np.arange(200) % 10, size=28)
    with pytest.raises(InputError, match="model 'lenet5' cannot take the dataset's 28x28 images"):
        run(small_config(**{"data.dataset": "npz", "data.path": str(path)}), progress=False)
    good = _npz(tmp_path / "good.npz", np.arange(200) % 10, size=32)
    assert run(small_config(**{"data.dataset": "npz", "data.path": str(good), "train.rounds": 1,
                               "partition.num_clients": 4}), progress=False).summary["rounds"] == 1


def test_default_names_started_in_the_same_second_do_not_collide(tmp_path) -> None:
    """Two comparisons (or runs) with time-stamped default names in one second get distinct folders."""
    from fedsim.outputs import rundir

    (tmp_path / "compare-20260101-000000").mkdir()
    (tmp_path / ".compare-20260101-000000-2.staging-123").mkdir()
    assert rundir.untaken(tmp_path, "compare-20260101-000000") == tmp_path / "compare-20260101-000000-3"
    assert rundir.untaken(tmp_path, "fresh") == tmp_path / "fresh"
