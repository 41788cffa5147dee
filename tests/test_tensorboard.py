"""TensorBoard event files (``output.tensorboard``): what they hold equals the run's tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsim.core.checkpoint import Checkpoint
from fedsim.frontends.cli import _load, build_parser, main
from fedsim.runs.experiment import resume, run
from fedsim.ops.interrupt import RunInterrupted
from fedsim.outputs.tensorboard import FOLDER, HEATMAP_TAG, histogram_tag, scalar_tag
from interrupting import StopAfter


def events(run_dir: Path) -> EventAccumulator:
    """Everything in the run's event files (no sampling), as TensorBoard reads it."""
    folder = run_dir / FOLDER
    assert list(folder.glob("events.out.tfevents.*")), f"no event files in {folder}"
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                               "tensors": 0})
    return accumulator.Reload()


def assert_scalars_match(accumulator: EventAccumulator, rounds: pd.DataFrame) -> None:
    """Every value of rounds.csv is the scalar of its tag at step = round, each step once."""
    tags = set(accumulator.Tags()["scalars"])
    for column in rounds.columns.drop("round"):
        present = rounds.dropna(subset=[column])
        if not len(present):
            assert scalar_tag(column) not in tags, column
            continue
        logged = accumulator.Scalars(scalar_tag(column))
        steps = [e.step for e in logged]
        assert steps == sorted(set(steps)), f"{column}: steps {steps} not once each"
        assert steps == present["round"].tolist(), column
        np.testing.assert_allclose([e.value for e in logged], present[column].to_numpy(dtype=np.float64),
                                   rtol=1e-6, err_msg=column)  # TensorBoard stores float32


def assert_histograms_match(accumulator: EventAccumulator, clients: pd.DataFrame, rounds: list[int]) -> None:
    """One histogram per round and phase over the phase's successful clients."""
    for phase in ("train", "evaluate"):
        ok = clients[(clients["phase"] == phase) & (clients["status"] == "ok")]
        for column in ("accuracy", "loss", "num_examples"):
            logged = accumulator.Histograms(histogram_tag(phase, column))
            assert [e.step for e in logged] == rounds, (phase, column)
            for event in logged:
                values = ok.loc[ok["round"] == event.step, column]
                assert event.histogram_value.num == len(values)
                assert event.histogram_value.min == pytest.approx(values.min())
                assert event.histogram_value.max == pytest.approx(values.max())
                assert event.histogram_value.sum == pytest.approx(values.sum())


def test_a_run_logs_its_rounds_clients_and_heat_map(small_config) -> None:
    config = small_config(**{"output.tensorboard": True, "train.rounds": 2, "evaluation.federated_every": 1})
    result = run(config, progress=False)
    rounds, clients = pd.read_csv(result.path / "rounds.csv"), pd.read_csv(result.path / "clients.csv")
    accumulator = events(result.path)  # in the published run directory, not a staging folder
    assert not list(Path(config.output.dir).glob(".*staging*"))

    assert_scalars_match(accumulator, rounds)
    for tag in ("test/accuracy", "test/loss", "train/loss", "train/accuracy", "fed_eval/accuracy",
                "fed_eval/loss", "communication/bytes_up", "communication/bytes_down", "time/wall_seconds"):
        assert tag in accumulator.Tags()["scalars"], tag
    assert_histograms_match(accumulator, clients, [1, 2])

    (image,) = accumulator.Images(HEATMAP_TAG)
    assert image.step == 0 and image.width > 100 and image.height > 100
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert "run/config/text_summary" in accumulator.Tags()["tensors"]


@pytest.mark.slow  # keeps the fast set under a minute
def test_without_the_option_no_event_files(small_config) -> None:
    result = run(small_config(**{"train.rounds": 1}), progress=False)
    assert not (result.path / FOLDER).exists()
    assert not list(result.path.rglob("events.out.tfevents.*"))


def test_the_cli_flag_sets_the_option(tmp_path) -> None:
    for command in (["run"], ["compare", "--strategies", "fedavg"]):
        assert not _load(build_parser().parse_args(command)).output.tensorboard
        assert _load(build_parser().parse_args([*command, "--tensorboard"])).output.tensorboard
    # a resumed run keeps its own config.toml: the flag is refused there (exit 2, nothing written)
    assert main(["run", "--resume", str(tmp_path / "x"), "--tensorboard"]) == 2


@pytest.mark.slow  # keeps the fast set under a minute
@pytest.mark.parametrize(("rounds", "stop"), [(4, 3), (2, 1)])
def test_a_resumed_run_continues_the_same_logs_with_each_step_once(small_config, rounds, stop) -> None:
    """Interrupted after round 3 with the checkpoint at round 2 (or after round 1 with it at round
    0): the resumed run repeats the round after the checkpoint, and TensorBoard keeps the resumed
    run's values only (purge_step)."""
    settings = {"output.tensorboard": True, "train.rounds": rounds, "output.checkpoint_every": 2,
                "output.name": "resumed"}
    config = small_config(**settings)
    with pytest.raises(RunInterrupted):
        run(config, progress=False, extensions=[StopAfter(stop)])
    kept = Path(config.output.dir) / "resumed.interrupted"
    assert Checkpoint.read(kept).server_round == stop - 1
    assert [e.step for e in events(kept).Scalars("test/accuracy")] == list(range(stop + 1))  # closed on the way out

    result = resume(kept, progress=False, extensions=[StopAfter(99)])
    rounds, clients = pd.read_csv(result.path / "rounds.csv"), pd.read_csv(result.path / "clients.csv")
    assert len(list((result.path / FOLDER).glob("events.out.tfevents.*"))) == 2  # the same folder, continued
    accumulator = events(result.path)
    assert_scalars_match(accumulator, rounds)  # the resumed round 3's values, steps 0..4 once each
    assert_histograms_match(accumulator, clients, list(range(1, config.train.rounds + 1)))
    assert len(accumulator.Images(HEATMAP_TAG)) == 1


@pytest.mark.slow  # keeps the fast set under a minute
def test_the_centralized_baseline_logs_its_rounds(small_config) -> None:
    result = run(small_config(**{"output.tensorboard": True, "train.rounds": 2, "train.mode": "centralized"}),
                 progress=False)
    accumulator = events(result.path)
    assert_scalars_match(accumulator, pd.read_csv(result.path / "rounds.csv"))
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2]
    assert not accumulator.Tags()["histograms"]  # no clients
