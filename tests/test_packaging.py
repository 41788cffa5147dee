"""A non-editable install works: the wheel holds every package and runs a tiny experiment.

Builds the wheel, checks it contains every package folder of the source tree (computed from
the tree, so a new subpackage cannot be forgotten), installs it into a fresh virtual
environment and runs ``fedsim run`` from there, outside the repository. The third-party
dependencies come from this environment (a ``.pth`` path line: the wheel is installed with
``--no-deps``, and no network is needed); the source tree and its editable install are not
visible to the new environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"fedsim": "fedsim", "strategies": "fedsim/strategies", "clients": "fedsim/clients",
         "datasets": "fedsim/datasets"}


def _source_packages() -> set[str]:
    """Every package folder of the source tree, as its path inside the wheel."""
    found = set()
    for folder, installed in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(f"{installed}/{init.parent.relative_to(ROOT / folder).as_posix()}/__init__.py"
                          .replace("/./", "/"))
    return found


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_runs(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), "-q"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fedsim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _source_packages() - names
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert "fedsim/clients/hooks/__init__.py" in names and "fedsim/strategies/arguments.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import fedsim.clients.hooks as h; print(h.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.strip().startswith(str(venv)), f"imported from {where.stdout.strip()}, not the wheel"

    ran = subprocess.run([venv / "bin" / "fedsim", "run", "--set", "data.dataset=synthetic", "--set",
                          "data.synthetic_train=300", "--set", "data.synthetic_test=100", "--set",
                          "partition.num_clients=4", "--set", "train.rounds=2", "--set",
                          "executor.kind=in-process", "--output", str(tmp_path / "runs"), "--name", "wheel",
                          "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rounds = pd.read_csv(tmp_path / "runs" / "wheel" / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2]
    assert (tmp_path / "runs" / "wheel" / "summary.json").is_file()
