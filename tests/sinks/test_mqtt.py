"""The MQTT sink: conformance against the real broker (at least once, read back by a
subscriber), topics and payloads, and a broker outage."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import attrs
import pytest

from iotdata.mqtt import MqttConnection, MqttSettings, Topics
from iotdata.sinks import (
    Alert,
    BadRowError,
    MqttSink,
    RecordKind,
    RetryPolicy,
    SinkRetriableError,
    WindowAggregate,
)
from iotdata.testing import SinkContents, check_sink
from tests._brokers import PrivateBroker
from tests.sinks._readers import contents_of, json_record

pytestmark = pytest.mark.timeout(180)

ALERT = Alert("pump-7", "zscore:rpm", 61_000_000, "rpm", 2.0, 4.2, "critical", "fast")
AGG = WindowAggregate("pump-7", "rpm", 60_000_000, 120_000_000, 3, 1.0, 2.0, 4.5, 1, {"p99": 2.0})


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@attrs.define
class Subscriber:
    """Every message under ``{prefix}/#``, in arrival order. :meth:`sync` returns once every
    message the broker acknowledged before the call has arrived: it publishes a barrier on the
    same connection and waits for it, and the broker forwards in order."""

    prefix: str
    connection: MqttConnection
    messages: list[tuple[str, bytes]] = attrs.Factory(list)
    barriers: set[bytes] = attrs.Factory(set)
    changed: threading.Condition = attrs.Factory(threading.Condition)

    @classmethod
    def start(cls, url: str, prefix: str) -> Subscriber:
        connection = MqttConnection.start(MqttSettings.from_url(url), f"sub-{uuid.uuid4().hex}")
        subscriber = cls(prefix, connection)
        connection.subscribe(f"{prefix}/#", subscriber._arrived)
        subscriber.sync()
        return subscriber

    def _arrived(self, message: Any) -> None:
        with self.changed:
            if message.topic == f"{self.prefix}/barrier":
                self.barriers.add(bytes(message.payload))
            else:
                self.messages.append((message.topic, bytes(message.payload)))
            self.changed.notify_all()

    def sync(self, timeout: float = 30) -> None:
        """Publish barriers until one comes back (the first ones may beat the subscription)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = uuid.uuid4().hex.encode()
            try:
                self.connection.wait_connected(max(0.1, deadline - time.monotonic()))
                self.connection.publish(f"{self.prefix}/barrier", token).wait(5)
            except Exception:  # reconnecting: try again
                time.sleep(0.1)
                continue
            with self.changed:
                if self.changed.wait_for(lambda t=token: t in self.barriers, timeout=1):  # type: ignore[misc]
                    return
        raise AssertionError("the subscriber never received its own barrier")

    def contents(self) -> SinkContents:
        self.sync()
        with self.changed:
            messages = list(self.messages)
        records = []
        for topic, payload in messages:
            record = json_record(payload)
            kind = "alerts" if isinstance(record, Alert) else "aggregates"
            assert topic == f"{self.prefix}/{record.device_id}/{kind}", topic
            records.append(record)
        return contents_of([], records)

    def close(self) -> None:
        self.connection.close()


# ------------------------------------------------------------------ against the broker


@pytest.mark.mqtt
@pytest.mark.parametrize("aggregates", [False, True])
def test_mqtt_sink_passes_the_conformance_check_at_least_once(
    mqtt_url: str, unique_name: str, aggregates: bool
) -> None:
    subscriber = Subscriber.start(mqtt_url, unique_name)
    try:
        sink = MqttSink(mqtt=mqtt_url, topics=Topics(unique_name), aggregates=aggregates)
        kinds: set[RecordKind] = {"alerts", "aggregates"} if aggregates else {"alerts"}
        run(check_sink(sink.open, read_back=subscriber.contents, kinds=kinds, exactly_once=False))
    finally:
        subscriber.close()


@pytest.mark.mqtt
def test_alerts_go_to_their_device_as_json(mqtt_url: str, unique_name: str) -> None:
    subscriber = Subscriber.start(mqtt_url, unique_name)
    sink = MqttSink(mqtt=mqtt_url, topics=Topics(unique_name))

    async def scenario() -> None:
        async with sink.open() as writer:
            with pytest.raises(BadRowError, match="does not store aggregates"):
                await writer.write([ALERT, AGG])
            await writer.write([ALERT, ALERT])  # one key: one message

    try:
        run(scenario())
        subscriber.sync()
    finally:
        subscriber.close()
    assert [topic for topic, _ in subscriber.messages] == [f"{unique_name}/pump-7/alerts"]
    document = json.loads(subscriber.messages[0][1])
    assert document == {
        "kind": "alert",
        "device_id": "pump-7",
        "detector": "zscore:rpm",
        "ts": 61_000_000,
        "metric": "rpm",
        "value": 2.0,
        "score": 4.2,
        "severity": "critical",
        "message": "fast",
    }
    assert sink.alerts_topic("pump-7") == f"{unique_name}/pump-7/alerts"


async def flush_until_it_works(writer: Any, attempts: int = 100) -> None:
    """What a caller does with a retriable error (here in place of a retry policy)."""
    for _ in range(attempts - 1):
        try:
            await writer.flush()
        except SinkRetriableError:  # noqa: PERF203 (a retry loop)
            await asyncio.sleep(0.2)
        else:
            return
    await writer.flush()


def test_a_broker_outage_fails_the_flush_retriably_and_a_later_flush_delivers(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    """The broker stops with alerts buffered: the flush fails (retriable), nothing is lost;
    once it is back, the next flush delivers every alert."""
    subscriber = Subscriber.start(private_broker.url, unique_name)
    sink = MqttSink(
        mqtt=private_broker.url,
        topics=Topics(unique_name),
        connect_timeout=1.0,
        retry=RetryPolicy.never(),
    )
    alerts = [attrs.evolve(ALERT, ts=ALERT.ts + i) for i in range(20)]

    async def scenario() -> tuple[int, int]:
        writer = await sink.open()
        try:
            await writer.write(alerts[:10])
            await writer.flush()
            # the broker acknowledged the first ten; have them reach the subscriber before it
            # stops (this broker keeps no sessions across a restart)
            await asyncio.to_thread(subscriber.sync)
            await asyncio.to_thread(private_broker.stop)
            await writer.write(alerts[10:])
            with pytest.raises(SinkRetriableError):
                await writer.flush()
            buffered = writer.statistics().buffered
            await asyncio.to_thread(private_broker.start)
            await asyncio.to_thread(subscriber.sync)  # listening again before we publish
            await flush_until_it_works(writer)
            return buffered, writer.statistics().buffered
        finally:
            await writer.close()

    try:
        buffered, after = run(scenario())
        delivered = subscriber.contents().alerts
    finally:
        subscriber.close()
    assert (buffered, after) == (10, 0)
    keys = [alert.key for alert in delivered]
    assert set(keys) == {alert.key for alert in alerts}  # each at least once; the first ten
    assert all(keys.count(alert.key) == 1 for alert in alerts[10:])  # once: sent after restart


def test_an_unreachable_broker_fails_the_open_clearly() -> None:
    sink = MqttSink(mqtt="mqtt://127.0.0.1:1", connect_timeout=0.5, retry=RetryPolicy.never())

    async def open_and_close() -> None:
        writer = await sink.open()
        await writer.close()

    with pytest.raises(SinkRetriableError, match=r"not connected to mqtt://127\.0\.0\.1:1"):
        run(open_and_close())


def test_topics_are_built_from_the_prefix_and_a_valid_device_id() -> None:
    sink = MqttSink(topics=Topics("plant/a"), aggregates=True)
    assert sink.alerts_topic("pump-7") == "plant/a/pump-7/alerts"
    assert sink.aggregates_topic("pump-7") == "plant/a/pump-7/aggregates"
    assert MqttSink().alerts_topic("x") == "iotdata/x/alerts"
    with pytest.raises(ValueError, match="must not contain"):
        sink.alerts_topic("a/b")
