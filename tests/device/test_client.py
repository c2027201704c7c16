"""DeviceClient against real Mosquitto brokers; every check is on (device_id, seq)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tenacity

import iotdata
from iotdata import codec
from iotdata.device import DeviceClient, QueueConfig, ReadingQueue
from iotdata.mqtt import MqttConnection, MqttSettings, Topics
from tests._brokers import PrivateBroker
from tests._helpers import Collector

pytestmark = pytest.mark.mqtt
FAST = tenacity.wait_fixed(0.2)


def first_arrival_order(seqs: list[tuple[str, int]], device: str) -> list[int]:
    seen: set[int] = set()
    order = []
    for dev, seq in seqs:
        if dev == device and seq not in seen:
            seen.add(seq)
            order.append(seq)
    return order


def test_every_reading_arrives_once_in_order(
    mqtt_url: str, unique_name: str, tmp_path: Path
) -> None:
    topics = Topics(unique_name)
    collector = Collector(mqtt_url, topics, f"{unique_name}-cloud")
    queue = QueueConfig(path=tmp_path / "q.sqlite")
    try:
        with DeviceClient.connect(
            "pump-1", mqtt_url, queue=queue, topics=topics, batch_size=100, linger=0.05
        ) as client:
            client.wait_connected(10)
            for i in range(1000):
                assert client.send("temp", 20 + i / 100, ts=1_700_000_000_000_000 + i) == i
            client.send_many([("rpm", 1200), ("state", "ok")])
            client.flush(30)
            stats = client.statistics()
            assert (stats.queued, stats.in_flight, stats.acknowledged) == (0, 0, 1002)
        collector.wait_for({("pump-1", s) for s in range(1002)})
        assert Counter(collector.seqs).most_common(1)[0][1] == 1  # nothing doubled
        assert first_arrival_order(collector.seqs, "pump-1") == list(range(1002))
        assert collector.values["pump-1", 500] == 25.0
        assert collector.values["pump-1", 1001] == "ok"
        states = [json.loads(p) for t, p in collector.other if t.endswith("/pump-1/state")]
        assert states[0] == {"online": True} and states[-1] == {"online": False}
    finally:
        collector.close()


def test_a_broker_outage_loses_nothing(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """The broker is down for 30 s while the device keeps sending.

    The cloud side keeps a persistent session on a broker that persists sessions, so what the
    device publishes right after the restart waits for it even before it has reconnected.
    """
    topics = Topics(unique_name)
    private_broker.stop()
    private_broker.persistent = True
    private_broker.start()
    collector = Collector(private_broker.url, topics, f"{unique_name}-cloud", persistent=True)
    client = DeviceClient.connect(
        "pump-2",
        private_broker.url,
        queue=QueueConfig(path=tmp_path / "q.sqlite"),
        topics=topics,
        batch_size=50,
        linger=0.05,
        backoff=FAST,
    )
    accepted = []
    try:
        client.wait_connected(10)
        outage_at, restart_at, end = 1.0, 31.0, 34.0
        started = time.monotonic()
        stopped = False
        while (elapsed := time.monotonic() - started) < end:
            accepted.append(client.send("temp", elapsed))
            if not stopped and elapsed > outage_at:
                private_broker.stop()
                stopped = True
            if stopped and private_broker.process is None and elapsed > restart_at:
                private_broker.start()
            time.sleep(0.01)
        collector.connection.wait_connected(20)
        client.flush(60)
        assert client.statistics().reconnects >= 1
    finally:
        client.close()
    expected = {("pump-2", seq) for seq in accepted}
    collector.wait_for(expected, timeout=60)
    duplicates = sum(n - 1 for n in Counter(collector.seqs).values())
    print(f"outage: {len(expected)} readings accepted, all arrived, {duplicates} duplicates")
    assert first_arrival_order(collector.seqs, "pump-2") == sorted(seq for _, seq in expected)
    collector.close()


CHILD = """
import sys, time
import iotdata
from iotdata import codec
from iotdata.device import DeviceClient, QueueConfig, ReadingQueue
from iotdata.mqtt import Topics
url, prefix, path = sys.argv[1:4]
client = DeviceClient.connect("pump-3", url, queue=QueueConfig(path=path), topics=Topics(prefix),
                              batch_size=20, linger=0.01)
i = 0
while True:
    seq = client.send("temp", float(i))
    print(seq, flush=True)
    i += 1
    time.sleep(0.001)
"""


def test_sigkill_mid_stream_loses_nothing(mqtt_url: str, unique_name: str, tmp_path: Path) -> None:
    topics = Topics(unique_name)
    collector = Collector(mqtt_url, topics, f"{unique_name}-cloud")
    path = str(tmp_path / "q.sqlite")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mqtt_url, unique_name, path],
        stdout=subprocess.PIPE,
        text=True,
    )
    accepted: list[int] = []
    try:
        assert child.stdout is not None
        while len(accepted) < 1500:
            line = child.stdout.readline()
            assert line, "the device process died early"
            accepted.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            accepted.extend(int(line) for line in child.stdout.read().split())
    try:
        with DeviceClient.connect(
            "pump-3", mqtt_url, queue=QueueConfig(path=path), topics=topics, linger=0.01
        ) as restarted:
            restarted.wait_connected(10)
            assert restarted.send("temp", -1.0) > accepted[-1]  # seqs are never reused
            restarted.flush(30)
        collector.wait_for({("pump-3", seq) for seq in accepted})
        duplicates = sum(n - 1 for n in Counter(collector.seqs).values())
        print(f"SIGKILL: {len(accepted)} accepted readings all arrived, {duplicates} duplicates")
    finally:
        collector.close()


def cloud_publish(url: str, topic: str, document: object, *, retain: bool = False) -> None:
    with MqttConnection.start(MqttSettings.from_url(url), f"cloud-{time.monotonic_ns()}") as cloud:
        cloud.wait_connected(10)
        payload = b"" if document is None else json.dumps(document).encode()
        cloud.publish(topic, payload, retain=retain).wait(10)


def test_commands_run_and_answer_with_the_request_id(mqtt_url: str, unique_name: str) -> None:
    topics = Topics(unique_name)
    collector = Collector(mqtt_url, topics, f"{unique_name}-cloud")
    with DeviceClient.connect("pump-4", mqtt_url, topics=topics) as client:

        @client.command("add")
        def add(args: dict[str, int]) -> int:
            return args["a"] + args["b"]

        client.wait_connected(10)
        time.sleep(0.3)
        cloud_publish(
            mqtt_url, topics.command("pump-4", "add"), {"id": "r1", "args": {"a": 2, "b": 3}}
        )
        cloud_publish(mqtt_url, topics.command("pump-4", "add"), {"id": "r2", "args": {"a": 2}})
        cloud_publish(mqtt_url, topics.command("pump-4", "nope"), {"id": "r3"})
        results = collector.wait_other(lambda other: sum("/result" in t for t, _ in other) == 3)
    replies = {json.loads(p)["id"]: json.loads(p) for t, p in results if "/result" in t}
    assert replies["r1"] == {"id": "r1", "ok": True, "result": 5}
    assert replies["r2"]["ok"] is False and "KeyError" in replies["r2"]["error"]
    assert replies["r3"]["ok"] is False and "unknown command" in replies["r3"]["error"]
    collector.close()


def test_desired_config_reaches_a_device_that_was_offline(mqtt_url: str, unique_name: str) -> None:
    topics = Topics(unique_name)
    desired = topics.config_desired("pump-5")
    cloud_publish(mqtt_url, desired, {"version": 1, "config": {"rate": 1}}, retain=True)
    applied: list[tuple[int, dict[str, int]]] = []
    collector = Collector(mqtt_url, topics, f"{unique_name}-cloud")
    try:
        with DeviceClient.connect("pump-5", mqtt_url, topics=topics) as client:
            client.on_config(lambda config, version: applied.append((version, dict(config))))
            client.wait_connected(10)
            collector.wait_other(lambda o: any("config/reported" in t for t, _ in o))
        # Changed while the device is offline: the retained document waits for it.
        cloud_publish(mqtt_url, desired, {"version": 2, "config": {"rate": 5}}, retain=True)
        with DeviceClient.connect("pump-5", mqtt_url, topics=topics) as client:
            client.on_config(lambda config, version: applied.append((version, dict(config))))
            client.wait_connected(10)
            reports = collector.wait_other(lambda o: sum("config/reported" in t for t, _ in o) >= 2)
    finally:
        cloud_publish(mqtt_url, desired, None, retain=True)  # clear the retained message
        collector.close()
    assert applied[-1] == (2, {"rate": 5})
    last = json.loads([p for t, p in reports if "config/reported" in t][-1])
    assert last == {"version": 2, "config": {"rate": 5}}


def test_asyncio_use_does_not_block_the_loop(mqtt_url: str, unique_name: str) -> None:
    topics = Topics(unique_name)
    collector = Collector(mqtt_url, topics, f"{unique_name}-cloud")

    accepted: list[int | None] = []

    async def main() -> None:
        async with DeviceClient.connect("pump-6", mqtt_url, topics=topics, linger=0.01) as client:
            await asyncio.to_thread(client.wait_connected, 10)
            accepted.extend([await client.asend("temp", float(i)) for i in range(100)])
            await client.aflush(30)

    asyncio.run(main())
    assert None not in accepted
    collector.wait_for({("pump-6", s) for s in accepted})  # type: ignore[misc]
    collector.close()


class Subscriber:
    """A gateway's MQTT side without Kafka: a persistent session on ``topic_filter`` that
    records every (device, seq) it receives, reconnecting only after ``reconnect_after`` s."""

    def __init__(self, url: str, client_id: str, topic_filter: str, reconnect_after: float):
        self.seqs: list[tuple[str, int]] = []
        self._cond = threading.Condition()
        self.connection = MqttConnection.start(
            MqttSettings.from_url(url),
            client_id,
            clean_start=False,
            session_expiry=3600,
            backoff=tenacity.wait_fixed(reconnect_after),
            subscriptions={topic_filter: self._arrive},
        )
        self.connection.wait_subscribed(10)

    def _arrive(self, message: Any) -> None:
        batch = codec.decode(message.payload)
        with self._cond:
            self.seqs.extend((batch.device_id, seq) for c in batch.columns for seq in c.seq)
            self._cond.notify_all()

    def wait_for(self, expected: set[tuple[str, int]], timeout: float = 60) -> None:
        with self._cond:
            done = self._cond.wait_for(lambda: expected <= set(self.seqs), timeout)
            missing = expected - set(self.seqs)
        assert done, f"{len(missing)} accepted readings lost, e.g. {sorted(missing)[:5]}"


def send_through_a_broker_restart(
    broker: PrivateBroker, client: DeviceClient, subscriber: Subscriber
) -> list[int]:
    """Send readings before, during and after a restart of the broker; the accepted seqs."""
    accepted = [client.send("temp", float(i)) for i in range(200)]
    client.flush(30)
    broker.stop()
    broker.start()
    client.wait_connected(20)  # the device is back long before the subscriber
    deadline = time.monotonic() + 10
    while not subscriber.connection.connected and time.monotonic() < deadline:
        accepted.append(client.send("temp", 1.0))
        time.sleep(0.005)  # a reading every 5 ms while the subscriber is away
    accepted += [client.send("temp", 2.0) for i in range(200)]
    client.flush(60)
    return [seq for seq in accepted if seq is not None]


def test_a_broker_restart_with_a_shared_subscription_loses_nothing(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """Mosquitto restores a persistent session after a restart, but not its shared
    subscriptions: until the gateway subscribes again, the device's publishes get PUBACK 0x10
    ("no matching subscribers") and are dropped by the broker. The device keeps them queued and
    sends them again, so every accepted reading arrives."""
    topics = Topics(unique_name)
    private_broker.stop()
    private_broker.persistent = True
    private_broker.start()
    subscriber = Subscriber(
        private_broker.url, f"{unique_name}-gw", topics.all_telemetry("gw"), reconnect_after=3
    )
    queue = QueueConfig(path=tmp_path / "q.sqlite")
    client = DeviceClient.connect(
        "pump-8", private_broker.url, queue=queue, topics=topics, linger=0.01, backoff=FAST,
        resend_backoff=tenacity.wait_fixed(0.1),
    )  # fmt: skip
    try:
        accepted = send_through_a_broker_restart(private_broker, client, subscriber)
        subscriber.wait_for({("pump-8", seq) for seq in accepted})
        stats = client.statistics()
        assert stats.refused > 0, "the broker never answered 0x10: the test proved nothing"
        assert stats.last_refusal is not None and "0x10" in stats.last_refusal
    finally:
        client.close()
        subscriber.connection.close()


def test_an_unshared_subscription_survives_a_restart_for_a_3_1_1_device(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """Without reason codes (MQTT 3.1.1) the device cannot tell a dropped message from a
    delivered one; an ordinary subscription of a persistent session is restored with it, and
    the broker queues for it until the gateway is back: nothing is lost that way either."""
    topics = Topics(unique_name)
    private_broker.stop()
    private_broker.persistent = True
    private_broker.start()
    subscriber = Subscriber(
        private_broker.url, f"{unique_name}-gw", topics.all_telemetry(), reconnect_after=3
    )
    settings = MqttSettings.from_url(private_broker.url, protocol=4)
    client = DeviceClient.connect(
        "pump-9", settings, queue=QueueConfig(path=tmp_path / "q.sqlite"), topics=topics,
        linger=0.01, backoff=FAST,
    )  # fmt: skip
    try:
        accepted = send_through_a_broker_restart(private_broker, client, subscriber)
        subscriber.wait_for({("pump-9", seq) for seq in accepted})
        assert client.statistics().refused == 0
    finally:
        client.close()
        subscriber.connection.close()


def wide_text(count: int) -> str:
    """Text that compresses badly: 4-byte characters in a scrambled order."""
    return "".join(chr(0x20000 + (i * 7919) % 40000) for i in range(count))


def test_a_reading_over_the_packet_limit_is_refused_at_send(
    mqtt_url: str, unique_name: str
) -> None:
    settings = MqttSettings.from_url(mqtt_url, max_packet_size=1000)
    with DeviceClient.connect("pump-10", settings, topics=Topics(unique_name)) as client:
        with pytest.raises(iotdata.InvalidInputError, match="over the"):
            client.send("note", wide_text(400))  # about 1.6 KB encoded
        with pytest.raises(iotdata.InvalidInputError, match="over the"):
            client.send_many([("temp", 1.0), ("note", wide_text(400))])
        assert client.send("note", "short") is not None
        assert client.statistics().queued == 1  # nothing of the refused calls was kept


def test_a_reading_the_broker_has_no_room_for_is_quarantined_not_a_dead_sender(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """A broker that announces a smaller packet limit than the one a queued reading was
    accepted under: that reading is set aside (kept in the queue file, counted) and the readings
    behind it are delivered. It used to kill the sender thread for good."""
    private_broker.stop()
    private_broker.extra_config = "max_packet_size 1500\n"
    private_broker.start()
    path = tmp_path / "q.sqlite"
    with ReadingQueue.open("pump-11", QueueConfig(path=path)) as queue:  # accepted offline
        queue.put([("temp", 1, 1.0), ("note", 2, wide_text(1000)), ("temp", 3, 3.0)])
    topics = Topics(unique_name)
    collector = Collector(private_broker.url, topics, f"{unique_name}-cloud")
    try:
        with DeviceClient.connect(
            "pump-11", private_broker.url, queue=QueueConfig(path=path), topics=topics,
            linger=0.01,
        ) as client:  # fmt: skip
            client.flush(20)
            stats = client.statistics()
            assert (stats.quarantined, stats.queued) == (1, 0)
            [(seq, metric, ts, value, reason)] = client.queue.quarantined()
            assert (seq, metric, ts, value) == (1, "note", 2, wide_text(1000))
            assert "packet limit" in reason
            assert client.send("temp", 4.0) == 3  # the sender is alive
            client.flush(20)
        collector.wait_for({("pump-11", 0), ("pump-11", 2), ("pump-11", 3)}, exact=True)
    finally:
        collector.close()
