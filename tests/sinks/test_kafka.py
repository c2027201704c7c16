"""The Kafka sink: conformance against the real broker (at least once), the records' keys and
headers, and failures."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable
from typing import Any

import attrs
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from iotdata import codec
from iotdata.errors import ConnectError, DeliveryError, DeliveryTimeoutError
from iotdata.kafka import TopicSpec, ensure_topics
from iotdata.model import Batch, Reading
from iotdata.sinks import (
    Alert,
    BadRowError,
    DeadLetter,
    KafkaSink,
    PendingRecords,
    RetryPolicy,
    SinkFatalError,
    SinkRetriableError,
    SourcePosition,
    WindowAggregate,
)
from iotdata.sinks._kafka import _sink_error, kafka_messages
from iotdata.sinks._validate import RowLimits, make_chunk
from iotdata.testing import SinkContents, check_sink
from tests.sinks._readers import contents_of, json_record

pytestmark = pytest.mark.timeout(180)

PARTITIONS = 3
AGG = WindowAggregate(
    "pump-7", "rpm", 60_000_000, 120_000_000, 3, 1.0, 2.0, 4.5, 2, {"p99": math.inf}
)
ALERT = Alert("pump-7", "zscore:rpm/%", 61_000_000, "rpm", 2.0, 4.2, "critical", "fast")


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def pending(*records: object) -> PendingRecords:
    chunk = make_chunk(list(records), None, RowLimits(), {"readings", "aggregates", "alerts"})
    return PendingRecords((chunk,))


@attrs.frozen
class Topics:
    readings: str
    aggregates: str
    alerts: str
    dead_letters: str

    @classmethod
    def create(cls, bootstrap: str, prefix: str) -> Topics:
        names = (f"{prefix}.{kind}" for kind in ("readings", "aggregates", "alerts", "dlq"))
        topics = cls(*names)
        specs = [TopicSpec(name=name, partitions=PARTITIONS) for name in attrs.astuple(topics)]
        run(ensure_topics(bootstrap, *specs))
        return topics

    def sink(self, bootstrap: str, **options: Any) -> KafkaSink:
        return KafkaSink(
            kafka=bootstrap,
            readings_topic=self.readings,
            aggregates_topic=self.aggregates,
            alerts_topic=self.alerts,
            dead_letters_topic=self.dead_letters,
            **options,
        )


@attrs.define
class TopicReader:
    """Everything in some topics so far, partition by partition in offset order."""

    consumer: AIOKafkaConsumer
    partitions: list[TopicPartition]
    records: dict[TopicPartition, list[Any]] = attrs.Factory(dict)

    @classmethod
    async def start(cls, bootstrap: str, *topics: str) -> TopicReader:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        partitions = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return cls(consumer, partitions)

    async def read(self) -> list[Any]:
        """Every record up to the current end of each partition (earlier reads included)."""
        ends = await self.consumer.end_offsets(self.partitions)
        for partition in self.partitions:
            while await self.consumer.position(partition) < ends[partition]:
                fetched = await self.consumer.getmany(partition, timeout_ms=1000)
                for message in fetched.get(partition, []):
                    self.records.setdefault(partition, []).append(message)
        return [m for partition in self.partitions for m in self.records.get(partition, [])]

    async def contents(self, topics: Topics) -> SinkContents:
        readings: list[Reading] = []
        records = []
        letters = []
        for message in await self.read():
            if message.topic == topics.readings:
                readings += codec.decode(message.value)
            elif message.topic == topics.dead_letters:
                letters.append(json.loads(message.value))
            else:
                records.append(json_record(message.value))
        return attrs.evolve(contents_of(readings, records), dead_letters=letters)

    async def stop(self) -> None:
        await self.consumer.stop()


# ------------------------------------------------------------------ against the broker


@pytest.mark.kafka
def test_kafka_sink_passes_the_conformance_check_at_least_once(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics.create(kafka_bootstrap, unique_name)

    async def scenario() -> None:
        reader = await TopicReader.start(kafka_bootstrap, *attrs.astuple(topics))
        try:
            sink = topics.sink(kafka_bootstrap)
            await check_sink(
                sink.open, read_back=lambda: reader.contents(topics), exactly_once=False
            )
        finally:
            await reader.stop()

    run(scenario())


@pytest.mark.kafka
def test_only_the_kinds_with_a_topic_are_stored(kafka_bootstrap: str, unique_name: str) -> None:
    topics = Topics.create(kafka_bootstrap, unique_name)
    sink = KafkaSink(
        kafka=kafka_bootstrap, alerts_topic=topics.alerts, dead_letters_topic=topics.dead_letters
    )

    async def scenario() -> SinkContents:
        reader = await TopicReader.start(kafka_bootstrap, topics.alerts, topics.dead_letters)
        try:
            await check_sink(
                sink.open,
                read_back=lambda: reader.contents(topics),
                kinds={"alerts"},
                exactly_once=False,
            )
            async with sink.open() as writer:
                with pytest.raises(BadRowError, match="does not store aggregates"):
                    await writer.write([ALERT, AGG])
            return await reader.contents(topics)
        finally:
            await reader.stop()

    contents = run(scenario())
    assert contents.readings == [] and contents.aggregates == []


@pytest.mark.kafka
def test_records_are_keyed_by_device_with_content_type_and_idempotency_key(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topics = Topics.create(kafka_bootstrap, unique_name)
    batch = Batch.from_columns("pump-7", {"rpm": ([1, 2], [1.0, 2.0], [5, 9])})
    nan = Reading("pump-7", "rpm", 3, math.nan, 10)
    letter = DeadLetter(nan, "nan", "no NaN here", "SqliteSink('x')", SourcePosition("t", 1, 4))

    async def scenario() -> list[Any]:
        reader = await TopicReader.start(kafka_bootstrap, *attrs.astuple(topics))
        try:
            async with topics.sink(kafka_bootstrap).open() as writer:
                await writer.write([batch, AGG, ALERT, letter])
            return await reader.read()
        finally:
            await reader.stop()

    messages = {m.topic: m for m in run(scenario())}
    assert sorted(messages) == sorted(attrs.astuple(topics))
    assert {m.key for m in messages.values()} == {b"pump-7"}
    headers = {topic: dict(m.headers) for topic, m in messages.items()}
    assert headers[topics.readings] == {
        "content-type": b"application/vnd.iotdata.batch",
        "idempotency-key": b"pump-7/5-9",
    }
    assert headers[topics.aggregates] == {
        "content-type": b"application/json",
        "idempotency-key": b"pump-7/rpm/60000000/2",
    }
    assert headers[topics.alerts]["idempotency-key"] == b"pump-7/zscore:rpm%2F%25/61000000"
    assert headers[topics.dead_letters] == {
        "content-type": b"application/json",
        "idempotency-key": b"SqliteSink('x')/reading/pump-7%2F10",
        "reason": b"nan",
        "detail": b"no NaN here",
        "sink": b"SqliteSink('x')",
    }
    dead = json.loads(messages[topics.dead_letters].value)
    assert (dead["record"]["value"], dead["key"], dead["offset"]) == ("NaN", "pump-7/10", 4)
    assert codec.decode(messages[topics.readings].value) == batch
    document = json.loads(messages[topics.aggregates].value)
    assert document["kind"] == "aggregate" and document["extra"] == {"p99": "Infinity"}
    assert json_record(messages[topics.alerts].value) == ALERT


def test_an_unreachable_bootstrap_fails_the_open_clearly() -> None:
    sink = KafkaSink(kafka="127.0.0.1:1", alerts_topic="alerts", retry=RetryPolicy.never())

    async def open_and_close() -> None:
        writer = await sink.open()
        await writer.close()

    with pytest.raises(SinkRetriableError, match=r"cannot reach Kafka at 127\.0\.0\.1:1") as caught:
        run(open_and_close())
    assert isinstance(caught.value.__cause__, ConnectError)


# ------------------------------------------------------------------ without a broker


def test_a_sink_needs_a_topic_and_checks_its_names() -> None:
    with pytest.raises(ValueError, match="needs readings_topic"):
        KafkaSink()
    with pytest.raises(ValueError, match="topic name"):
        KafkaSink(alerts_topic="no spaces allowed")
    assert KafkaSink(aggregates_topic="a", alerts_topic="b").topics == {
        "aggregates": "a",
        "alerts": "b",
    }


def test_messages_keep_each_batch_whole_and_one_record_per_aggregate_and_alert() -> None:
    first = Batch.from_columns("d", {"a": ([1], [1.0], [3]), "b": ([1], [2], [4])})
    again = Batch.from_columns("d", {"a": ([2], [1.5], [5])})
    loose = [Reading("e", "a", 1, 1.0, 7), Reading("e", "a", 2, 2.0, 8)]
    topics = {"readings": "r", "aggregates": "g", "alerts": "l"}
    messages = list(kafka_messages(pending(first, again, *loose, AGG, AGG, ALERT), topics))  # type: ignore[arg-type]
    assert [(m.topic, m.key, dict(m.headers)["idempotency-key"]) for m in messages] == [
        ("r", b"d", b"d/3-4"),
        ("r", b"d", b"d/5-5"),
        ("r", b"e", b"e/7-8"),
        ("g", b"pump-7", b"pump-7/rpm/60000000/2"),
        ("l", b"pump-7", b"pump-7/zscore:rpm%2F%25/61000000"),
    ]
    assert codec.decode(messages[0].value) == first
    only_alerts = list(kafka_messages(pending(first, AGG, ALERT), {"alerts": "l"}))
    assert [m.topic for m in only_alerts] == ["l"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DeliveryError("leader moved", retriable=True), SinkRetriableError),
        (DeliveryError("not authorized", retriable=False), SinkFatalError),
        (DeliveryTimeoutError("no ack"), SinkRetriableError),
        (ConnectError("no broker"), SinkRetriableError),
    ],
)
def test_delivery_errors_map_to_retriable_or_fatal(error: Any, expected: type) -> None:
    translated = _sink_error(error)
    assert type(translated) is expected
    assert str(error) in str(translated)
