"""Write the example availability trace and device file in ``configs/traces/`` (no third-party data).

Both are synthetic, drawn from a fixed seed, so running this script again reproduces the
committed files byte for byte (a test checks it):

* ``diurnal_week.csv`` -- one week of online intervals for 100 devices (``client_id, start,
  end`` in seconds from the start of the simulation). Each device is online at night while it
  charges (a session starting around 22:00 +- 2 h, 4-9 h long; on 10% of nights not at all) and
  has up to three short daytime sessions (10-60 min) a day, the pattern production systems
  report (devices train when idle, charging and on Wi-Fi: Bonawitz et al. 2019).
* ``devices_example.csv`` -- four device types with their share of the population
  (``device, weight, seconds_per_sample, download_mbps, upload_mbps, latency``).

Usage: ``python experiments/make_example_traces.py [--out configs/traces]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DAY = 86400
DEVICES = 100
DAYS = 7
DEVICE_TYPES = [  # device, weight, seconds_per_sample, download_mbps, upload_mbps, latency
    ("flagship-wifi", 0.2, 0.0004, 80.0, 30.0, 0.02),
    ("midrange-wifi", 0.35, 0.0015, 30.0, 10.0, 0.04),
    ("midrange-4g", 0.3, 0.0015, 12.0, 3.0, 0.08),
    ("budget-3g", 0.15, 0.006, 3.0, 0.5, 0.25),
]


def diurnal_trace(seed: int = 0) -> list[tuple[int, int, int]]:
    """(client_id, start, end) intervals, sorted, within [0, DAYS * DAY]."""
    rng = np.random.default_rng(seed)
    rows = []
    for device in range(DEVICES):
        bedtime = 22 * 3600 + rng.normal(0, 2 * 3600)  # this device's usual start of charging
        intervals = []
        for day in range(-1, DAYS):
            if rng.random() >= 0.1:  # a night on the charger
                start = day * DAY + bedtime + rng.normal(0, 1800)
                intervals.append((start, start + rng.uniform(4, 9) * 3600))
            for _ in range(rng.integers(0, 4)):  # short daytime sessions
                start = day * DAY + rng.uniform(7, 21) * 3600
                intervals.append((start, start + rng.uniform(600, 3600)))
        for start, end in sorted(intervals):
            start, end = max(0, int(round(start))), min(DAYS * DAY, int(round(end)))
            if end > start:
                rows.append((device, start, end))
    return rows


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "diurnal_week.csv"
    trace.write_text("client_id,start,end\n" + "".join(f"{c},{s},{e}\n" for c, s, e in diurnal_trace()))
    devices = out / "devices_example.csv"
    devices.write_text("device,weight,seconds_per_sample,download_mbps,upload_mbps,latency\n"
                       + "".join(",".join(str(v) for v in row) + "\n" for row in DEVICE_TYPES))
    return [trace, devices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "traces")
    for path in write(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
