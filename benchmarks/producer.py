"""Producer benchmark: PartitionedProducer against plain aiokafka, on the real local Kafka.

What is measured, side by side in one run (each side best of ``--repeats``):

* ``iotdata``: readings per second into Kafka, timed from the first send to the last
  acknowledgement: codec frames of ``--batch`` readings per device (what a device publishes and
  the gateway forwards) through ``PartitionedProducer.send`` keyed by device id (idempotent,
  acks=all, default settings).
* ``aiokafka``: the same readings as one JSON record per reading
  ``{"device_id", "metric", "ts", "value", "seq"}``, keyed by device id, through
  ``AIOKafkaProducer.send`` (idempotent, acks=all, linger 5 ms), timed the same way.

In ``producer_vs_aiokafka`` both sides get their payloads encoded before the clock starts, so
the ratio compares the producers (the codec has its own benchmark, benchmarks/codec.py). In
``producer_with_encoding`` the clock also runs while the codec encodes each batch and
``json.dumps`` each reading.

The ratio row is ``producer_vs_aiokafka``. Run from the repository root, with the services up::

    python benchmarks/producer.py [--devices 1000] [--readings 500000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any

import _common

_common.ensure_repo_importable()

from aiokafka import AIOKafkaProducer  # noqa: E402

from iotdata import codec  # noqa: E402
from iotdata.kafka import PartitionedProducer, ProducerSettings, TopicSpec, ensure_topics  # noqa: E402
from iotdata.model import Batch  # noqa: E402

BASE_TS = 1_700_000_000_000_000
PARTITIONS = 12
PRODUCER = "producer_vs_aiokafka"
ENCODING = "producer_with_encoding"


def workload(devices: int, readings: int, batch: int) -> list[Batch]:
    """Batches of ``batch`` readings per device, round-robin over devices, like a fleet."""
    batches = []
    rounds = max(1, readings // (devices * batch))
    for r in range(rounds):
        for d in range(devices):
            first = r * batch
            ts = [BASE_TS + (first + i) * 5_000_000 for i in range(batch)]
            values = [round(20 + 5 * math.sin((first + i + d) / 50), 2) for i in range(batch)]
            seq = list(range(first, first + batch))
            batches.append(Batch.from_columns(f"dev-{d:05d}", {"temp": (ts, values, seq)}))
    return batches


async def run_iotdata(bootstrap: str, topic: str, frames: Iterable[tuple[str, bytes]]) -> float:
    """Seconds to send ``frames`` (``(device id, frame)``) and see all acknowledged."""
    async with await PartitionedProducer.start(ProducerSettings(bootstrap=bootstrap)) as producer:
        await producer.partitions(topic)
        started = time.perf_counter()
        futures = [await producer.send(topic, device, frame) for device, frame in frames]
        await asyncio.gather(*futures)
        return time.perf_counter() - started


async def run_aiokafka(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> float:
    """Seconds to send ``records`` (``(key, value)``) and see all acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        started = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def frames(batches: list[Batch]) -> Iterator[tuple[str, bytes]]:
    """``(device id, frame)`` of each batch: what a device publishes and a gateway forwards."""
    encoder = codec.Encoder()
    return ((batch.device_id, encoder.encode(batch)) for batch in batches)


def json_records(batches: list[Batch]) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of one JSON record per reading."""
    for batch in batches:
        key = batch.device_id.encode()
        for reading in batch:
            value = {
                "device_id": reading.device_id,
                "metric": reading.metric,
                "ts": reading.ts,
                "value": reading.value,
                "seq": reading.seq,
            }
            yield key, json.dumps(value).encode()


def record(case: str, impl: str, metric: str, value: float) -> dict[str, Any]:
    return {"case": case, "impl": impl, "metric": metric, "value": value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kafka",
        default=os.environ.get("IOTDATA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="bootstrap servers (default $IOTDATA_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    parser.add_argument("--devices", type=int, default=1000, help="devices (default 1000)")
    parser.add_argument("--batch", type=int, default=100, help="readings per batch (default 100)")
    parser.add_argument(
        "--readings", type=int, default=500_000, help="readings for iotdata (default 500000)"
    )
    parser.add_argument(
        "--baseline-readings",
        type=int,
        default=50_000,
        help="readings for plain aiokafka, which is slower (default 50000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)

    topic = f"bench-producer-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(args.kafka, TopicSpec(name=topic, partitions=PARTITIONS)))
    ours = workload(args.devices, args.readings, args.batch)
    theirs = workload(args.devices, args.baseline_readings, args.batch)
    ours_count, theirs_count = sum(map(len, ours)), sum(map(len, theirs))
    ours_frames, theirs_json = list(frames(ours)), list(json_records(theirs))
    print(f"topic {topic}: {PARTITIONS} partitions", file=sys.stderr)
    best: dict[tuple[str, str], float] = {}

    def measure(case: str, impl: str, count: int, run: Awaitable[float]) -> None:
        rate = count / asyncio.run(run)  # type: ignore[arg-type]
        best[case, impl] = max(best.get((case, impl), 0.0), rate)

    for run in range(args.repeats):
        print(f"run {run + 1}/{args.repeats} ...", file=sys.stderr)
        measure(PRODUCER, "iotdata", ours_count, run_iotdata(args.kafka, topic, ours_frames))
        measure(PRODUCER, "aiokafka", theirs_count, run_aiokafka(args.kafka, topic, theirs_json))
        measure(ENCODING, "iotdata", ours_count, run_iotdata(args.kafka, topic, frames(ours)))
        measure(
            ENCODING,
            "aiokafka",
            theirs_count,
            run_aiokafka(args.kafka, topic, json_records(theirs)),
        )
    rows = []
    for case in (PRODUCER, ENCODING):
        ours_rate, theirs_rate = best[case, "iotdata"], best[case, "aiokafka"]
        rows += [
            record(case, "iotdata", "readings_per_s", ours_rate),
            record(case, "aiokafka", "readings_per_s", theirs_rate),
            record(case, "ratio", "readings_per_s", ours_rate / theirs_rate),
        ]
        print(f"{case}:")
        print(f"  PartitionedProducer, {args.batch} readings a record: {ours_rate:>12,.0f} /s")
        print(f"  aiokafka send(), one JSON record a reading: {theirs_rate:>12,.0f} /s")
        print(f"  ratio {ours_rate / theirs_rate:.1f}x")
    ratio = best[PRODUCER, "iotdata"] / best[PRODUCER, "aiokafka"]
    verdict = "PASS" if ratio >= 20 else "FAIL"
    print(f"ratio {ratio:.1f}x  {verdict}  target >= 20x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
