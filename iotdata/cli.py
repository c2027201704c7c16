"""The ``iotdata`` command.

``iotdata demo`` shows the library at work with no servers. For now it runs the codec over
sensor series (CSV files ``timestamp,value``; a synthetic fleet when none are given) and prints
what the readings cost on the wire against JSON. The full embedded pipeline comes next.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from iotdata import __version__, codec
from iotdata.errors import IotDataError
from iotdata.model import Batch, ts_from_datetime

__all__ = ["main"]

_BATCH = 100


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``iotdata`` command; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except IotDataError as exc:
        print(f"iotdata: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotdata",
        description="IoT telemetry pipelines: device client, codec, Kafka ingestion, "
        "stream operators and storage sinks.",
    )
    parser.add_argument("--version", action="version", version=f"iotdata {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="show the library at work with no servers",
        description="Encode and decode telemetry with the iotdata codec and compare its size "
        "with one JSON message per reading. Reads CSV series (timestamp,value) from --data; "
        "without it, simulates a small fleet.",
    )
    demo.add_argument(
        "--data",
        type=Path,
        help="a folder of CSV files with columns timestamp,value (one device each)",
    )
    demo.add_argument(
        "--batch",
        type=int,
        default=_BATCH,
        help=f"readings per frame (default {_BATCH})",
    )
    demo.set_defaults(run=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    if args.batch < 1:
        print("iotdata: error: --batch must be at least 1", file=sys.stderr)
        return 2
    series = _load(args.data) if args.data else _simulate()
    encoder, decoder = codec.Encoder(), codec.Decoder()
    readings = wire = as_json = 0
    started = time.perf_counter()
    for position, (device, ts, values) in enumerate(series, 1):
        for start in range(0, len(ts), args.batch):
            part = slice(start, start + args.batch)
            seq = list(range(start, start + len(ts[part])))
            batch = Batch.from_columns(device, {"value": (ts[part], values[part], seq)})
            frame = encoder.encode(batch)
            if decoder.decode(frame) != batch:  # pragma: no cover - a codec bug
                raise IotDataError(f"round trip failed for {device}")
            readings += len(batch)
            wire += len(frame)
            as_json += sum(len(_json(r.device_id, r.metric, r.ts, r.value, r.seq)) for r in batch)
        if sys.stderr.isatty():
            print(f"\r  devices: {position}  readings: {readings:,}", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(f"readings encoded, decoded and checked: {readings:,} in {elapsed:.1f} s")
    print(f"iotdata frames of {args.batch}: {wire:,} bytes ({wire / readings:.2f} per reading)")
    print(f"one JSON message per reading: {as_json:,} bytes ({as_json / readings:.1f} per reading)")
    print(f"JSON is {as_json / wire:.1f}x larger")
    return 0


def _json(device: str, metric: str, ts: int, value: object, seq: int) -> bytes:
    record = {"device_id": device, "metric": metric, "ts": ts, "value": value, "seq": seq}
    return json.dumps(record, separators=(",", ":")).encode()


def _load(folder: Path) -> list[tuple[str, list[int], list[float]]]:
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise IotDataError(f"no CSV files in {folder}")
    series = []
    for path in files:
        ts, values = [], []
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                moment = dt.datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S")
                ts.append(ts_from_datetime(moment))
                values.append(float(row["value"]))
        series.append((path.stem, ts, values))
    return series


def _simulate(
    devices: int = 50, readings: int = 2000
) -> Iterator[tuple[str, list[int], list[float]]]:
    """Temperature sensors: a daily cycle, a slow drift and noise, sampled every 10 s."""
    rng = random.Random(7)
    start = 1_700_000_000_000_000
    for index in range(devices):
        base, drift = rng.uniform(15, 25), rng.uniform(-1, 1)
        ts = [start + 10_000_000 * i for i in range(readings)]
        values = [
            round(
                base
                + 3 * math.sin(i / 8640 * 2 * math.pi)
                + drift * i / readings
                + rng.gauss(0, 0.05),
                2,
            )
            for i in range(readings)
        ]
        yield f"sensor-{index:04d}", ts, values


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
