"""Gateway faults on real Mosquitto and real Kafka, checked by ``(device_id, seq)``:
Kafka stopped and restarted, a gateway killed with SIGKILL, two gateways sharing the load."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from iotdata.errors import DeliveryTimeoutError
from iotdata.gateway import Gateway
from iotdata.kafka import PartitionedProducer, ProducerSettings
from tests.conftest import REPO_ROOT
from tests.gateway._support import (
    Fleet,
    GatewayProcess,
    check_delivery,
    create_topics,
    gateway_settings,
    read_topic,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.kafka]

SERVICES = REPO_ROOT / "scripts" / "services.sh"


def services(command: str) -> None:
    subprocess.run([str(SERVICES), command, "kafka"], check=True, timeout=300)


def test_kafka_stopped_and_restarted_loses_nothing_and_keeps_order(
    mqtt_url: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    kafka_topics = create_topics(kafka_bootstrap, unique_name)
    settings = gateway_settings(
        mqtt_url, kafka_bootstrap, unique_name, kafka_topics, max_in_flight=20
    )

    async def outage(gateway: Gateway, fleet: Fleet) -> tuple[int, int]:
        """With Kafka down: the in-flight peak, and messages taken after the stall began."""
        # A send with a delivery deadline fails clearly, and stops its producer rather than
        # letting later records overtake the failed one.
        doomed = await quick.send(kafka_topics.devices, "dev-0", b"x")
        with pytest.raises(DeliveryTimeoutError):
            await asyncio.wait_for(doomed, 30)
        with pytest.raises(DeliveryTimeoutError):
            await quick.send(kafka_topics.devices, "dev-0", b"y")
        # The gateway stops taking messages instead of buffering them.
        received = gateway.statistics().received
        peak = 0
        for _ in range(30):
            await asyncio.sleep(0.1)
            peak = max(peak, gateway.statistics().in_flight)
        return peak, gateway.statistics().received - received

    async def scenario() -> tuple[set[tuple[str, int]], int, int]:
        nonlocal quick
        quick = await PartitionedProducer.start(
            ProducerSettings(bootstrap=kafka_bootstrap, delivery_timeout=3)
        )
        async with await Gateway.start(settings) as gateway:
            await asyncio.to_thread(gateway.wait_ready, 30)
            fleet = Fleet(mqtt_url, unique_name, tmp_path, interval=0.005).start()
            await quick.partitions(kafka_topics.devices)  # metadata, while Kafka is up
            await asyncio.sleep(2)
            await asyncio.to_thread(services, "stop")
            try:
                peak, stalled = await outage(gateway, fleet)
            finally:
                await asyncio.to_thread(services, "start")
                await quick.close()
            accepted = await asyncio.to_thread(fleet.stop, 180)
            deadline = time.monotonic() + 120
            while gateway.statistics().in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        return accepted, peak, stalled

    quick: PartitionedProducer
    accepted, peak, stalled = asyncio.run(scenario())
    assert peak <= 20, f"{peak} messages in flight with max_in_flight=20"
    assert stalled <= 20
    duplicates = check_delivery(
        read_topic(kafka_bootstrap, kafka_topics.telemetry, len(accepted)), accepted
    )
    print(f"{len(accepted)} readings accepted, all in Kafka, {duplicates} duplicates")
    assert duplicates == 0  # the idempotent producer retried without doubling


def gateway_args(mqtt_url: str, kafka_bootstrap: str, prefix: str, client_id: str) -> list[str]:
    return [
        "--mqtt",
        mqtt_url,
        "--kafka",
        kafka_bootstrap,
        "--prefix",
        prefix,
        "--group",
        prefix,
        "--client-id",
        client_id,
        "--max-in-flight",
        "50",
    ]


def test_gateway_killed_with_sigkill_and_restarted_loses_nothing(
    mqtt_url: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    kafka_topics = create_topics(kafka_bootstrap, unique_name)
    args = gateway_args(mqtt_url, kafka_bootstrap, unique_name, f"{unique_name}-gw")
    gateway = GatewayProcess(args, tmp_path / "gateway.log").start()
    fleet = Fleet(mqtt_url, unique_name, tmp_path, interval=0.002).start()
    time.sleep(2)
    gateway.kill()  # mid-stream: messages in flight, acks not sent
    time.sleep(1)  # the devices keep publishing into the gateway's persistent session
    gateway.start()
    time.sleep(1)
    accepted = fleet.stop()
    records = read_topic(kafka_bootstrap, kafka_topics.telemetry, len(accepted))
    gateway.stop()
    duplicates = check_delivery(records, accepted)
    print(f"{len(accepted)} readings accepted, all in Kafka, {duplicates} duplicates")


def test_two_gateways_split_the_load_and_lose_nothing(
    mqtt_url: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    kafka_topics = create_topics(kafka_bootstrap, unique_name)
    gateways = [
        GatewayProcess(
            gateway_args(mqtt_url, kafka_bootstrap, unique_name, f"{unique_name}-gw{i}"),
            tmp_path / f"gateway{i}.log",
        ).start()
        for i in range(2)
    ]
    fleet = Fleet(mqtt_url, unique_name, tmp_path, devices=6, interval=0.002).start()
    time.sleep(3)
    accepted = fleet.stop()
    records = read_topic(kafka_bootstrap, kafka_topics.telemetry, len(accepted))
    for gateway in gateways:
        gateway.stop()
    assert check_delivery(records, accepted) == 0
    share = Counter(record.headers["gateway"].decode() for record in records)
    assert set(share) == {f"{unique_name}-gw0", f"{unique_name}-gw1"}, share
    assert min(share.values()) > 0.2 * sum(share.values()), share
