"""The exit statuses are a contract: one case per status that must produce it.

0 success; 1 the run failed (kept as ``.failed`` with ``error.txt``); 2 bad input, nothing
written (every optional import checked first, an output path that is a file refused); 130
SIGINT and 143 SIGTERM, kept as ``.interrupted`` without a crash dump. Also: Ray's teardown
noise is hidden without ``--verbose``, and a bad config under ``flwr run`` is one logged line.
The subprocess and Ray cases are marked ``slow`` / ``ray``; the handler and the CLI's mapping
have fast unit tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedsim.config import ConfigError
from fedsim.core.checkpoint import Checkpoint
from fedsim.core.extension import RoundExtension
from fedsim.frontends import cli, flower_app
from fedsim.frontends.cli import main
from fedsim.ops import interrupt, logs
from fedsim.ops.interrupt import RunInterrupted, check_stop, handling_interrupts, reclaim_signals
from fedsim.outputs import rundir
from fedsim.runs import simulate
from fedsim.runs.experiment import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_train=200", "--set", "data.synthetic_test=100",
        "--set", "partition.num_clients=4", "--set", "model.name=lenet5", "--set", "train.rounds=1",
        "--set", "executor.kind=in-process", "--set", "output.figures=false", "--no-progress"]
CRASH_TEXT = ("core dumped", "SIGABRT", "*** SIG", "Fatal Python error", "Traceback")
TERMINATE_NOISE = ("(raylet) Task ClientAppActor.terminate failed. There are 1 retries remaining, so the task "
                   "will be retried. Error: The actor died because of an error raised in its creation task")


@pytest.fixture(autouse=True)
def _no_stop_left_behind():  # noqa: ANN202
    """A stop these tests request must not reach later tests' code that checks for one outside a run."""
    yield
    interrupt.clear_stop()


def _run(tmp_path: Path, *args: str) -> int:
    return main(["run", *TINY, "--output", str(tmp_path / "runs"), *args])


# -- 0, 1, 2 -------------------------------------------------------------------------------

def test_a_finished_run_exits_0(tmp_path, capsys) -> None:
    """R-EXIT: a run that finishes -> 0, published under its name."""
    assert _run(tmp_path, "--name", "done") == 0
    assert rundir.is_run_directory(tmp_path / "runs" / "done")
    assert "run directory:" in capsys.readouterr().out


def test_a_run_whose_clients_all_fail_exits_1_and_keeps_its_output(tmp_path, capsys) -> None:
    """R-EXIT: every client fails -> 1, kept as <name>.failed with error.txt."""
    assert _run(tmp_path, "--name", "broken", "--set", "faults.fail_clients=[0,1,2,3]") == 1
    assert (tmp_path / "runs" / "broken.failed" / "error.txt").is_file()
    assert "run failed" in capsys.readouterr().err


def test_a_bad_value_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    """R-EXIT: a bad config value -> 2, naming the key; no output folder at all."""
    assert _run(tmp_path, "--set", "train.rounds=0") == 2
    assert "train.rounds = 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_output_path_that_is_a_file_exits_2_naming_it(tmp_path, capsys) -> None:
    """R-EXIT: --output naming a file, or a path under a file -> 2, naming the file; nothing written."""
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    for output in (taken, taken / "runs"):
        assert main(["run", *TINY, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"output.dir = '{output}'" in err and f"{taken} is not a folder" in err
    assert taken.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_tensorboard_that_cannot_be_imported_exits_2_before_anything_is_written(tmp_path, monkeypatch,
                                                                                capsys) -> None:
    """R-EXIT: --tensorboard without an importable tensorboard -> 2 naming the package; no folder, no .failed."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    assert _run(tmp_path, "--name", "tb", "--tensorboard") == 2
    err = capsys.readouterr().err
    assert "output.tensorboard = True: needs the tensorboard package" in err and "pip install tensorboard" in err
    assert "partial output" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_parquet_without_its_engine_exits_2_before_anything_is_written(tmp_path, monkeypatch, capsys) -> None:
    """R-EXIT: output.format = "parquet" without pyarrow (or fastparquet) -> 2 naming the key and package."""
    for module in ("pyarrow", "fastparquet"):
        monkeypatch.setitem(sys.modules, module, None)
    assert _run(tmp_path, "--name", "pq", "--set", "output.format=parquet") == 2
    assert "output.format = 'parquet': needs the pyarrow package" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dp_accounting_without_opacus_is_refused_naming_the_strategy(small_config, monkeypatch) -> None:
    """R-EXIT: a DP strategy needs opacus for its accountant: without it, a ConfigError (exit 2) before the run."""
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    with pytest.raises(ConfigError, match="strategy.name = 'dp-fixed-server': needs the opacus package"):
        small_config(**{"strategy.name": "dp-fixed-server", "strategy.kwargs.noise_multiplier": 0.1,
                        "strategy.kwargs.clipping_norm": 1.0})
    small_config(**{"strategy.name": "fedavg"})  # no DP, no accountant: opacus is not asked for


# -- 130 and 143: the handler and the CLI's mapping ------------------------------------------

def _installed(signum: int):  # noqa: ANN202 - the Python-level handler of signum
    handler = signal.getsignal(signum)
    assert callable(handler), f"no Python handler for {signal.Signals(signum).name}"
    return handler


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_requests_a_stop_and_a_second_aborts(signum, status) -> None:
    """R-SIGTERM: SIGTERM is handled like SIGINT: a stop request that remembers the signal; a second one aborts."""
    before = signal.getsignal(signum)
    with handling_interrupts():
        handler = _installed(signum)
        handler(signum, None)
        assert interrupt.stop_requested() and interrupt.stop_signal() == signum
        with pytest.raises(RunInterrupted) as stopped:
            check_stop()
        assert stopped.value.signum == signum and stopped.value.exit_status == status
        with pytest.raises(KeyboardInterrupt):
            handler(signum, None)
    assert signal.getsignal(signum) is before  # the block gives the handler back


def test_reclaim_signals_takes_sigterm_back_from_a_library() -> None:
    """R-SIGTERM: after something replaced SIGTERM's handler (ray.init does), fedsim's is put back."""
    with handling_interrupts():
        ours = _installed(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # what ray.init installs
        reclaim_signals()
        assert signal.getsignal(signal.SIGTERM) is ours


def test_starting_ray_keeps_fedsims_sigterm_handler(monkeypatch) -> None:
    """R-SIGTERM: fedsim starts Ray with Flower's arguments, then takes SIGTERM back from ray.init's handler."""
    calls: list[dict] = []

    def init(**kwargs) -> None:  # noqa: ANN003 - what ray.init does to SIGTERM in the driver
        calls.append(kwargs)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    fake_ray = types.ModuleType("ray")
    fake_ray.is_initialized = lambda: bool(calls)
    fake_ray.init = init
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with handling_interrupts():
        ours = _installed(signal.SIGTERM)
        simulate.start_ray({"num_cpus": 2, "log_to_driver": False})
        assert signal.getsignal(signal.SIGTERM) is ours
        simulate.start_ray({"num_cpus": 2})  # Ray runs already: not started twice
    (kwargs,) = calls
    assert kwargs["num_cpus"] == 2 and kwargs["include_dashboard"] is False and not kwargs["log_to_driver"]
    assert kwargs["runtime_env"]["env_vars"]["PYTHONPATH"].endswith(os.pathsep + "/elsewhere")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_cli_exits_128_plus_the_signal_that_stopped_the_run(monkeypatch, capsys, signum, status) -> None:
    """R-SIGTERM: a run stopped by SIGINT exits 130, by SIGTERM 143."""
    def stopped_by_a_signal(args) -> int:  # noqa: ANN001
        with handling_interrupts():
            _installed(signum)(signum, None)
            check_stop()
        return 0

    monkeypatch.setattr(cli, "_dispatch", stopped_by_a_signal)
    assert main(["run"]) == status
    assert f"(stopped by {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'})" in capsys.readouterr().err


class SignalAfter(RoundExtension):
    """Delivers ``signum`` to fedsim's handler at the end of round ``server_round`` (as the kernel would)."""

    def __init__(self, signum: int, server_round: int = 1) -> None:
        self.signum, self.server_round = signum, server_round

    def on_round_end(self, record, arrays) -> None:  # noqa: ANN001
        if record.server_round == self.server_round:
            _installed(self.signum)(self.signum, None)


def test_sigterm_keeps_the_run_as_interrupted_with_its_checkpoint(small_config) -> None:
    """R-SIGTERM: SIGTERM during a run -> RunInterrupted (exit status 143), kept as <name>.interrupted."""
    config = small_config(**{"train.rounds": 2, "output.name": "termed"})
    with pytest.raises(RunInterrupted) as stopped:
        run(config, progress=False, extensions=[SignalAfter(signal.SIGTERM)])
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_status == 143
    kept = Path(config.output.dir) / "termed.interrupted"
    assert Checkpoint.read(kept).server_round == 1


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_cli_exits_128_plus_it_and_keeps_the_run(tmp_path, signum, status) -> None:
    """R-EXIT, R-SIGTERM: SIGINT / SIGTERM to `fedsim run` -> 130 / 143, <name>.interrupted, no crash text."""
    args = [*TINY, "--set", "train.rounds=20", "--set", 'hooks=[{name="tests.user_hooks:Sleepy", seconds=0.05}]',
            "--output", str(tmp_path / "runs"), "--name", "stopped"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    process = subprocess.Popen([sys.executable, "-m", "fedsim.frontends.cli", "run", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # wait for round 1's row
        staged = list((tmp_path / "runs").glob(".stopped.staging-*/rounds.csv"))
        if staged and len(staged[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert rundir.is_run_directory(tmp_path / "runs" / "stopped.interrupted")
    assert not [text for text in CRASH_TEXT if text in stderr], stderr


# -- Ray's teardown noise ------------------------------------------------------------------

def test_rays_actor_teardown_line_is_noise_and_real_errors_are_not() -> None:
    """R-EXIT: the `(raylet) Task ClientAppActor.terminate failed ...` line is teardown noise; a client's is not."""
    assert logs.is_teardown_noise(TERMINATE_NOISE)
    assert logs.is_teardown_noise("\x1b[33m(raylet)\x1b[0m Task ClientAppActor.terminate failed. There are 0 "
                                  "retries remaining")
    for real in ("(raylet) Task ClientAppActor.run failed. There are 1 retries remaining, so the task will be "
                 "retried. Error: out of memory",
                 "(raylet) A worker died or was killed while executing a task by an unexpected system error.",
                 "(ClientAppActor pid=123) RuntimeError: terminate called after throwing an instance"):
        assert not logs.is_teardown_noise(real)


def test_the_drivers_printer_drops_the_noise_unless_verbose(monkeypatch) -> None:
    """R-EXIT: within quiet_ray_teardown Ray's printer skips the noise and prints the rest; --verbose prints all."""
    printed: list[list[str]] = []
    worker = types.ModuleType("ray._private.worker")
    worker.print_to_stdstream = lambda data, ignore_prefix: printed.append(data["lines"])
    private = types.ModuleType("ray._private")
    private.worker = worker
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    monkeypatch.setitem(sys.modules, "ray._private", private)
    monkeypatch.setitem(sys.modules, "ray._private.worker", worker)
    real = "Task ClientAppActor.run failed: the client raised"
    with logs.quiet_ray_teardown(verbose=False):
        worker.print_to_stdstream({"lines": [TERMINATE_NOISE], "pid": "raylet"}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": [TERMINATE_NOISE, real], "pid": "raylet"}, ignore_prefix=False)
    with logs.quiet_ray_teardown(verbose=True):
        worker.print_to_stdstream({"lines": [TERMINATE_NOISE], "pid": "raylet"}, ignore_prefix=False)
    assert printed == [[real], [TERMINATE_NOISE]]


@pytest.mark.ray
def test_a_ray_run_prints_no_teardown_noise_and_sigterm_stops_it_cleanly(tmp_path) -> None:
    """R-EXIT, R-SIGTERM: on Ray, a plain run prints no `ClientAppActor.terminate` line; SIGTERM -> 143,
    <name>.interrupted, no crash dump."""
    common = [*TINY, "--set", "executor.kind=cohort", "--set", "executor.workers=2", "--output", str(tmp_path / "runs")]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    plain = subprocess.run([sys.executable, "-m", "fedsim.frontends.cli", "run", *common, "--name", "plain"],
                           env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "ClientAppActor.terminate" not in plain.stdout + plain.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim.frontends.cli", "run", *common, "--set", "train.rounds=30", "--set",
         'hooks=[{name="tests.user_hooks:Sleepy", seconds=0.2}]', "--name", "termed"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        staged = list((tmp_path / "runs").glob(".termed.staging-*/rounds.csv"))
        if staged and len(staged[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert Checkpoint.read(tmp_path / "runs" / "termed.interrupted").server_round >= 1
    assert not [text for text in CRASH_TEXT if text in stderr], stderr[-3000:]


# -- flwr run . ----------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("run_config", "named"), [
    ({"config-file": "configs/no-such-file.toml"}, "config-file = 'configs/no-such-file.toml': no such file"),
    ({"overrides": "train.rounds"}, "train.rounds"),
    ({"overrides": "train.rounds=0; train.lr=-1"}, "train.rounds = 0"),
])
def test_a_bad_flower_run_config_is_one_logged_line_without_a_traceback(tmp_path, monkeypatch, run_config,
                                                                        named) -> None:
    """R-EXIT: under `flwr run`, a bad config -> one ERROR line naming the key or file; the run fails
    (Flower's report of the exception, with its traceback, is dropped)."""
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger(flower_app.FLOWER_LOGGER)
    records = _Records()
    logger.addHandler(records)
    try:
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
        with pytest.raises(flower_app.LoggedInputError) as failed:
            flower_app.main(grid=None, context=context)
        try:  # what Flower's runtime does with the exception: log it with its traceback
            raise failed.value
        except flower_app.LoggedInputError as error:
            logger.error("ServerApp raised an exception", exc_info=error)
        logger.error("Exit Code: 201")
    finally:
        logger.removeHandler(records)
    assert [r.getMessage() for r in records.records][1:] == ["Exit Code: 201"]
    line = records.records[0]
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert line.getMessage().startswith("fedsim: error: ") and named in line.getMessage()
    assert "\n" not in line.getMessage() and "\n" not in str(failed.value)
    assert not (tmp_path / "runs").exists()
