"""One owner per run folder: the claim ``.<name>.claim`` (R-ONE-OWNER in docs/reliability.md).

A live holder is simulated by a ``sleep`` child process whose pid the claim's ``owner.json``
names; a dead one by the pid of a child that has finished. Runs are tiny synthetic ones in
this process; the race of two real ``fedsim run`` processes is the ``slow`` test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fedsim
from fedsim.errors import InputError, RunError
from fedsim.frontends.cli import main
from fedsim.ops.interrupt import RunInterrupted
from fedsim.outputs import claims, rundir
from fedsim.runs.experiment import resume, run
from interrupting import StopAfter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a process that stays alive for the test (a child ``sleep``)."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def hold(final: Path, pid: int, host: str | None = None, what: str = "run") -> Path:
    """Make ``final``'s claim as process ``pid`` on ``host`` (this host by default) would have."""
    claim = claims.claim_path(final)
    claim.mkdir(parents=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": time.time(), "what": what}
    (claim / claims.OWNER).write_text(json.dumps(owner))
    return claim


def hidden(folder: Path) -> list[str]:
    """The claim and staging folders left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_second_claim_of_a_name_is_refused_naming_the_holder(tmp_path, live_pid) -> None:
    """R-ONE-OWNER: a held name is refused with the holder's pid and host; the holder's claim is untouched."""
    final = tmp_path / "same"
    claim = claims.acquire(final)
    assert claim == tmp_path / ".same.claim" and claims.holds(final)
    with pytest.raises(rundir.RunDirectoryExists, match=f"process {os.getpid()} on host {socket.gethostname()}"):
        claims.acquire(final)  # this very process, a second time (e.g. two runs of one name in one run_many)
    claims.release(final)
    assert not claim.exists()

    other = tmp_path / "other"
    held = hold(other, live_pid, what="comparison")
    with pytest.raises(rundir.RunDirectoryExists) as refused:
        claims.acquire(other)
    message = str(refused.value)
    assert f"{other} is being written by a comparison: process {live_pid} on host {socket.gethostname()}" in message
    assert "(claim .other.claim)" in message and "choose another name" in message
    claims.release(other)  # not this process's claim: left alone
    assert json.loads((held / claims.OWNER).read_text())["pid"] == live_pid


def test_a_run_whose_name_is_held_is_refused_with_exit_2_and_writes_nothing(small_config, live_pid, capsys) -> None:
    """R-ONE-OWNER: the race of two runs of one name, in one process: the second is refused before writing."""
    config = small_config(**{"train.rounds": 1, "output.name": "same"})
    out = Path(config.output.dir)
    hold(out / "same", live_pid)
    with pytest.raises(rundir.RunDirectoryExists, match=f"process {live_pid}"):
        run(config, progress=False)
    assert hidden(out) == [".same.claim"] and not (out / "same").exists()
    status = main(["run", "--set", "data.dataset=synthetic", "--set", "data.synthetic_train=600", "--set",
                   "data.synthetic_test=200", "--set", "train.rounds=1", "--set", "executor.kind=in-process",
                   "--output", str(out), "--name", "same", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and f"{out / 'same'} is being written by a run: process {live_pid}" in err
    assert "Traceback" not in err and hidden(out) == [".same.claim"]
    assert json.loads((out / ".same.claim" / claims.OWNER).read_text())["pid"] == live_pid


def test_a_stale_claim_of_a_dead_process_is_taken_over(small_config, dead_pid) -> None:
    """R-ONE-OWNER: a claim whose process on this host is gone is taken over; the run succeeds and releases it."""
    config = small_config(**{"train.rounds": 1, "output.name": "stale"})
    out = Path(config.output.dir)
    hold(out / "stale", dead_pid)
    result = run(config, progress=False)
    assert result.path == out / "stale" and hidden(out) == []

    final = out / "again"
    hold(final, dead_pid)
    claims.acquire(final)
    assert json.loads((claims.claim_path(final) / claims.OWNER).read_text())["pid"] == os.getpid()
    assert hidden(out) == [".again.claim"]  # the stale claim was moved aside and deleted


def test_a_claim_from_another_host_is_respected_and_names_the_folder_to_delete(tmp_path, dead_pid) -> None:
    """R-ONE-OWNER: another host's claim is never taken over (its pid means nothing here); the message names it."""
    final = tmp_path / "shared"
    claim = hold(final, dead_pid, host="elsewhere.example")
    with pytest.raises(rundir.RunDirectoryExists) as refused:
        claims.acquire(final)
    message = str(refused.value)
    assert f"process {dead_pid} on host elsewhere.example" in message
    assert "another host" in message and f"delete the folder {claim}" in message
    assert (claim / claims.OWNER).is_file()


def test_a_claim_without_an_owner_is_waited_for_and_taken_over_when_old(tmp_path) -> None:
    """R-ONE-OWNER: a claim without owner.json is being made (refused) unless older than a minute (abandoned)."""
    final = tmp_path / "half"
    claim = claims.claim_path(final)
    claim.mkdir()
    with pytest.raises(rundir.RunDirectoryExists, match="being claimed by another process right now"):
        claims.acquire(final)
    old = time.time() - claims.UNOWNED_CLAIM_SECONDS - 5
    os.utime(claim, (old, old))
    claims.acquire(final)
    assert claims.holds(final)


def test_the_claim_is_released_on_every_exit_path(small_config, monkeypatch) -> None:
    """R-ONE-OWNER: no claim stays after success, a failed run, an interruption, a failed preparation, a resume."""
    import fedsim.runs.prepare as prepare

    config = small_config(**{"train.rounds": 1, "output.name": "ok"})
    out = Path(config.output.dir)
    run(config, progress=False)
    assert hidden(out) == []
    with pytest.raises(RunError):
        run(small_config(**{"train.rounds": 1, "faults.fail_clients": list(range(10)), "output.name": "bad"}),
            progress=False)
    assert hidden(out) == [] and (out / "bad.failed").is_dir()
    with pytest.raises(RunInterrupted):
        run(small_config(**{"train.rounds": 2, "output.name": "stop"}), progress=False, extensions=[StopAfter(1)])
    assert hidden(out) == [] and (out / "stop.interrupted").is_dir()
    resume(out / "stop.interrupted", progress=False, extensions=[StopAfter(99)])
    assert hidden(out) == [] and (out / "stop").is_dir()

    def broken(plan) -> None:  # noqa: ANN001 - a step of preparation that fails after the claim was made
        assert claims.holds(plan.final)
        raise OSError("the disk went away")

    monkeypatch.setattr(prepare, "write_inputs", broken)
    with pytest.raises(OSError, match="the disk went away"):
        run(small_config(**{"train.rounds": 1, "output.name": "prep"}), progress=False)
    assert hidden(out) == [] and not (out / "prep").exists()


def test_two_resumes_of_one_run_are_one_continuing_and_one_refused(small_config, live_pid) -> None:
    """R-ONE-OWNER: resuming a run whose name another process holds is refused; a folder already taken over too."""
    config = small_config(**{"train.rounds": 2, "output.name": "twice"})
    out = Path(config.output.dir)
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(1)])
    kept = out / "twice.interrupted"
    claim = hold(out / "twice", live_pid)
    with pytest.raises(rundir.RunDirectoryExists, match=f"process {live_pid}"):
        resume(kept, progress=False)
    assert kept.is_dir() and main(["run", "--resume", str(kept), "--no-progress"]) == 2
    (claim / claims.OWNER).unlink()
    claim.rmdir()
    gone = out / "vanished.interrupted"  # found by one resumer, then taken over by another before the claim
    with pytest.raises(InputError, match="taken over by another process"):
        rundir.claim(gone, out / "vanished")
    assert hidden(out) == []


def test_default_names_move_on_past_a_claim_even_one_made_in_between(small_config, live_pid, monkeypatch) -> None:
    """R-ONE-OWNER: a default name is never refused: a claimed one is skipped, a lost claim race takes the next."""
    monkeypatch.setattr(rundir, "default_run_name", lambda config: "fixed")
    config = small_config(**{"train.rounds": 1})
    out = Path(config.output.dir)
    hold(out / "fixed", live_pid)
    assert run(config, progress=False).path == out / "fixed-2"

    looked = rundir.untaken

    def untaken_then_claimed(parent: Path, name: str) -> Path:  # another process claims it right after the look
        free = looked(parent, name)
        if free.name == "fixed-3":
            hold(free, live_pid)
        return free

    monkeypatch.setattr(rundir, "untaken", untaken_then_claimed)
    assert run(config, progress=False).path == out / "fixed-4"
    assert hidden(out) == [".fixed-3.claim", ".fixed.claim"]


def test_a_comparison_folder_is_claimed_likewise(small_config, live_pid, capsys) -> None:
    """R-ONE-OWNER: `fedsim compare` refuses a held output folder with exit 2 and releases its own claim."""
    config = small_config(**{"train.rounds": 1, "evaluation.federated_every": 0, "output.name": "cmp"})
    out = Path(config.output.dir)
    hold(out / "cmp", live_pid)
    with pytest.raises(rundir.RunDirectoryExists, match=f"process {live_pid}"):
        fedsim.compare(config, "fedavg", progress=False)
    assert hidden(out) == [".cmp.claim"]
    status = main(["compare", "--set", "data.dataset=synthetic", "--set", "train.rounds=1", "--set",
                   "executor.kind=in-process", "--strategies", "centralized", "--output", str(out),
                   "--name", "cmp", "--no-progress"])
    assert status == 2 and f"{out / 'cmp'} is being written by a run: process {live_pid}" in capsys.readouterr().err
    config.output.name = "mine"
    result = fedsim.compare(config, "centralized", progress=False)
    assert result.path == out / "mine" and hidden(out) == [".cmp.claim"]
    assert not list((out / "mine" / "runs").glob(".*"))  # the runs inside released theirs too


@pytest.mark.slow
def test_two_fedsim_runs_of_one_name_at_once_give_one_success_and_one_exit_2(tmp_path) -> None:
    """R-ONE-OWNER: two `fedsim run --name same` started together: one exits 0, the other 2 naming the folder."""
    config = tmp_path / "tiny.toml"
    config.write_text('[data]\ndataset = "synthetic"\nsynthetic_train = 600\nsynthetic_test = 200\n'
                      '[partition]\nnum_clients = 4\n[model]\nname = "lenet5"\n[train]\nrounds = 1\n'
                      '[executor]\nkind = "in-process"\n[output]\nfigures = false\n')
    out = tmp_path / "runs"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "fedsim.frontends.cli", "run", "--config", str(config),
                                 "--output", str(out), "--no-progress", *extra], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    pair = [start("--name", "same"), start("--name", "same")]
    ended = [(p.wait(timeout=300), p.communicate()[1]) for p in pair]
    assert sorted(status for status, _ in ended) == [0, 2], ended
    refused = next(err for status, err in ended if status == 2)
    assert str(out / "same") in refused and "Traceback" not in refused
    assert rundir.is_run_directory(out / "same") and hidden(out) == []

    pair = [start(), start()]  # default (time-stamped) names: both succeed, in different folders
    assert [p.wait(timeout=300) for p in pair] == [0, 0]
    assert len([p for p in out.iterdir() if rundir.is_run_directory(p)]) == 3 and hidden(out) == []
