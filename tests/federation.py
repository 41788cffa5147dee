"""A Flower federation of separate processes for the end-to-end tests: a SuperLink, SuperNodes, ``flwr run``.

Everything runs offline: the SuperLink is started with ``--disable-runtime-dependency-installation``
(the app runs in this environment, nothing is installed), telemetry is off, ``FLWR_HOME`` is a
temporary folder and every port is free-picked. :meth:`LocalFederation.close` stops every
process the federation started, including the ones Flower started under them (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``: found by the ports on their command lines), on every exit
path: use it as a context manager.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalFederation:
    """A SuperLink (``simulation=True``: Flower's simulation runtime) and SuperNodes on this machine."""

    def __init__(self, home: Path, simulation: bool = False) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.ports = [self.port]
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n'
            f'[superlink.test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        command = [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                   "--host", "127.0.0.1", "--port", str(self.port), "--database", str(home / "state.db")]
        try:
            self._start("superlink", command + (["--simulation"] if simulation else []))
            self._wait_until_listening(self.port, "superlink")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ processes

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True, cwd=self.home)
        log.close()
        self.processes[name] = process
        return process

    def _wait_until_listening(self, port: int, name: str, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not listen on {port} within {seconds:.0f} s:\n{self.log(name)}")

    def add_node(self, name: str, node_config: str) -> None:
        """A SuperNode with ``--node-config node_config`` (e.g. ``"partition-id=0 num-partitions=3"``)."""
        port = free_port()
        self.ports.append(port)
        self._start(name, [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                           "--port", str(port), "--node-config", node_config])
        self._wait_until_listening(port, name)

    def stop(self, name: str) -> None:
        """Stop one process and its process group (TERM, then KILL after 10 s)."""
        process = self.processes.pop(name)
        _kill_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            process.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def flwr(self, *args: str, timeout: float = 600.0, cwd: Path = PROJECT) -> subprocess.CompletedProcess:
        """``flwr ARGS`` against this federation (its own process group, killed on a timeout)."""
        process = subprocess.Popen([str(BIN / "flwr"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=self.env, cwd=cwd, text=True, start_new_session=True)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            out, _ = process.communicate()
            raise RuntimeError(f"flwr {' '.join(args)} did not finish within {timeout:.0f} s:\n{out[-4000:]}"
                               f"\n--- superlink ---\n{self.log('superlink')}") from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, "")

    def run_app(self, run_config: str, timeout: float = 600.0) -> Path:
        """``flwr run . test --stream --run-config RUN_CONFIG``; the run directory it printed."""
        result = self.flwr("run", ".", "test", "--stream", "--run-config", run_config, timeout=timeout)
        found = re.search(r"fedsim run directory: (\S+)", result.stdout)
        if result.returncode != 0 or found is None:
            raise RuntimeError(f"flwr run failed ({result.returncode}):\n{result.stdout[-6000:]}")
        return Path(found.group(1))

    def leftovers(self) -> list[str]:
        """Command lines of live processes that belong to this federation (by its ports or home)."""
        marks = [f":{p}" for p in self.ports] + [str(self.home)]
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(mark in cmdline for mark in marks):
                found.append(f"{entry.name}: {cmdline.strip()}")
        return found

    def close(self) -> None:
        """Stop every process: TERM to each group, KILL what is left after 10 s, then any stragglers."""
        for process in self.processes.values():
            _kill_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
        for _ in range(50):  # processes Flower started in sessions of their own
            left = self.leftovers()
            if not left:
                return
            for line in left:
                try:
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
