"""What the gateway tests share: Kafka topics, a device fleet, a gateway process, a reader."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from aiokafka import AIOKafkaConsumer

from iotdata import codec
from iotdata.device import DeviceClient, QueueConfig
from iotdata.gateway import GatewaySettings, KafkaTopics
from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics
from iotdata.mqtt import MqttSettings, Topics

Key = tuple[str, int]  # (device_id, seq)


def create_topics(bootstrap: str, prefix: str, partitions: int = 3) -> KafkaTopics:
    topics = KafkaTopics.with_prefix(prefix)
    names = (topics.telemetry, topics.devices, topics.dead_letters)
    specs = [TopicSpec(name=name, partitions=partitions) for name in names]
    asyncio.run(ensure_topics(bootstrap, *specs))
    return topics


def gateway_settings(
    mqtt_url: str, bootstrap: str, prefix: str, topics: KafkaTopics, **options: Any
) -> GatewaySettings:
    """A gateway for the test's own topics, group and client id; ``options`` add or override."""
    fields: dict[str, Any] = {
        "mqtt": MqttSettings.from_url(mqtt_url),
        "kafka": ProducerSettings(bootstrap=bootstrap),
        "topics": Topics(prefix),
        "kafka_topics": topics,
        "group": prefix,
        "client_id": f"{prefix}-gw",
    }
    return GatewaySettings(**(fields | options))


@attrs.define
class Fleet:
    """Durable device clients sending one reading each every ``interval`` seconds, in a thread."""

    mqtt_url: str
    prefix: str
    folder: Path
    devices: int = 4
    interval: float = 0.002
    accepted: set[Key] = attrs.Factory(set)
    _clients: list[DeviceClient] = attrs.Factory(list)
    _stop: threading.Event = attrs.Factory(threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Fleet:
        self._clients = [
            DeviceClient.connect(
                f"dev-{i}",
                self.mqtt_url,
                queue=QueueConfig(path=str(self.folder / f"dev-{i}.queue")),
                topics=Topics(self.prefix),
                batch_size=50,
                linger=0.05,
            )
            for i in range(self.devices)
        ]
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()
        return self

    def _send(self) -> None:
        value = 0.0
        while not self._stop.is_set():
            for client in self._clients:
                self.accepted.add((client.device_id, client.send("temp", value)))
            value += 0.25
            time.sleep(self.interval)

    def stop(self, flush_timeout: float = 120) -> set[Key]:
        """Stop sending, wait until the broker has everything, close; the accepted keys."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for client in self._clients:
            client.flush(flush_timeout)
            client.close()
        return self.accepted


@attrs.define
class Record:
    partition: int
    offset: int
    keys: list[Key]
    headers: dict[str, bytes]


def read_topic(bootstrap: str, topic: str, until: int, timeout: float = 120) -> list[Record]:
    """Records of ``topic`` (frames decoded) until ``until`` readings are seen or timeout."""

    async def read() -> list[Record]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list[Record] = []
        seen = 0
        deadline = time.monotonic() + timeout
        try:
            while seen < until and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for message in batch:
                        decoded = codec.decode(message.value)
                        keys = [
                            (decoded.device_id, seq)
                            for column in decoded.columns
                            for seq in column.seq
                        ]
                        seen += len(keys)
                        headers = {name: bytes(value) for name, value in message.headers}
                        records.append(Record(message.partition, message.offset, keys, headers))
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())


def check_delivery(records: Iterable[Record], accepted: set[Key]) -> int:
    """Assert every accepted reading is in Kafka, each device in one partition, in seq order
    per device within what one gateway forwarded; return how many readings arrived more than
    once (allowed: at-least-once transport).

    Gateways sharing a subscription each get some of a device's messages, and two of them can
    reach Kafka in either order: each gateway keeps the order of its own, and (device_id, seq)
    with event time downstream absorbs the rest (docs/gateway.md)."""
    counts: Counter[Key] = Counter()
    partition_of: dict[str, int] = {}
    last_seq: dict[tuple[str, bytes | None], int] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        gateway = record.headers.get("gateway")
        for device, seq in record.keys:
            assert partition_of.setdefault(device, record.partition) == record.partition
            if counts[device, seq] == 0:  # first copies appear in seq order
                last = last_seq.get((device, gateway), -1)
                assert seq > last, f"{device} seq {seq} after {last} from gateway {gateway!r}"
                last_seq[device, gateway] = seq
            counts[device, seq] += 1
    missing = accepted - set(counts)
    assert not missing, f"{len(missing)} accepted readings missing, e.g. {sorted(missing)[:5]}"
    return sum(n - 1 for n in counts.values() if n > 1)


@attrs.define
class GatewayProcess:
    """``python -m iotdata gateway`` in a child process."""

    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> GatewayProcess:
        self.log.write_bytes(b"")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iotdata", "gateway", "--stats-every", "1", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while b" running" not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> str:
        """SIGTERM, wait for a clean exit, return the log."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(60)
        text = self.log.read_text()
        assert code == 0, text
        return text
