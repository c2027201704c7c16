"""Gateway benchmark: readings per second from Mosquitto into Kafka, on this machine's brokers.

The gateway's persistent session is created first, then ``--frames`` codec frames of
``--batch`` readings (round-robin over ``--devices`` devices) are published at QoS 1 while the
gateway is away, so the broker queues them in the session. Then the gateway starts and the clock
runs until Kafka acknowledged every reading: that is the gateway's own rate (validation of each
frame, a Kafka record per message, MQTT acks in order), not the publisher's. Also reported: the
p50 and p99 latency from a message's arrival at the gateway to Kafka's acknowledgement, which in
this drain includes the wait behind ``--max-in-flight`` messages; so the latency that counts is
measured afterwards, with the same messages published live at ``--steady-load`` (half) of the
measured rate.

Run from the repository root, with the services up::

    python benchmarks/gateway.py [--frames 2000] [--batch 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _common

_common.ensure_repo_importable()

from iotdata import codec  # noqa: E402
from iotdata.gateway import Gateway, GatewaySettings, KafkaTopics  # noqa: E402
from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics  # noqa: E402
from iotdata.model import Batch  # noqa: E402
from iotdata.mqtt import MqttConnection, MqttSettings, Topics  # noqa: E402

BASE_TS = 1_700_000_000_000_000


def frames(devices: int, count: int, batch: int) -> list[tuple[str, bytes]]:
    """``(device id, frame)``: ``count`` frames of ``batch`` readings, round-robin."""
    encoder = codec.Encoder()
    out = []
    for n in range(count):
        device, first = n % devices, (n // devices) * batch
        ts = [BASE_TS + (first + i) * 1_000_000 for i in range(batch)]
        values = [round(20 + 5 * math.sin((first + i + device) / 40), 2) for i in range(batch)]
        seq = list(range(first, first + batch))
        data = Batch.from_columns(f"dev-{device:04d}", {"temp": (ts, values, seq)})
        out.append((data.device_id, encoder.encode(data)))
    return out


def publish(
    url: str, topics: Topics, payloads: list[tuple[str, bytes]], rate: float | None = None
) -> None:
    """Publish at QoS 1 (``rate`` messages a second, or as fast as the broker takes them) and
    wait for every PUBACK."""
    with MqttConnection.start(MqttSettings.from_url(url), f"bench-pub-{uuid.uuid4().hex[:6]}") as c:
        c.wait_connected(10)
        pending = threading.Semaphore(200)
        deliveries = []
        started = time.perf_counter()
        for n, (device, payload) in enumerate(payloads):
            if rate is not None:
                time.sleep(max(0.0, started + n / rate - time.perf_counter()))
            pending.acquire()
            delivery = c.publish(topics.telemetry(device), payload)
            delivery.add_done_callback(lambda _: pending.release())
            deliveries.append(delivery)
        for delivery in deliveries:
            delivery.wait(60)


async def drain(
    settings: GatewaySettings, readings: int, timeout: float, feed: Any = None
) -> dict[str, float]:
    """Run a gateway until it forwarded ``readings``, while ``feed()`` (if any) publishes."""
    started = time.perf_counter()
    async with await Gateway.start(settings) as gateway:
        await asyncio.to_thread(gateway.wait_ready, 30)
        publisher = None if feed is None else asyncio.create_task(asyncio.to_thread(feed))
        deadline = time.monotonic() + timeout
        while gateway.statistics().forwarded_readings < readings:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {gateway.statistics()}")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stats = gateway.statistics()
        if publisher is not None:
            await publisher
    return {
        "readings_per_s": readings / elapsed,
        "latency_p50_s": stats.latency_p50 or math.nan,
        "latency_p99_s": stats.latency_p99 or math.nan,
    }


def record(metric: str, value: float) -> dict[str, Any]:
    return {"case": "gateway", "impl": "iotdata", "metric": metric, "value": value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mqtt",
        default=os.environ.get("IOTDATA_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="broker URL (default $IOTDATA_MQTT_URL or mqtt://127.0.0.1:1883)",
    )
    parser.add_argument(
        "--kafka",
        default=os.environ.get("IOTDATA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="bootstrap servers (default $IOTDATA_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    parser.add_argument("--devices", type=int, default=200, help="devices (default 200)")
    parser.add_argument("--frames", type=int, default=2000, help="messages (default 2000)")
    parser.add_argument("--batch", type=int, default=500, help="readings a frame (default 500)")
    parser.add_argument(
        "--max-in-flight", type=int, default=1000, help="gateway's bound (default 1000)"
    )
    parser.add_argument(
        "--steady-load",
        type=float,
        default=0.5,
        help="for the latency: publish at this share of the measured rate (default 0.5)",
    )
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)

    name = f"bench_gw_{uuid.uuid4().hex[:8]}"
    kafka_topics = KafkaTopics.with_prefix(name)
    topic_names = (kafka_topics.telemetry, kafka_topics.devices, kafka_topics.dead_letters)
    asyncio.run(ensure_topics(args.kafka, *(TopicSpec(name=t, partitions=12) for t in topic_names)))
    topics = Topics(name)
    settings = GatewaySettings(
        mqtt=MqttSettings.from_url(args.mqtt),
        kafka=ProducerSettings(bootstrap=args.kafka),
        topics=topics,
        kafka_topics=kafka_topics,
        group=name,
        client_id=f"{name}-gw",
        max_in_flight=args.max_in_flight,
    )
    print("creating the gateway's session ...", file=sys.stderr)
    asyncio.run(drain(settings, 0, 30))
    payloads = frames(args.devices, args.frames, args.batch)
    readings = args.frames * args.batch
    print(f"queueing {args.frames} frames ({readings:,} readings) in it ...", file=sys.stderr)
    publish(args.mqtt, topics, payloads)
    print("draining through the gateway into Kafka ...", file=sys.stderr)
    result = asyncio.run(drain(settings, readings, 600))
    rate = result["readings_per_s"]
    steady_rate = rate * args.steady_load / args.batch  # messages a second
    print(
        f"steady load: {steady_rate:,.0f} messages/s ({args.steady_load:.0%}) ...", file=sys.stderr
    )
    steady = asyncio.run(
        drain(
            settings,
            readings,
            600,
            feed=lambda: publish(args.mqtt, topics, payloads, rate=steady_rate),
        )
    )
    print(f"gateway: {rate:>12,.0f} readings/s  ({args.batch} readings a message)")
    for label, figures in (("steady", steady), ("drain", result)):
        p50, p99 = figures["latency_p50_s"] * 1000, figures["latency_p99_s"] * 1000
        print(f"MQTT arrival -> Kafka ack, {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"{'PASS' if rate >= 300_000 else 'FAIL'}  target >= 300k readings/s")
    if args.json:
        rows = [
            record("readings_per_s", rate),
            record("latency_p50_s", steady["latency_p50_s"]),
            record("latency_p99_s", steady["latency_p99_s"]),
            record("drain_latency_p50_s", result["latency_p50_s"]),
            record("drain_latency_p99_s", result["latency_p99_s"]),
        ]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
