"""The ``iotdata`` command.

``iotdata demo`` shows the library at work with no servers. For now it runs the codec over
sensor series (CSV files ``timestamp,value``; a synthetic fleet when none are given) and prints
what the readings cost on the wire against JSON. The full embedded pipeline comes next.

``iotdata gateway`` forwards device telemetry from MQTT to Kafka (:mod:`iotdata.gateway`).

``iotdata simulate`` publishes the telemetry of a simulated fleet (synthetic signals with
injected anomalies, or replayed CSV series) to an MQTT broker, through
:class:`iotdata.device.FleetSimulator`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from iotdata import __version__, codec
from iotdata._cli_gateway import add_gateway
from iotdata._cliargs import mqtt_url, positive_float, positive_int, probability, topics
from iotdata.device import (
    ANOMALY_KINDS,
    DEFAULT_ANOMALY_RATE,
    FleetSimulator,
    SimulationSummary,
    read_series,
    save_anomalies,
)
from iotdata.errors import IotDataError
from iotdata.model import Batch
from iotdata.mqtt import Topics

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
    _add_simulate(commands)
    add_gateway(commands)
    return parser


def _add_simulate(commands: Any) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="publish the telemetry of a simulated device fleet to an MQTT broker",
        description="Simulate a fleet of devices (sim-00000, sim-00001, ...) publishing "
        "metric 'temp' as iotdata frames on PREFIX/DEVICE/telemetry at QoS 1, over a few "
        "shared connections. Signals are synthetic (base, trend, daily cycle and noise, with "
        "injected spikes, level shifts, stuck stretches and dropouts) or replayed from CSV "
        "files. Without --duration or --readings-per-device it runs until Ctrl-C. The "
        "simulator keeps unacknowledged frames in memory only: it is a load generator, not "
        "a durable device client.",
    )
    simulate.add_argument(
        "--mqtt",
        required=True,
        type=mqtt_url,
        metavar="URL",
        help="the broker, e.g. mqtt://127.0.0.1:1883 or mqtts://user:password@host:8883",
    )
    simulate.add_argument(
        "--devices",
        type=positive_int,
        default=100,
        metavar="N",
        help="how many devices to simulate (default 100)",
    )
    simulate.add_argument(
        "--rate",
        type=positive_float,
        default=1.0,
        metavar="R",
        help="readings per second per device; may be fractional, e.g. 0.1 (default 1)",
    )
    length = simulate.add_mutually_exclusive_group()
    length.add_argument(
        "--duration",
        type=positive_float,
        metavar="S",
        help="run for S seconds of wall time, each device producing R readings per second",
    )
    length.add_argument(
        "--readings-per-device",
        type=positive_int,
        metavar="K",
        help="give each device K reading slots and run as fast as the broker takes them "
        "(timestamps stay 1/R s apart); dropouts leave some slots empty",
    )
    simulate.add_argument(
        "--replay",
        type=Path,
        metavar="DIR",
        help="replay the CSV files (timestamp,value; naive UTC) in DIR instead of synthetic "
        "signals: device i replays file i %% files, its timestamps moved to start now",
    )
    simulate.add_argument(
        "--keep-timestamps",
        action="store_true",
        help="with --replay, publish the original timestamps",
    )
    simulate.add_argument(
        "--connections",
        type=positive_int,
        default=4,
        metavar="C",
        help="MQTT connections shared by the devices; device i uses connection i %% C (default 4)",
    )
    simulate.add_argument(
        "--batch",
        type=positive_int,
        default=100,
        metavar="B",
        help="readings per frame: a device publishes every B readings or after 1 s (default 100)",
    )
    simulate.add_argument(
        "--prefix",
        type=topics,
        default=Topics(),
        metavar="P",
        help="topic prefix (default iotdata)",
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="X",
        help="seed of the synthetic signals: the same seed gives the same readings (default 0)",
    )
    simulate.add_argument(
        "--anomaly-rate",
        type=probability,
        default=DEFAULT_ANOMALY_RATE,
        metavar="P",
        help=f"chance that a reading starts an anomaly or dropout (default {DEFAULT_ANOMALY_RATE})",
    )
    simulate.add_argument(
        "--anomalies",
        type=Path,
        metavar="FILE",
        help="write the injected anomalies and dropouts to FILE as JSON: a list of "
        "{device_id, kind, start_ts, end_ts} (microseconds, both included)",
    )
    simulate.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="give up when the broker cannot be reached within S seconds (default 10)",
    )
    simulate.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="log connections, losses and reconnections on stderr",
    )
    simulate.set_defaults(run=_simulate_fleet)


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


def _simulate_fleet(args: argparse.Namespace) -> int:
    if args.keep_timestamps and args.replay is None:
        print("iotdata: error: --keep-timestamps needs --replay", file=sys.stderr)
        return 2
    level = logging.INFO if args.verbose else logging.ERROR
    logging.basicConfig(format="iotdata: %(name)s: %(message)s", level=level)
    simulator = FleetSimulator(
        mqtt=args.mqtt,
        devices=args.devices,
        rate=args.rate,
        topics=args.prefix,
        connections=args.connections,
        batch_size=args.batch,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        replay=args.replay,
        keep_timestamps=args.keep_timestamps,
        connect_timeout=args.connect_timeout,
    )
    tty = sys.stderr.isatty()
    previous = signal.signal(signal.SIGINT, _stop_once(simulator))
    try:
        summary = simulator.run(
            readings_per_device=args.readings_per_device,
            duration=args.duration,
            progress=_progress_line(tty),
            progress_every=0.5 if tty else 5.0,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if tty:
            print(file=sys.stderr)
    if args.anomalies is not None:
        save_anomalies(args.anomalies, summary.events)
    _print_summary(summary, args)
    return 0


def _stop_once(simulator: FleetSimulator) -> Callable[[int, Any], None]:
    """The first Ctrl-C stops generating and waits for the acks; a second one aborts."""

    def stop(signum: int, frame: Any) -> None:
        simulator.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\niotdata: stopping; Ctrl-C again to abort", file=sys.stderr)

    return stop


def _progress_line(tty: bool) -> Callable[[SimulationSummary], None]:
    def show(now: SimulationSummary) -> None:
        line = (
            f"devices: {now.devices:,}  published: {now.readings_published:,}  "
            f"acknowledged: {now.readings_acknowledged:,}  "
            f"{now.readings_per_second:,.0f} readings/s  "
            f"connections up: {now.connections_up}/{now.connections}"
        )
        if tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return show


def _print_summary(summary: SimulationSummary, args: argparse.Namespace) -> None:
    mode = "accelerated" if args.readings_per_device else "real time"
    source = f"replaying {args.replay}" if args.replay else f"synthetic, seed {args.seed}"
    per_reading = summary.bytes_sent / max(summary.readings_published, 1)
    kinds = ", ".join(f"{kind} {n}" for kind, n in _kinds(summary).items()) or "none"
    print(f"devices: {summary.devices:,} on {summary.connections} connections ({source}, {mode})")
    print(
        f"readings generated: {summary.readings_generated:,} "
        f"({summary.readings_skipped:,} skipped in dropouts)"
    )
    print(f"readings published: {summary.readings_published:,}")
    print(f"readings acknowledged: {summary.readings_acknowledged:,}")
    print(f"anomalies injected: {summary.anomalies:,} ({kinds})")
    print(f"dropouts injected: {summary.dropouts:,}")
    print(
        f"batches published: {summary.batches_published:,} ({summary.batches_held:,} held "
        f"for a reconnection, {summary.resends:,} re-sent); "
        f"bytes on the wire: {summary.bytes_sent:,} ({per_reading:.2f} per reading)"
    )
    print(f"duration: {summary.duration:.1f} s ({summary.readings_per_second:,.0f} readings/s)")
    if args.anomalies is not None:
        print(f"anomalies written to {args.anomalies}")


def _kinds(summary: SimulationSummary) -> dict[str, int]:
    kinds = [kind for kind in ANOMALY_KINDS if kind != "dropout"]
    counts = {kind: sum(e.kind == kind for e in summary.events) for kind in kinds}
    return {kind: n for kind, n in counts.items() if n}


def _json(device: str, metric: str, ts: int, value: object, seq: int) -> bytes:
    record = {"device_id": device, "metric": metric, "ts": ts, "value": value, "seq": seq}
    return json.dumps(record, separators=(",", ":")).encode()


def _load(folder: Path) -> list[tuple[str, list[int], list[float]]]:
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise IotDataError(f"no CSV files in {folder}")
    series = []
    for path in files:
        ts, values = read_series(path)
        series.append((path.stem, list(ts), list(values)))
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
