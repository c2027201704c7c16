"""One-minute windows and anomaly alerts over a fleet's telemetry, stored in SQLite.

    python examples/windowed_alerts.py [--db alerts.sqlite] [--devices 20] [--minutes 30]
    python examples/windowed_alerts.py --kafka 127.0.0.1:9092      # the same, through Kafka
    python examples/windowed_alerts.py --postgres postgresql://...  # stored in PostgreSQL

Twenty pumps report their temperature once a second, in frames of 60 readings, into the
embedded partitioned log (or a Kafka topic). Pump 3 overheats for a few seconds and pump 7
goes silent. The pipeline drops repeated readings, keeps one-minute statistics per pump and
raises alerts; everything lands in one SQLite file, each key once, however often it is run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sqlite3
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from iotdata import Batch, codec
from iotdata.kafka import PartitionedProducer, ProducerSettings, TopicSpec, ensure_topics
from iotdata.local import LocalLog
from iotdata.sinks import PostgresSink, SqliteSink
from iotdata.stream import (
    Count,
    KafkaSource,
    LocalSource,
    Max,
    Mean,
    MissingData,
    Pipeline,
    Quantiles,
    Stddev,
    Threshold,
    Tumbling,
    ZScore,
)

SECOND = 1_000_000
PREFIX = "windowed_alerts_"
START = 1_714_600_800 * SECOND  # 2024-05-01 22:00 UTC


def frames(devices: int, minutes: int) -> list[tuple[str, bytes]]:
    """Each pump's readings, a frame a minute, interleaved like a live fleet."""
    rng = random.Random(5)
    out = []
    for minute in range(minutes):
        for pump in range(devices):
            if pump == 7 and minute >= minutes // 2:
                continue  # pump 7 stops reporting half-way
            seconds = range(minute * 60, minute * 60 + 60)
            values = [round(60 + 5 * math.sin(s / 600) + rng.gauss(0, 0.3), 2) for s in seconds]
            if pump == 3 and minute == minutes // 3:
                values[20:25] = [95.0, 97.5, 99.0, 98.0, 96.5]  # overheating
            ts = [START + s * SECOND for s in seconds]
            batch = Batch.from_columns(f"pump-{pump:02d}", {"temperature": (ts, values, seconds)})
            out.append((batch.device_id, codec.encode(batch)))
    return out


def pipeline(sink: SqliteSink | PostgresSink) -> Pipeline:
    return (
        Pipeline()
        .dedup()
        .window(
            Tumbling(timedelta(minutes=1)),
            Count(),
            Mean(),
            Max(),
            Stddev(),
            Quantiles([0.95]),
            grace=timedelta(minutes=1),  # frames of other pumps may run a minute ahead
        )
        .detect(
            Threshold(above=90.0, cooldown=timedelta(minutes=5), severity="critical"),
            ZScore(threshold=6.0, warmup=120, cooldown=timedelta(minutes=5)),
            MissingData(timeout=timedelta(minutes=3)),
        )
        .to(sink)
    )


async def run(sink: Any, source: LocalSource | KafkaSource, count: int) -> int:
    """Until every frame was read; then close the last windows too."""
    stats = await pipeline(sink).run(source, until=lambda s: s.records >= count, flush_at_end=True)
    return stats.records


async def run_embedded(sink: Any, data: list[tuple[str, bytes]]) -> int:
    log = LocalLog.memory()
    log.create_topic("telemetry", 4)
    for device, frame in data:
        log.append("telemetry", device.encode(), frame)
    source = LocalSource("telemetry", log=log, group="alerts")
    return await run(sink, source, len(data))


async def run_kafka(sink: Any, data: list[tuple[str, bytes]], bootstrap: str) -> int:
    topic = f"example-telemetry-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, TopicSpec(name=topic, partitions=4))
    async with await PartitionedProducer.start(ProducerSettings(bootstrap=bootstrap)) as producer:
        for device, frame in data:
            await producer.send(topic, device, frame)
        await producer.flush(60)
    source = KafkaSource(topic, bootstrap=bootstrap, group=topic)
    return await run(sink, source, len(data))


def results(conn: Any, prefix: str) -> tuple[int, list[tuple[str, str, str]]]:
    """The number of windows, and the alerts in time order (the same SQL for both stores)."""
    windows = conn.execute(f"SELECT count(*) FROM {prefix}aggregates").fetchone()[0]
    alerts = conn.execute(
        f"SELECT device_id, detector, severity FROM {prefix}alerts ORDER BY ts, device_id"
    ).fetchall()
    return windows, alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--kafka", help="bootstrap servers: read from a Kafka topic instead")
    parser.add_argument("--postgres", help="a PostgreSQL DSN: store there instead of SQLite")
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "alerts.sqlite"
    sink: SqliteSink | PostgresSink = SqliteSink(path=db)
    if args.postgres:  # tables windowed_alerts_readings, _aggregates, _alerts
        sink = PostgresSink(dsn=args.postgres, table_prefix=PREFIX, create_tables=True)
    data = frames(args.devices, args.minutes)
    if args.kafka:
        records = asyncio.run(run_kafka(sink, data, args.kafka))
    else:
        records = asyncio.run(run_embedded(sink, data))
    if args.postgres:
        import psycopg  # noqa: PLC0415 - the [postgres] extra, only when asked for

        where = "PostgreSQL"
        with psycopg.connect(args.postgres) as conn:
            windows, alerts = results(conn, PREFIX)
    else:
        where = str(db)
        with sqlite3.connect(db) as conn:
            windows, alerts = results(conn, "")
    print(f"{records} frames, {windows} one-minute windows, {len(alerts)} alerts in {where}")
    for device, detector, severity in alerts:
        print(f"  {severity:8} {device} {detector}")


if __name__ == "__main__":
    main()
