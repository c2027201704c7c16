"""``iotdata demo``: the whole library in one process (see :mod:`iotdata.demo`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from iotdata._cliargs import positive_float, positive_int, probability

__all__ = ["add_demo"]

_DESCRIPTION = """\
Run the whole pipeline in this process, with no servers: a simulated fleet (devices with
injected spikes, level shifts, stuck sensors and dropouts) -> device clients with durable
queues -> the codec -> a bridge that checks every frame -> the embedded partitioned log -> a
stream pipeline (dedup, one-minute windows, z-score, flatline and missing-data detectors) ->
SQLite (readings, aggregates, alerts) and Parquet (readings; needs pyarrow). Prints a summary
and writes chart.html. With --kafka (and --mqtt, --postgres) the same pipeline runs through
the real services. The data are the same for a seed, so a second run stores nothing twice.
"""


def add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline in this process, no servers needed",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("iotdata-demo"),
        help="folder for the stores, the log, the queues and the chart (default ./iotdata-demo; "
        "emptied if an earlier demo made it, refused if it holds anything else)",
    )
    demo.add_argument("--devices", type=positive_int, default=200, help="devices (default 200)")
    demo.add_argument(
        "--minutes",
        type=positive_int,
        default=120,
        help="simulated minutes of telemetry, sent as fast as it goes (default 120)",
    )
    demo.add_argument(
        "--interval",
        type=positive_float,
        default=5.0,
        help="seconds between two readings of a device (default 5)",
    )
    demo.add_argument("--seed", type=int, default=1, help="the fleet's random seed (default 1)")
    demo.add_argument(
        "--anomaly-rate",
        type=probability,
        default=0.002,
        help="chance that a reading starts an anomaly (default 0.002)",
    )
    demo.add_argument(
        "--mqtt", help="devices publish to this broker (mqtt://host:1883); needs --kafka"
    )
    demo.add_argument("--kafka", help="Kafka bootstrap servers: the log is a Kafka topic")
    demo.add_argument("--postgres", help="PostgreSQL DSN: the warm store instead of SQLite")
    demo.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from iotdata.demo import DemoOptions, run_demo  # noqa: PLC0415
    from iotdata.errors import InvalidInputError  # noqa: PLC0415

    try:
        options = DemoOptions(
            out=args.out,
            devices=args.devices,
            minutes=args.minutes,
            interval=args.interval,
            seed=args.seed,
            anomaly_rate=args.anomaly_rate,
            mqtt=args.mqtt,
            kafka=args.kafka,
            postgres=args.postgres,
        )
    except InvalidInputError as exc:
        print(f"iotdata demo: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    show = _Progress(sys.stderr.isatty())
    try:
        summary = run_demo(options, progress=show)
    finally:
        show.end()
    _print(summary)
    return 0


class _Progress:
    """One line, rewritten in place on a terminal; a line per phase otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.phase, self.shown = tty, "", False

    def __call__(self, now: Any) -> None:
        if self.tty:
            share = now.readings_sent / now.readings_total if now.readings_total else 0.0
            bar = "#" * int(share * 24)
            line = (
                f"[{bar:<24}] {now.phase:<16} sent {now.readings_sent:,}/{now.readings_total:,}"
                f"  frames {now.frames:,}  processed {now.pipeline_readings:,}"
                f"  windows {now.windows:,}  alerts {now.alerts:,}"
            )
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
            self.shown = True
        elif now.phase != self.phase:
            print(f"demo: {now.phase}", file=sys.stderr, flush=True)
        self.phase = now.phase

    def end(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def _print(summary: Any) -> None:
    s, stored, stream = summary, summary.stored, summary.stream
    o = s.options
    path = "embedded (in-process broker, partitioned log)"
    if o.kafka:
        path = f"MQTT {o.mqtt} -> gateway -> Kafka {o.kafka}" if o.mqtt else f"Kafka {o.kafka}"
    lines = [
        f"iotdata demo: {o.devices} devices, {o.minutes} simulated minutes, {path}: "
        f"{s.seconds:.1f} s",
        "",
        f"  readings  ticks {s.ticks:,}; sent {s.readings_accepted:,} (the rest were dropouts)",
        f"            through the pipeline {stream.readings:,} in {stream.records:,} frames, "
        f"late {stream.late}, dead-lettered {s.dead_lettered}",
        f"            stored {stored.readings:,} in the warm store (keyed by device_id, seq)",
    ]
    if stored.parquet_rows is not None and stored.parquet_keys is not None:
        lines.append(
            f"            {stored.parquet_rows:,} in Parquet under {o.out / 'lake'}, "
            f"each (device_id, seq) once ({stored.parquet_rows - stored.parquet_keys} twice)"
        )
    else:
        lines.append("            Parquet skipped: pip install 'iotdata[parquet]'")
    if s.wire_bytes:
        lines.append(
            f"  wire      {s.wire_bytes:,} bytes in codec frames "
            f"({s.wire_bytes / max(s.readings_accepted, 1):.1f} a reading) vs "
            f"{s.json_bytes:,} as one JSON message a reading: {s.json_bytes / s.wire_bytes:.1f}x"
            " smaller"
        )
    lines += [
        f"  windows   {stored.aggregates:,} one-minute windows (count, min, max, mean, stddev)",
        f"  alerts    {stored.alerts:,}: "
        + ", ".join(f"{n} {d}" for d, n in sorted(stored.alerts_by_detector.items()))
        + f"; {s.alerts_on_anomalies} of them on an injected anomaly",
        "  anomalies injected -> detected (an alert on it)",
    ]
    for d in s.detections:
        share = f"{d.detected / d.injected:.0%}" if d.injected else "-"
        counts = f"{d.injected:>4} -> {d.detected:>4}  {share:>4}"
        lines.append(f"            {d.kind:<12} {counts}  ({d.detector})")
    lines += [
        "",
        f"  warm store  {s.warm_store}",
        f"  chart       {s.chart}  (devices {', '.join(stored.chart_devices)})",
        f"  look        {s.query}",
    ]
    print("\n".join(lines))
