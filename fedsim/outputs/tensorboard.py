"""TensorBoard event files of a run, written next to its tables (``output.tensorboard``).

:class:`TensorBoardLog` is a round extension (:mod:`fedsim.core.extension`) that mirrors what the
run records into ``<run dir>/tensorboard/`` with ``torch.utils.tensorboard.SummaryWriter``:

- every numeric ``rounds.csv`` column as a scalar per round (:data:`SCALAR_TAGS`; step = round,
  round 0 being the initial model when the run evaluates it);
- the round's successful clients per phase as histograms (:data:`HISTOGRAM_TAGS`);
- the partition's label-distribution heat map as an image and the run's ``config.toml`` as
  text (step 0).

The tables stay the record; the event files are a view of them. That is why the extension
reads the rows back from ``rounds.csv`` / ``clients.csv`` -- only the bytes appended since its
last read -- instead of rebuilding them: a scalar is exactly the value in the table, including
``wall_seconds`` (set by the loop after the extensions' ``on_round_end``) and the rows other
extensions add. A round is written once its ``rounds.csv`` row exists: at the next round's end,
at a checkpoint (right after the row), at the run's end, or when the run stops
(:meth:`TensorBoardLog.close`, which :func:`fedsim.runs.server.execute` calls on every exit path).

The run directory is written in a staging folder and renamed when published
(:mod:`fedsim.outputs.rundir`), so the event files live inside it and move with it; the writer is
closed before that. A resumed run appends a new event file to the same folder, opened with
``purge_step`` = the checkpoint's round + 1 (TensorBoard drops whatever the interrupted run
wrote after its checkpoint), and goes on reading the tables from the checkpoint's position
(:meth:`state`), so every step is in the logs once.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord

from fedsim.datasets import heatmap_figure
from fedsim.errors import InputError
from fedsim.core.extension import (
    PHASE_EVALUATE,
    PHASE_TRAIN,
    RoundExtension,
    RoundRecord,
    RunContext,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

FOLDER = "tensorboard"  # inside the run directory

# rounds.csv column -> scalar tag; a numeric column not named here is logged as "rounds/<column>"
SCALAR_TAGS: dict[str, str] = {
    "test_accuracy": "test/accuracy", "test_loss": "test/loss", "test_precision": "test/precision",
    "test_recall": "test/recall", "test_f1": "test/f1",
    "train_loss": "train/loss", "train_accuracy": "train/accuracy",
    "fed_eval_loss": "fed_eval/loss", "fed_eval_accuracy": "fed_eval/accuracy",
    "bytes_up": "communication/bytes_up", "bytes_down": "communication/bytes_down",
    "wall_seconds": "time/wall_seconds", "compile_seconds": "time/compile_seconds",
    "sim_round_seconds": "time/sim_round_seconds", "sim_time": "time/sim_time",
    "clients_sampled": "clients/sampled", "clients_succeeded": "clients/succeeded",
    "clients_failed": "clients/failed", "clients_dropped": "clients/dropped",
    "clients_vectorized": "clients/vectorized",
    "staleness_mean": "staleness/mean", "staleness_max": "staleness/max",
    "tpriv_accuracy": "method/tpriv_accuracy", "tpriv_std": "method/tpriv_std", "tuni_std": "method/tuni_std",
    "consensus_accuracy": "method/consensus_accuracy",
}
# clients.csv column -> histogram name; tag "client_<phase>/<name>", over the phase's rows with status "ok"
HISTOGRAM_TAGS: dict[str, str] = {"accuracy": "accuracy", "loss": "loss", "num_examples": "num_examples",
                                  "seconds": "seconds"}
HEATMAP_TAG = "partition/label_distribution"
CONFIG_TAG = "run/config"


def scalar_tag(column: str) -> str:
    """The scalar tag of a ``rounds.csv`` column."""
    return SCALAR_TAGS.get(column, f"rounds/{column}")


def histogram_tag(phase: str, column: str) -> str:
    """The histogram tag of a ``clients.csv`` column in ``phase`` (``train`` / ``evaluate``)."""
    return f"client_{phase}/{HISTOGRAM_TAGS[column]}"


def _number(cell: str | None) -> float | None:
    """A table cell as a float; None when empty, NaN or not a number (e.g. an engine name)."""
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return None if math.isnan(value) else value


class _TableTail:
    """Reads the rows appended to a CSV table since the last read (a byte offset into it).

    Only complete lines are read; a row may span lines (a quoted error message), which
    ``csv.reader.line_num`` accounts for.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.is_file() else 0

    def read(self, until_round: int | None = None) -> list[dict[str, str]]:
        """New rows, stopping before the first one whose round is past ``until_round``."""
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            header = handle.readline()
            handle.seek(max(self.offset, len(header)))
            data = handle.read()
        self.offset = max(self.offset, len(header))
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines.pop()  # a row still being written
        if not lines:
            return []
        columns = next(csv.reader([header.decode("utf-8")]))
        reader = csv.reader(line.decode("utf-8") for line in lines)
        rows, consumed = [], 0
        for cells in reader:
            row = dict(zip(columns, cells))
            if until_round is not None and int(row["round"]) > until_round:
                break
            rows.append(row)
            consumed = reader.line_num
        self.offset += sum(len(line) for line in lines[:consumed])
        return rows


class TensorBoardLog(RoundExtension):
    """Writes a run's rounds, client distributions and label heat map as TensorBoard events.

    ``counts`` (clients x classes) and ``class_names`` draw the heat map; without them no image
    is written. Give one instance to one run; call :meth:`close` when the run ends, however it
    ends (idempotent; :meth:`on_run_end` closes too).
    """

    def __init__(self, counts: np.ndarray | None = None, class_names: list[str] | tuple[str, ...] = (),
                 flush_secs: int = 30) -> None:
        self.counts = counts
        self.class_names = list(class_names)
        self.flush_secs = flush_secs
        self.writer: SummaryWriter | None = None
        self.folder: Path | None = None
        self._rounds: _TableTail | None = None
        self._clients: _TableTail | None = None
        self._last_round = -1  # the newest round whose rounds.csv row was read
        self._to_open = False  # between on_run_start and the first write (or load_state)
        self._writer_class: type[SummaryWriter] | None = None

    # -- the extension's stages ------------------------------------------------------------

    def on_run_start(self, run: RunContext, arrays: ArrayRecord) -> dict[str, float]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is a dependency; a broken install is named
            raise InputError(f"output.tensorboard = true needs the tensorboard package ({error}); install it "
                             "with `pip install tensorboard` or set output.tensorboard = false") from error
        self.folder = Path(run.recorder.folder) / FOLDER
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} is a file; output.tensorboard = true needs that path for a folder "
                             "of event files")
        self._rounds = _TableTail(run.recorder.rounds_path)
        self._clients = _TableTail(run.recorder.clients_path)
        self._rounds.skip_to_end()  # a resumed run's load_state puts the checkpoint's positions back
        self._clients.skip_to_end()
        self._last_round = -1
        # the event file is opened at the first write -- or by load_state, which only a resumed run
        # calls (run.resumed_after is 0 both for a new run and for one resumed from round 0)
        self._writer_class = SummaryWriter
        self._to_open = True
        return {}

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        self.sync()  # the rounds before this one (this round's row is written after the extensions)

    def on_run_end(self, arrays: ArrayRecord) -> None:
        self.close()

    def state(self) -> dict[str, Any]:
        """The tables' read positions: a checkpoint is taken right after its round's row, so it
        is read (and logged) first, and a resumed run reads on from exactly there."""
        self.sync()
        return {"rounds_offset": self._rounds.offset if self._rounds else 0,
                "clients_offset": self._clients.offset if self._clients else 0,
                "last_round": self._last_round}

    def load_state(self, state: dict[str, Any]) -> None:
        if self._rounds is None or self._clients is None:
            raise RuntimeError("TensorBoardLog.load_state before on_run_start")
        self._rounds.offset = int(state["rounds_offset"])
        self._clients.offset = int(state["clients_offset"])
        self._last_round = int(state["last_round"])
        # state() was taken right after the checkpoint's round was logged (round 0's row may not exist):
        # TensorBoard drops every event the interrupted run wrote after that round
        self._open(purge_step=max(self._last_round, 0) + 1)

    # -- writing ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Log every round whose ``rounds.csv`` row was written since the last call."""
        if self._to_open:
            self._open(purge_step=None)
        if self.writer is None or self._rounds is None or self._clients is None:
            return
        rounds = self._rounds.read()
        for row in rounds:
            step = int(row["round"])
            for column, cell in row.items():  # the table's header: ROUND_COLUMNS
                value = _number(cell)
                if column != "round" and value is not None:
                    self.writer.add_scalar(scalar_tag(column), value, step)
            self._last_round = max(self._last_round, step)
        clients = self._clients.read(until_round=self._last_round)
        by_round: dict[tuple[int, str], list[dict[str, str]]] = {}
        for row in clients:
            if row.get("status") == "ok":
                by_round.setdefault((int(row["round"]), row["phase"]), []).append(row)
        for (step, phase), rows in sorted(by_round.items()):
            if phase not in (PHASE_TRAIN, PHASE_EVALUATE):
                continue
            for column in HISTOGRAM_TAGS:
                values = [v for v in (_number(r.get(column)) for r in rows) if v is not None and math.isfinite(v)]
                if values:
                    self.writer.add_histogram(histogram_tag(phase, column), np.asarray(values, dtype=np.float64),
                                              step)
        if rounds or clients:
            self.writer.flush()

    def _open(self, purge_step: int | None) -> None:
        """Open the event file: a new run's (with the step-0 facts), or a resumed run's with
        ``purge_step``."""
        assert self.folder is not None and self._writer_class is not None, "on_run_start comes first"
        self._to_open = False
        if purge_step is not None:
            _after_existing_files(self.folder)
        self.writer = self._writer_class(log_dir=str(self.folder), purge_step=purge_step, flush_secs=self.flush_secs)
        if purge_step is None:
            self._write_run_facts(self.folder.parent)
        self.writer.flush()

    def _write_run_facts(self, run_dir: Path) -> None:
        """Step 0 of a new run: the label-distribution heat map and the resolved config."""
        assert self.writer is not None
        if self.counts is not None and np.size(self.counts):
            self.writer.add_image(HEATMAP_TAG, heatmap_image(self.counts, self.class_names), 0, dataformats="HWC")
        config = run_dir / "config.toml"
        if config.is_file():
            self.writer.add_text(CONFIG_TAG, "```toml\n" + config.read_text() + "\n```", 0)

    def close(self) -> None:
        """Log what is left, flush and close the event file (idempotent, never raises on a
        failing disk: it is called while a run fails or stops, and must not hide why)."""
        if self.writer is None:
            return
        try:
            self.sync()
        except Exception as error:  # noqa: BLE001 - the run's own error matters more
            warnings.warn(f"TensorBoard: the last rounds could not be logged to {self.folder}: {error}",
                          stacklevel=2)
        finally:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception as error:  # noqa: BLE001
                warnings.warn(f"TensorBoard: closing the event file in {self.folder} failed: {error}",
                              stacklevel=2)


def _after_existing_files(folder: Path) -> None:
    """Wait (under a second, and only if needed) until a new event file's name sorts after the
    ones in ``folder``.

    TensorBoard reads a folder's event files in name order, and the name starts with the
    second the file was opened (``events.out.tfevents.<10-digit time>...``): a resumed run's
    file must come after the interrupted run's for its ``purge_step`` to apply to them, even
    when both were opened within the same second (a small run resumed at once).
    """
    seconds = [int(parts[3]) for parts in (p.name.split(".") for p in folder.glob("events.out.tfevents.*"))
               if len(parts) > 3 and parts[3].isdigit()]
    if seconds:
        wait = max(seconds) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


def heatmap_image(counts: np.ndarray, class_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """The label-distribution heat map (:func:`fedsim.datasets.heatmap_figure`) as an RGB
    ``uint8`` array (height x width x 3), rendered by Agg without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = heatmap_figure(np.asarray(counts), list(class_names))
    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(110)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def tensorboard_log(enabled: bool, counts: np.ndarray | None = None,
                    class_names: list[str] | tuple[str, ...] = ()) -> TensorBoardLog | None:
    """The run's :class:`TensorBoardLog` when ``output.tensorboard`` is on, else None."""
    return TensorBoardLog(counts, class_names) if enabled else None
