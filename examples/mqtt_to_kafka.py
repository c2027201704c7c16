"""Bridge device telemetry from MQTT into Kafka with the iotdata gateway.

    python examples/mqtt_to_kafka.py --mqtt mqtt://127.0.0.1:1883 --kafka 127.0.0.1:9092

Creates the Kafka topics, starts a gateway, lets a few devices publish, and reads back what
reached Kafka: each record is the device's own frame, keyed by its id, in the partition a Java
consumer expects. In production run `iotdata gateway` instead, one process per core or host.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from iotdata import codec
from iotdata.device import DeviceClient, QueueConfig
from iotdata.gateway import Gateway, GatewaySettings, KafkaTopics
from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics
from iotdata.mqtt import MqttSettings, Topics


def publish(mqtt: str, prefix: str, devices: int, readings: int, folder: Path) -> int:
    """Each device sends ``readings`` temperatures through its durable queue."""
    for d in range(devices):
        queue = QueueConfig(path=folder / f"pump-{d}.queue")
        with DeviceClient.connect(f"pump-{d}", mqtt, queue=queue, topics=Topics(prefix)) as client:
            client.send_many([("temp", 20.0 + (i % 50) / 10) for i in range(readings)])
            client.flush(60)
    return devices * readings


async def read_back(kafka: str, topic: str, expected: int) -> dict[str, int]:
    """Readings per device found in the Kafka topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, int] = {}
    try:
        while sum(found.values()) < expected:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    batch = codec.decode(record.value)
                    found[batch.device_id] = found.get(batch.device_id, 0) + len(batch)
    finally:
        await consumer.stop()
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument(
        "--prefix",
        default=f"example-{uuid.uuid4().hex[:6]}",
        help="MQTT and Kafka topic prefix (default: a new one each run)",
    )
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--readings", type=int, default=1000, help="per device")
    args = parser.parse_args()

    kafka_topics = KafkaTopics.with_prefix(args.prefix)
    names = (kafka_topics.telemetry, kafka_topics.devices, kafka_topics.dead_letters)
    await ensure_topics(args.kafka, *(TopicSpec(name=name, partitions=6) for name in names))
    settings = GatewaySettings(
        mqtt=MqttSettings.from_url(args.mqtt),
        kafka=ProducerSettings(bootstrap=args.kafka),
        topics=Topics(args.prefix),
        kafka_topics=kafka_topics,
        group=f"{args.prefix}-gateways",
        client_id=f"{args.prefix}-gateway-1",
    )
    async with await Gateway.start(settings) as gateway:
        await asyncio.to_thread(gateway.wait_ready, 30)  # subscribed: nothing published is missed
        with tempfile.TemporaryDirectory() as folder:
            sent = await asyncio.to_thread(
                publish, args.mqtt, args.prefix, args.devices, args.readings, Path(folder)
            )
        found = await asyncio.wait_for(read_back(args.kafka, kafka_topics.telemetry, sent), 120)
        stats = gateway.statistics()
    print(f"{sum(found.values())} readings from {len(found)} devices in {kafka_topics.telemetry}")
    print(f"gateway: {stats.forwarded} messages forwarded, {stats.dead_lettered} dead-lettered")


if __name__ == "__main__":
    asyncio.run(main())
