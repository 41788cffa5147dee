"""Device profiles: how fast each simulated client computes, downloads and uploads.

A profile is four numbers per client: seconds of training per sample for a LeNet-5-sized model
(scaled by the client's model cost, :mod:`fedsim.timing.cost`), download and upload bandwidth
in megabit/s, and a latency added to each transfer. They come from one of three sources
(``time.devices``):

* ``lognormal`` -- every value drawn from a lognormal distribution around the configured
  median (``seconds_per_sample``, ``download_mbps``, ``upload_mbps``) with the spreads
  ``compute_sigma`` and ``network_sigma`` (the sigma of the logarithm; 0 = every client alike),
  as FedScale (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated
  Learning at Scale", ICML 2022) draws from measured device and network profiles;
* ``tiers`` -- each client draws one of the named presets in :data:`TIERS` (weights
  ``tier_weights``), and its values are drawn around the tier's with the same spreads;
* ``file`` -- a CSV with the columns ``seconds_per_sample, download_mbps, upload_mbps,
  latency`` and either ``client_id`` (one row per client, taken as written) or ``device`` (one
  row per device type, optionally a ``weight`` column: clients draw a type and spread around
  it like tiers).

Every draw comes from one generator seeded by the run's seed alone, so a seed gives the same
population of devices to every strategy and every executor. The drawn profiles are written to
the run directory as ``devices.csv``; the run reads them back from there (a resumed run uses
its own copy, whatever happened to the source file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.inputs import Column, InputFileError, read_table

PROFILE_COLUMNS = ("seconds_per_sample", "download_mbps", "upload_mbps", "latency")
DEVICES_FILE = "devices.csv"
_STREAM = 0xDE71CE  # the device draws' generator salt


@dataclass(frozen=True)
class Tier:
    """A named device preset (illustrative orders of magnitude, not measurements)."""

    seconds_per_sample: float
    download_mbps: float
    upload_mbps: float
    latency: float


TIERS: dict[str, Tier] = {
    "fast": Tier(0.0005, 50.0, 20.0, 0.02),  # recent flagship phone on Wi-Fi
    "medium": Tier(0.002, 20.0, 5.0, 0.05),  # mid-range phone on a good mobile network
    "slow": Tier(0.008, 5.0, 1.0, 0.2),  # old phone on a poor mobile network
}


class DeviceError(InputFileError):
    """A device file or tier setting cannot be used; the message names the problem (and the file's cell)."""


@dataclass
class DeviceProfiles:
    """One profile per client (arrays indexed by client id) and the device or tier it came from."""

    device: np.ndarray  # str per client: tier, device type, "lognormal" or "client"
    seconds_per_sample: np.ndarray
    download_mbps: np.ndarray
    upload_mbps: np.ndarray
    latency: np.ndarray

    def __len__(self) -> int:
        return len(self.device)

    def frame(self, cost: np.ndarray | None = None) -> pd.DataFrame:
        """The profiles as a table (``devices.csv``), with each client's model cost factor."""
        frame = pd.DataFrame({"client_id": np.arange(len(self)), "device": self.device,
                              **{c: getattr(self, c) for c in PROFILE_COLUMNS}})
        if cost is not None:
            frame["model_cost"] = cost
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "DeviceProfiles":
        return cls(frame["device"].astype(str).to_numpy(),
                   *(frame[c].to_numpy(dtype=np.float64) for c in PROFILE_COLUMNS))

    def save(self, folder: Path, cost: np.ndarray) -> Path:
        path = Path(folder) / DEVICES_FILE
        self.frame(cost).to_csv(path, index=False, float_format="%.17g")
        return path

    @classmethod
    def load(cls, folder: Path) -> tuple["DeviceProfiles", np.ndarray]:
        """The profiles and model cost factors a run directory recorded."""
        frame = pd.read_csv(Path(folder) / DEVICES_FILE)
        return cls.from_frame(frame), frame["model_cost"].to_numpy(dtype=np.float64)


def _spread(rng: np.random.Generator, median: np.ndarray, sigma: float) -> np.ndarray:
    """``median * exp(N(0, sigma))`` per client (the lognormal with that median)."""
    return median * np.exp(rng.normal(0.0, sigma, size=len(median))) if sigma > 0 else median.astype(np.float64)


def _around(rng: np.random.Generator, names: np.ndarray, base: pd.DataFrame,
            compute_sigma: float, network_sigma: float) -> DeviceProfiles:
    """Profiles of clients of the given types, drawn around each type's values."""
    rows = base.loc[names]
    return DeviceProfiles(
        names.astype(str),
        _spread(rng, rows["seconds_per_sample"].to_numpy(np.float64), compute_sigma),
        _spread(rng, rows["download_mbps"].to_numpy(np.float64), network_sigma),
        _spread(rng, rows["upload_mbps"].to_numpy(np.float64), network_sigma),
        rows["latency"].to_numpy(np.float64),
    )


def _draw_types(rng: np.random.Generator, names: list[str], weights: list[float], n: int) -> np.ndarray:
    p = np.asarray(weights, dtype=np.float64) if weights else np.ones(len(names))
    return np.asarray(names)[rng.choice(len(names), size=n, p=p / p.sum())]


def lognormal_profiles(n: int, seed: int, seconds_per_sample: float, download_mbps: float,
                       upload_mbps: float, latency: float, compute_sigma: float,
                       network_sigma: float) -> DeviceProfiles:
    """``n`` clients' profiles drawn around the medians (``time.devices.kind = "lognormal"``)."""
    base = pd.DataFrame([{"seconds_per_sample": seconds_per_sample, "download_mbps": download_mbps,
                          "upload_mbps": upload_mbps, "latency": latency}], index=["lognormal"])
    rng = np.random.default_rng([seed, _STREAM])
    return _around(rng, np.full(n, "lognormal"), base, compute_sigma, network_sigma)


def tier_profiles(n: int, seed: int, tiers: list[str], weights: list[float], compute_sigma: float,
                  network_sigma: float) -> DeviceProfiles:
    """Each client draws a tier of :data:`TIERS` (``time.devices.kind = "tiers"``)."""
    base = pd.DataFrame([vars(TIERS[t]) for t in tiers], index=tiers)
    rng = np.random.default_rng([seed, _STREAM])
    return _around(rng, _draw_types(rng, tiers, weights, n), base, compute_sigma, network_sigma)


DEVICE_COLUMNS = (
    Column("seconds_per_sample", float, 0.0, exclusive=True),
    Column("download_mbps", float, 0.0, exclusive=True),
    Column("upload_mbps", float, 0.0, exclusive=True),
    Column("latency", float, 0.0),
    Column("client_id", int, 0, required=False),
    Column("device", str, required=False),
    Column("weight", float, 0.0, required=False),
)


def read_device_file(path: Path) -> pd.DataFrame:
    """A device CSV, checked: the profile columns, positive values, and ``client_id`` or ``device``.

    Every cell is checked by :func:`fedsim.inputs.read_table`, so a bad one is named by file, line
    and column; a :class:`DeviceError` says what is wrong.
    """
    table = read_table(path, DEVICE_COLUMNS, "device file", DeviceError)
    frame = table.frame
    if ("client_id" in frame) == ("device" in frame):
        raise table.error(None, None, "needs exactly one of the columns client_id (one row per client) or device "
                          "(one row per device type)")
    if not len(frame):
        raise table.error(None, None, "has no rows")
    if "weight" in frame and frame["weight"].sum() <= 0:
        raise table.error(None, "weight", "weights must be >= 0 with a positive sum")
    return frame


def file_profiles(frame: pd.DataFrame, n: int, seed: int, compute_sigma: float, network_sigma: float,
                  source: str = "device file") -> DeviceProfiles:
    """Profiles from a checked device table (``time.devices.kind = "file"``)."""
    if "client_id" in frame:
        ids = frame["client_id"].to_numpy()
        if sorted(ids.tolist()) != list(range(n)):
            raise DeviceError(f"{source}: client_id must list every client 0..{n - 1} exactly once "
                              f"(partition.num_clients = {n}); it has {len(ids)} rows")
        ordered = frame.set_index("client_id").loc[np.arange(n)]
        return DeviceProfiles(np.full(n, "client"), *(ordered[c].to_numpy(np.float64) for c in PROFILE_COLUMNS))
    base = frame.drop_duplicates("device").set_index("device")
    if len(base) != len(frame):
        raise DeviceError(f"{source}: device names must be unique")
    names = [str(d) for d in base.index]
    base.index = names
    weights = base["weight"].astype(float).tolist() if "weight" in base else []
    rng = np.random.default_rng([seed, _STREAM])
    return _around(rng, _draw_types(rng, names, weights, n), base, compute_sigma, network_sigma)
