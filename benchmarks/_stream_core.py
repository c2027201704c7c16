"""Micro-benchmark of the stream operator core (no source, no sink, no I/O).

The workload of the stream benchmark, minus the runtime around the operators: ``readings``
readings from ``devices`` devices (one float metric each, one reading per second per device,
seq counting up), in in-memory batches of ``batch_size`` readings, delivered round-robin over
the devices (every device's first batch, then every second one, ...) from ``partitions`` source
partitions. One timed run feeds every batch to a fresh
``WindowOperator(Tumbling(10 s), [Count(), Mean()], grace=2 * batch span)`` and flushes it at
the end; the figure is readings per second of the fastest of ``repeats`` runs (garbage collector
off while timing). Building the batches is not timed.

The grace matters: a batch of 100 one-second readings spans 100 s, so within a partition the
devices' batches are up to one batch span apart in event time; with a smaller grace most
readings would (correctly) be late. The run checks that none is and that every window of every
device is emitted once.

From Python (the runtime benchmark and tests call this)::

    from benchmarks._stream_core import measure
    measure()  # {"readings": 1000000, "windows": 100000, "readings_per_s": ...}

or from the repository root: ``python benchmarks/_stream_core.py [--readings N] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import zlib
from pathlib import Path
from time import perf_counter
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

from iotdata import Batch  # noqa: E402  (after the path set-up for script runs)
from iotdata.stream import Count, Mean, Tumbling, WindowOperator  # noqa: E402

SECOND = 1_000_000
START = 1_700_000_000 * SECOND  # 2023-11-14, a whole multiple of 10 s


def make_batches(
    *,
    readings: int = 1_000_000,
    devices: int = 1000,
    batch_size: int = 100,
    partitions: int = 8,
    seed: int = 7,
) -> list[tuple[int, Batch]]:
    """``(partition, batch)`` pairs of the workload, in delivery order."""
    rng = random.Random(seed)
    per_device = readings // devices
    rounds = -(-per_device // batch_size)
    names = [f"dev-{d:05d}" for d in range(devices)]
    homes = [zlib.crc32(name.encode()) % partitions for name in names]
    batches = []
    for round_ in range(rounds):
        first = round_ * batch_size
        count = min(batch_size, per_device - first)
        seqs = range(first, first + count)
        ts = [START + s * SECOND for s in seqs]
        for name, home in zip(names, homes, strict=True):
            values = [round(rng.gauss(20.0, 5.0), 2) for _ in seqs]
            batches.append((home, Batch.from_columns(name, {"temperature": (ts, values, seqs)})))
    return batches


def run_windows(batches: list[tuple[int, Batch]], *, grace: int) -> int:
    """Feed every batch to a fresh 10 s tumbling mean+count operator; the windows emitted."""
    operator = WindowOperator(Tumbling(10 * SECOND), [Count(), Mean()], grace=grace)
    emitted = 0
    for partition, batch in batches:
        emitted += len(operator.process(batch, partition).results)
    emitted += len(operator.flush().results)
    if operator.statistics()["late"]:
        raise RuntimeError(f"late readings in the benchmark: {operator.statistics()}")
    return emitted


def measure(
    *, readings: int = 1_000_000, devices: int = 1000, batch_size: int = 100, repeats: int = 3
) -> dict[str, Any]:
    """Readings per second of :func:`run_windows` on :func:`make_batches` (best of repeats)."""
    batches = make_batches(readings=readings, devices=devices, batch_size=batch_size)
    total = sum(len(batch) for _, batch in batches)
    grace = 2 * batch_size * SECOND
    best = float("inf")
    windows = 0
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = perf_counter()
            windows = run_windows(batches, grace=grace)
            best = min(best, perf_counter() - start)
    finally:
        if enabled:
            gc.enable()
    expected = devices * -(-(readings // devices) // 10)
    if windows != expected:
        raise RuntimeError(f"{windows} windows emitted, expected {expected}")
    return {
        "readings": total,
        "devices": devices,
        "batch_size": batch_size,
        "windows": windows,
        "seconds": best,
        "readings_per_s": total / best,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k readings, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.repeats = 100_000, 1
    figures = measure(
        readings=args.readings,
        devices=args.devices,
        batch_size=args.batch_size,
        repeats=args.repeats,
    )
    print(
        f"{figures['readings']:,} readings, {figures['devices']} devices, batches of "
        f"{figures['batch_size']}: {figures['windows']:,} windows in {figures['seconds']:.2f} s "
        f"= {figures['readings_per_s']:,.0f} readings/s"
    )


if __name__ == "__main__":
    main()
