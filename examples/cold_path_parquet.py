"""Write telemetry to Parquet files, the cold path: partitioned by date and device bucket.

    python examples/cold_path_parquet.py [--out FOLDER] [--devices 20] [--batches 50]

Each batch is written with the source position it came from (topic, partition, offset), as the
stream runtime does; the files are named after it, so running the program twice on the same
folder overwrites them instead of doubling the rows. Without --out a temporary folder is used.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
from pathlib import Path

import pyarrow.dataset as ds

from iotdata.model import Batch
from iotdata.sinks import ParquetSink, SourcePosition

START = 1_714_600_800_000_000  # 2024-05-01 22:00 UTC: the readings run past midnight
SECOND = 1_000_000


def sensor_batch(device: int, index: int, size: int) -> Batch:
    """``size`` readings of temperature and humidity, one per 10 s; seq counts per device."""
    first = index * size
    ts = [START + (first + i) * 10 * SECOND for i in range(size)]
    temperature = [
        round(21 + 3 * math.sin((first + i) / 300) + random.gauss(0, 0.1), 2) for i in range(size)
    ]
    humidity = [round(55 + random.gauss(0, 2), 1) for _ in range(size)]
    return Batch.from_columns(
        f"greenhouse-{device:03d}",
        {
            "temperature": (ts, temperature, range(2 * first, 2 * first + 2 * size, 2)),
            "humidity": (ts, humidity, range(2 * first + 1, 2 * first + 2 * size, 2)),
        },
    )


async def write(out: Path, devices: int, batches: int, size: int) -> None:
    sink = ParquetSink(root=out, buckets=4)
    async with sink.open() as writer:
        offset = 0
        for index in range(batches):
            for device in range(devices):
                # Partition = device % 2, as a keyed Kafka topic would place them.
                position = SourcePosition("telemetry", device % 2, offset)
                await writer.write(sensor_batch(device, index, size), position=position)
                offset += 1
        # Leaving the block flushes: every file is written under a temporary name, renamed.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temporary one)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--batches", type=int, default=50, help="batches per device")
    parser.add_argument("--size", type=int, default=100, help="readings per metric per batch")
    args = parser.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "lake"
        asyncio.run(write(out, args.devices, args.batches, args.size))
        readings = ds.dataset(out / "readings", partitioning="hive")
        table = readings.to_table()
        files = sorted(Path(f).relative_to(out) for f in readings.files)
        where = out if args.out else "a temporary folder"
        print(f"{table.num_rows} readings in {len(files)} files under {where}, for example:")
        for name in files[:3]:
            print(f"  {name}")
        warm = readings.to_table(
            columns=["device_id", "ts", "value"],
            filter=(ds.field("metric") == "temperature") & (ds.field("value") > 23.5),
        )
        print(f"{warm.num_rows} temperature readings above 23.5 °C")


if __name__ == "__main__":
    main()
