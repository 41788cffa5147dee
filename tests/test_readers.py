"""The input readers (fedsim.inputs): a bad data file is named by file, line, column and value.

Every file a user supplies (the device file, the availability trace, the config TOML, the npz
dataset) exits with status 2 and a message that points at the bad cell, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.config import ConfigError
from fedsim.config.validation import load_config
from fedsim.frontends.cli import main
from fedsim.inputs import ArraySpec, Column, InputFileError, read_archive, read_document, read_table
from fedsim.timing.availability import TraceError, read_trace
from fedsim.timing.devices import DeviceError, read_device_file

DEVICE_HEADER = "client_id,seconds_per_sample,download_mbps,upload_mbps,latency\n"
SMALL = ["--set", "partition.num_clients=2", "--set", "train.rounds=1", "--set", "data.synthetic_train=100",
         "--set", "data.synthetic_test=40", "--set", "output.figures=false"]


def _run(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """``fedsim run`` with ``args`` into an existing, empty output folder; the status and the folder."""
    out = tmp_path / "runs"
    out.mkdir(exist_ok=True)
    return main(["run", *SMALL, *args, "-o", str(out)]), out


def _devices(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "devices.csv"
    path.write_text(DEVICE_HEADER + "".join(f"{row}\n" for row in rows))
    return path


# -- through the command line: exit 2, the place named, nothing written ---------------------------

def test_a_device_file_word_is_named_by_file_line_column_and_value(tmp_path, capsys) -> None:
    path = _devices(tmp_path, "0,0.1,2,1,0.05", "1,0.1,2,1,fast")
    code, out = _run(tmp_path, "--set", "time.devices.kind=file", "--set", f"time.devices.path={path}")
    assert code == 2
    assert (f"device file '{path}', line 3, column latency: 'fast' is not a number; allowed: a finite number >= 0"
            in capsys.readouterr().err)
    assert not list(out.iterdir())


def test_a_device_file_nan_is_named_by_its_line_and_column(tmp_path, capsys) -> None:
    path = _devices(tmp_path, "0,0.1,nan,1,0.05", "1,0.1,2,1,0.05")
    code, out = _run(tmp_path, "--set", "time.devices.kind=file", "--set", f"time.devices.path={path}")
    assert code == 2
    assert f"device file '{path}', line 2, column download_mbps: 'nan' is not a finite number" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_a_trace_word_is_named_by_file_line_column_and_value(tmp_path, capsys) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,start,end\n0,0,100\n\n1,noon,200\n")  # the blank line 3 counts, as in an editor
    code, out = _run(tmp_path, "--set", "time.devices.kind=tiers", "--set", "time.availability.kind=trace",
                     "--set", f"time.availability.path={trace}")
    assert code == 2
    assert f"trace file '{trace}', line 4, column start: 'noon' is not a number" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_a_devices_path_that_is_a_folder_says_so(tmp_path, capsys) -> None:
    folder = tmp_path / "devices.csv"
    folder.mkdir()
    code, out = _run(tmp_path, "--set", "time.devices.kind=file", "--set", f"time.devices.path={folder}")
    assert code == 2
    assert f"device file '{folder}' is a folder, not a file" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_a_config_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path, capsys) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b"[train]\nrounds = 2 # caf\xe9\n")
    code, out = _run(tmp_path, "--config", str(config))
    assert code == 2
    assert (f"config file '{config}' is not UTF-8 text: byte 0xe9 at byte offset 24 (line 2, column 17)"
            in capsys.readouterr().err)
    assert not list(out.iterdir())


def test_an_npz_dataset_that_is_not_a_zip_names_the_file(tmp_path, capsys) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes(b"x_train,y_train\n1,2\n")
    code, out = _run(tmp_path, "--set", "data.dataset=npz", "--set", f"data.path={data}")
    assert code == 2
    assert f"npz dataset '{data}' is not a readable .npz archive (not a zip file)" in capsys.readouterr().err
    assert not list(out.iterdir())


# -- the readers' own rules -------------------------------------------------------------------------

def test_device_and_trace_errors_carry_the_place_and_stay_their_callers_types(tmp_path) -> None:
    path = _devices(tmp_path, "0,0.1,2,1,0.05", "x,0.1,2,1,0.05")
    with pytest.raises(DeviceError, match="line 3, column client_id: 'x' is not an integer") as info:
        read_device_file(path)
    assert (info.value.path, info.value.row, info.value.column) == (path, 3, "client_id")
    assert isinstance(info.value, InputFileError)
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,start,end\n0,0,10\n0,30,20\n")
    with pytest.raises(TraceError, match=r"line 3, column end: start 30, end 20: every interval needs 0 <= start < end"):
        read_trace(trace)
    trace.write_text("client_id,start,end\n0,0,10,5\n")
    with pytest.raises(TraceError, match="line 2: 4 cells, but the header .line 1. names 3 columns"):
        read_trace(trace)


def test_a_table_checks_kinds_ranges_and_the_header(tmp_path) -> None:
    columns = [Column("id", int, 0), Column("rate", float, 0.0, exclusive=True), Column("name", str)]
    path = tmp_path / "t.csv"
    cases = {
        "id,rate,name\n0,1.5,a\n-1,2,b\n": "line 3, column id: '-1' must be >= 0",
        "id,rate,name\n0,0,a\n": "line 2, column rate: '0' must be > 0",
        "id,rate,name\n0,inf,a\n": "line 2, column rate: 'inf' is not a finite number; allowed: a finite number > 0",
        "id,rate,name\n0,1, \n": "line 2, column name: the cell is empty; allowed: a non-empty text",
        "id,rate,rate,name\n": "the header names the column(s) rate more than once",
        "id,name\n0,a\n": "lacks the column(s) rate; the header (line 1) names id, name",
        "": "is empty; it needs a header line naming the columns id, rate, name",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(InputFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_table(path, columns, "table")
    path.write_text("id,rate,name,note\n\n7,0.5,phone,kept as text\n")
    table = read_table(path, columns, "table")
    assert table.lines.tolist() == [3] and table.frame["id"].dtype == np.int64
    assert table.frame.to_dict("records") == [{"id": 7, "rate": 0.5, "name": "phone", "note": "kept as text"}]
    with pytest.raises(InputFileError, match="does not exist .no such file."):
        read_table(tmp_path / "absent.csv", columns, "table")


def test_an_archive_names_the_array_of_each_problem(tmp_path) -> None:
    path = tmp_path / "a.npz"
    specs = [ArraySpec("x", "u", (2,)), ArraySpec("y", "if")]
    np.savez(path, x=np.zeros((2, 2), np.uint8))
    with pytest.raises(InputFileError, match=r"lacks the arrays \['y'\]"):
        read_archive(path, specs, "archive")
    np.savez(path, x=np.zeros((2, 2), np.float32), y=np.zeros(2))
    with pytest.raises(InputFileError, match=r"array x: has dtype float32; allowed: unsigned integers"):
        read_archive(path, specs, "archive")
    np.savez(path, x=np.zeros(2, np.uint8), y=np.zeros(2))
    with pytest.raises(InputFileError, match=r"array x: has shape \(2,\)"):
        read_archive(path, specs, "archive")
    np.savez(path, x=np.zeros((2, 2), np.uint8), y=np.array([0.0, np.nan]))
    with pytest.raises(InputFileError, match=r"array y: 1 value\(s\) are not finite .* at index \(1,\)") as info:
        read_archive(path, specs, "archive")
    assert info.value.column == "y"
    np.savez(path, x=np.zeros((2, 2), np.uint8), y=np.array([{"code": 1}, None], dtype=object))
    with pytest.raises(InputFileError, match="array y: holds Python objects, which need pickle"):
        read_archive(path, specs, "archive")
    np.savez(path, x=np.zeros((2, 2), np.uint8), y=np.arange(2))
    assert read_archive(path, specs, "archive")["y"].tolist() == [0, 1]


def test_a_toml_syntax_error_names_the_line_and_column(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\nrounds = = 3\n")
    with pytest.raises(InputFileError, match=r"c.toml' is not valid TOML: line 2, column 10: Invalid value") as info:
        read_document(path, "config file")
    assert (info.value.row, info.value.column) == (2, 10)
    with pytest.raises(ConfigError, match=r"is not valid TOML: line 2, column 10"):
        load_config(path)
    path.write_bytes(b"\xef\xbb\xbf[train]\nrounds = 3\n")  # a byte-order mark, as some editors write
    assert load_config(path).train.rounds == 3
