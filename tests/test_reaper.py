"""The reaper kills what a killed fedsim started, orphans included, and nothing else (Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.ops.reaper import _stat

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the reaper needs /proc (Linux)")

# The watched process starts its reaper, then a child that starts a sleeper and exits at once:
# the sleeper is orphaned (reparented away from the watched tree) immediately, so only the
# environment tag can find it. It writes the sleeper's pid and waits to be killed.
OWNER = r"""
import subprocess, sys, time
from fedsim.ops.reaper import start_reaper
start_reaper()
launcher = subprocess.run([sys.executable, "-c",
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"], capture_output=True, text=True, check=True)
print(launcher.stdout.strip(), flush=True)
time.sleep(120)
"""


def _gone(pid: int, started: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stat = _stat(pid)
        if stat is None or stat[1] != started:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # keeps the fast set under a minute
def test_a_process_orphaned_just_before_the_kill_is_killed_with_its_owner() -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        orphan = int(owner.stdout.readline())
        orphan_start = _stat(orphan)
        assert orphan_start is not None and orphan_start[0] != owner.pid  # not in the owner's tree
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _gone(orphan, orphan_start[1], within=10), "the orphaned sleeper outlived its killed owner"
        assert bystander.poll() is None, "the reaper killed a process its owner did not start"
    finally:
        bystander.kill()
        owner.kill()
