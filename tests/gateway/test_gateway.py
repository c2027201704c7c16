"""The gateway on real Mosquitto and real Kafka: forwarding, dead letters, presence, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from iotdata import codec
from iotdata.errors import InvalidInputError
from iotdata.gateway import Gateway, GatewaySettings
from iotdata.model import Batch
from iotdata.mqtt import MqttConnection, MqttSettings
from tests.gateway._support import (
    Fleet,
    check_delivery,
    create_topics,
    gateway_settings,
    read_topic,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.kafka]


def bad_messages(prefix: str) -> list[tuple[str, bytes, str]]:
    """(MQTT topic, payload, expected dead-letter reason)."""
    good = codec.encode(Batch.from_columns("dev-x", {"temp": ([1, 2], [1.0, 2.0], [0, 1])}))
    return [
        (f"{prefix}/dev-x/telemetry", b"garbage", "malformed"),
        (f"{prefix}/dev-x/telemetry", good[:-1] + bytes([good[-1] ^ 1]), "malformed"),
        (f"{prefix}/dev-y/telemetry", good, "spoofed"),
        (f"{prefix}/dev-x/telemetry", bytes(70_000), "oversized"),
    ]


async def http_get(host: str, port: int) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    text = (await reader.read()).decode()
    writer.close()
    return text


def test_telemetry_dead_letters_presence_and_metrics(
    mqtt_url: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    kafka_topics = create_topics(kafka_bootstrap, unique_name)
    settings = gateway_settings(
        mqtt_url,
        kafka_bootstrap,
        unique_name,
        kafka_topics,
        limits=codec.Limits(max_frame_bytes=65_536),
        metrics_port=0,
    )

    async def scenario() -> tuple[set[tuple[str, int]], str]:
        async with await Gateway.start(settings) as gateway:
            await asyncio.to_thread(gateway.wait_ready, 30)
            fleet = Fleet(mqtt_url, unique_name, tmp_path, devices=3, interval=0.001).start()
            await asyncio.sleep(1.0)
            accepted = await asyncio.to_thread(fleet.stop)
            with MqttConnection.start(MqttSettings.from_url(mqtt_url), unique_name) as rogue:
                await asyncio.to_thread(rogue.wait_connected, 10)
                for topic, payload, _ in bad_messages(unique_name):
                    await asyncio.to_thread(rogue.publish(topic, payload).wait, 10)
            deadline = time.monotonic() + 60
            while gateway.statistics().dead_lettered < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stats = gateway.statistics()
            address = gateway.metrics_address
            assert address is not None
            metrics = await http_get(*address)
        assert stats.forwarded_readings >= len(accepted)
        assert stats.dead_letter_reasons == {"malformed": 2, "spoofed": 1, "oversized": 1}
        assert stats.presence >= 6  # a birth and a goodbye per device
        assert stats.in_flight == 0 and stats.acknowledged == stats.received
        assert stats.latency_p50 is not None and stats.latency_p99 is not None
        return accepted, metrics

    accepted, metrics = asyncio.run(scenario())
    assert 'iotdata_gateway_dead_letters_total{reason="spoofed"} 1' in metrics
    assert "iotdata_gateway_forwarded_readings_total" in metrics
    records = read_topic(kafka_bootstrap, kafka_topics.telemetry, len(accepted))
    assert check_delivery(records, accepted) == 0
    headers = records[0].headers
    assert headers["content-type"] == b"application/vnd.iotdata.batch"
    assert headers["gateway"] == f"{unique_name}-gw".encode()

    dead = asyncio.run(_raw(kafka_bootstrap, kafka_topics.dead_letters, 4))
    expected = sorted((payload, reason) for _, payload, reason in bad_messages(unique_name))
    assert sorted((value, headers["reason"].decode()) for value, headers in dead) == expected
    presence = asyncio.run(_raw(kafka_bootstrap, kafka_topics.devices, 6))
    states = [json.loads(value) for value, _ in presence]
    assert {"online": True} in states and {"online": False} in states


async def _raw(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((m.value, dict(m.headers)) for m in batch)
    finally:
        await consumer.stop()
    return out


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(InvalidInputError, match="MQTT 5"):
        GatewaySettings(mqtt=MqttSettings.from_url("mqtt://127.0.0.1:1883?protocol=3.1.1"))
    with pytest.raises(InvalidInputError, match="shared subscription group"):
        GatewaySettings(group="a/b")
    with pytest.raises(InvalidInputError, match="max_in_flight"):
        GatewaySettings(max_in_flight=0)
