"""The Kafka sink: readings, aggregates and alerts to Kafka topics, at least once.

Each kind of record goes to its own topic (a kind without a topic is not stored), keyed by
device id, so one device's records stay in one partition and in order:

* readings: one record per batch, its value the batch as an iotdata frame
  (``content-type: application/vnd.iotdata.batch``), as the gateway writes telemetry;
* aggregates and alerts: one record each, JSON (``content-type: application/json``, see
  :mod:`iotdata.sinks._json`);
* dead letters (records a sink refused) to ``dead_letters_topic``, the gateway's
  ``iotdata.dlq`` by default: one JSON record each, with ``reason``, ``detail`` and ``sink``
  headers.

Every record carries an ``idempotency-key`` header: ``device_id/first_seq-last_seq`` for a
batch, ``device_id/metric/window_start/revision`` for an aggregate, ``device_id/detector/ts``
for an alert, ``sink/kind/key`` for a dead letter (``%`` and ``/`` inside a name written
``%25`` and ``%2F``). A flush returns once
Kafka acknowledged every record (``acks=all``); a failed flush is sent again whole, so a topic
may hold a record twice: consumers deduplicate by key.

:func:`kafka_messages` builds the records (no I/O); the writer sends them through
:class:`iotdata.kafka.PartitionedProducer`, loaded when a sink opens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from iotdata import codec
from iotdata.errors import (
    ClosedError,
    ConnectError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidInputError,
    IotDataError,
)
from iotdata.model import Batch
from iotdata.sinks import _settings as valid
from iotdata.sinks._errors import SinkError, SinkFatalError, SinkRetriableError
from iotdata.sinks._json import dead_letter_json, strict_json
from iotdata.sinks._records import (
    Alert,
    DeadLetter,
    PendingRecords,
    RecordKind,
    WindowAggregate,
    joined_key,
)
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._writer import BufferedWriter, Opening

if TYPE_CHECKING:
    from iotdata.kafka import Delivered, PartitionedProducer, ProducerSettings

__all__ = [
    "BATCH_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "KafkaMessage",
    "KafkaSink",
    "KafkaWriter",
    "aggregate_key",
    "alert_key",
    "batch_key",
    "dead_letter_key",
    "kafka_messages",
]

log = logging.getLogger("iotdata.sinks")

#: The ``content-type`` header of a batch of readings (the gateway's telemetry records too).
BATCH_CONTENT_TYPE = b"application/vnd.iotdata.batch"
#: The ``content-type`` header of an aggregate or an alert.
JSON_CONTENT_TYPE = b"application/json"

Headers = tuple[tuple[str, bytes], ...]


@attrs.frozen
class KafkaMessage:
    """One Kafka record to send."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers

    @property
    def name(self) -> str:
        """The topic and the idempotency key, to name the record in errors."""
        key = dict(self.headers).get("idempotency-key", self.key)
        return f"{self.topic}:{key.decode(errors='replace')}"


def _topic(_self: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        from iotdata.kafka import TopicSpec  # noqa: PLC0415 (checks the name as Kafka does)

        TopicSpec(name=value)


def _kafka(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    from iotdata.kafka import ProducerSettings  # noqa: PLC0415 (loaded with the sink)
    from iotdata.kafka._connect import check_bootstrap  # noqa: PLC0415

    if isinstance(value, str):
        check_bootstrap(value)
    elif not isinstance(value, ProducerSettings):
        raise InvalidInputError(
            f"kafka must be bootstrap servers (host:port) or ProducerSettings, not {value!r:.60}"
        )


@attrs.frozen(kw_only=True)
class KafkaSink:
    """Records to Kafka topics: ``readings_topic``, ``aggregates_topic``, ``alerts_topic``.

    Only the kinds with a topic are stored; a record of another kind is a bad row. The records
    the sink refuses, when the stream runtime dead-letters them, go to ``dead_letters_topic``
    (the gateway's ``iotdata.dlq`` by default; None: elsewhere, see docs/stream.md). ``kafka``
    is the bootstrap servers (``host:port[,host:port]``) or full
    :class:`~iotdata.kafka.ProducerSettings` (client id, compression, ``delivery_timeout``...).
    ``flush_rows`` bounds the writer's buffer; ``retry`` applies to connecting and flushing.
    """

    kafka: str | ProducerSettings = attrs.field(default="127.0.0.1:9092", validator=_kafka)
    readings_topic: str | None = attrs.field(default=None, validator=_topic)
    aggregates_topic: str | None = attrs.field(default=None, validator=_topic)
    alerts_topic: str | None = attrs.field(default=None, validator=_topic)
    dead_letters_topic: str | None = attrs.field(default="iotdata.dlq", validator=_topic)
    flush_rows: int = attrs.field(default=10_000, validator=valid.flush_rows)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=valid.retry)

    def __attrs_post_init__(self) -> None:
        if not self.topics:
            raise InvalidInputError(
                "KafkaSink needs readings_topic, aggregates_topic or alerts_topic"
            )

    @property
    def topics(self) -> dict[RecordKind, str]:
        """The topic of each kind of record this sink stores."""
        topics: dict[RecordKind, str | None] = {
            "readings": self.readings_topic,
            "aggregates": self.aggregates_topic,
            "alerts": self.alerts_topic,
        }
        return {kind: topic for kind, topic in topics.items() if topic is not None}

    def producer_settings(self) -> ProducerSettings:
        """The producer's settings (``kafka`` as settings, or a bootstrap string made into them)."""
        from iotdata.kafka import ProducerSettings  # noqa: PLC0415 (loaded when a sink opens)

        if isinstance(self.kafka, str):
            return ProducerSettings(bootstrap=self.kafka, client_id="iotdata-kafka-sink")
        return self.kafka

    def open(self) -> Opening[KafkaWriter]:
        """Connect and check the topics; await the result, or use it with ``async with``."""
        return Opening(self._open)

    async def _open(self) -> KafkaWriter:
        writer = KafkaWriter(self)
        try:
            await self.retry.call(writer.setup, what=f"connecting to Kafka at {writer.bootstrap}")
        except BaseException:
            await writer.close()
            raise
        return writer


class KafkaWriter(BufferedWriter):
    """The writer of a :class:`KafkaSink`; made by ``KafkaSink.open()``."""

    def __init__(self, sink: KafkaSink) -> None:
        settings = sink.producer_settings()
        super().__init__(
            name=f"KafkaSink({settings.bootstrap})", flush_rows=sink.flush_rows, retry=sink.retry
        )
        self.kinds = frozenset(sink.topics)
        self.stores_dead_letters = sink.dead_letters_topic is not None
        self.bootstrap = settings.bootstrap
        self._settings = settings
        self._topics = sink.topics
        self._dead_letters = sink.dead_letters_topic
        self._producer: PartitionedProducer | None = None

    async def setup(self) -> None:
        """Start the producer and fetch the topics' partitions (one attempt)."""
        producer = await self._started()
        topics = [*self._topics.values(), *filter(None, [self._dead_letters])]
        try:
            for topic in topics:
                await producer.partitions(topic)
        except IotDataError as exc:
            raise await self._failed(exc) from exc

    async def persist(self, pending: PendingRecords) -> None:
        producer = await self._started()
        sent: list[asyncio.Future[Delivered]] = []
        try:
            for message in kafka_messages(pending, self._topics, self._dead_letters):
                sent.append(await _send(producer, message))  # noqa: PERF401 (kept if one fails)
        except BaseException as exc:
            _forget(sent)
            if isinstance(exc, IotDataError) and not isinstance(exc, SinkError):
                raise await self._failed(exc) from exc
            raise
        outcomes = await asyncio.gather(*sent, return_exceptions=True)
        errors = [error for error in outcomes if isinstance(error, BaseException)]
        if errors:
            error = errors[0]
            log.warning("%s: %d of %d records failed: %s", self.name, len(errors), len(sent), error)
            if not isinstance(error, IotDataError):
                raise error
            raise await self._failed(error) from error

    async def release(self) -> None:
        await self._drop_producer()

    async def _started(self) -> PartitionedProducer:
        if self._producer is None:
            from iotdata.kafka import PartitionedProducer  # noqa: PLC0415 (aiokafka with it)

            try:
                self._producer = await PartitionedProducer.start(self._settings)
            except IotDataError as exc:
                raise _sink_error(exc) from exc
        return self._producer

    async def _failed(self, exc: IotDataError) -> SinkError:
        """The sink error for ``exc``; a producer that stopped on it is let go (the next
        attempt starts a new one)."""
        if isinstance(exc, (DeliveryError, ClosedError)):
            await self._drop_producer()
        return _sink_error(exc)

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close(timeout=0)  # what it still holds is in a failed or lost flush


async def _send(producer: PartitionedProducer, message: KafkaMessage) -> asyncio.Future[Delivered]:
    try:
        return await producer.send(
            message.topic, message.key, message.value, headers=message.headers
        )
    except InvalidInputError as exc:  # too large for the producer's max_request_bytes
        raise SinkFatalError(f"Kafka cannot take the record {message.name}: {exc}") from exc


def _forget(futures: list[asyncio.Future[Delivered]]) -> None:
    """Retrieve the outcome of records no one will await (their flush failed already)."""
    for future in futures:
        future.add_done_callback(lambda done: done.cancelled() or done.exception())


def _sink_error(exc: IotDataError) -> SinkError:
    if isinstance(exc, DeliveryTimeoutError):
        return SinkRetriableError(f"Kafka did not acknowledge in time: {exc}")
    if isinstance(exc, ConnectError):
        kind = SinkRetriableError if exc.retriable else SinkFatalError
        return kind(str(exc))
    if isinstance(exc, DeliveryError):
        kind = SinkRetriableError if exc.retriable else SinkFatalError
        return kind(f"Kafka did not take the records: {exc}")
    if isinstance(exc, ClosedError):
        return SinkRetriableError(f"the Kafka producer stopped: {exc}")
    if isinstance(exc, InvalidInputError):
        return SinkFatalError(f"Kafka cannot take a record: {exc}")
    kind = SinkRetriableError if exc.retriable else SinkFatalError
    return kind(f"Kafka failed: {exc}")


# ----------------------------------------------------------------------------- the records


def kafka_messages(
    pending: PendingRecords,
    topics: Mapping[RecordKind, str],
    dead_letters_topic: str | None = None,
) -> Iterator[KafkaMessage]:
    """The Kafka records of ``pending``, for the kinds that have a topic in ``topics`` (and the
    dead letters, to ``dead_letters_topic``)."""
    if "readings" in topics:
        for batch in pending.batches():
            message = _batch_message(topics["readings"], batch)
            if message is not None:
                yield message
    if "aggregates" in topics:
        for aggregate in pending.aggregates():
            yield _json_message(topics["aggregates"], aggregate, aggregate_key(aggregate))
    if "alerts" in topics:
        for alert in pending.alerts():
            yield _json_message(topics["alerts"], alert, alert_key(alert))
    if dead_letters_topic is not None:
        for letter in pending.dead_letters():
            yield _dead_letter_message(dead_letters_topic, letter)


def batch_key(batch: Batch) -> str | None:
    """``device_id/first_seq-last_seq``; None for a batch without readings."""
    columns = [column.seq for column in batch.columns if len(column.seq)]
    if not columns:
        return None
    first, last = min(map(min, columns)), max(map(max, columns))
    return f"{batch.device_id}/{first}-{last}"


def aggregate_key(aggregate: WindowAggregate) -> str:
    """``device_id/metric/window_start/revision``."""
    parts = (aggregate.device_id, aggregate.metric, aggregate.window_start, aggregate.revision)
    return _joined(parts)


def alert_key(alert: Alert) -> str:
    """``device_id/detector/ts``."""
    return _joined((alert.device_id, alert.detector, alert.ts))


def dead_letter_key(letter: DeadLetter) -> str:
    """``sink/kind/key``."""
    return _joined((letter.sink, letter.kind, letter.key))


_joined = joined_key


def _batch_message(topic: str, batch: Batch) -> KafkaMessage | None:
    key = batch_key(batch)
    if key is None:
        return None
    try:
        frame = codec.encode(batch)
    except InvalidInputError as exc:
        raise SinkFatalError(f"the batch {key} cannot be encoded: {exc}") from exc
    headers = (("content-type", BATCH_CONTENT_TYPE), ("idempotency-key", key.encode()))
    return KafkaMessage(topic, batch.device_id.encode(), frame, headers)


def _dead_letter_message(topic: str, letter: DeadLetter) -> KafkaMessage:
    headers = (
        ("content-type", JSON_CONTENT_TYPE),
        ("idempotency-key", dead_letter_key(letter).encode()),
        ("reason", letter.reason.encode()),
        ("detail", letter.detail.encode()),
        ("sink", letter.sink.encode()),
    )
    key = (letter.device_id or "").encode()
    return KafkaMessage(topic, key, dead_letter_json(letter).encode(), headers)


def _json_message(topic: str, record: WindowAggregate | Alert, key: str) -> KafkaMessage:
    headers = (("content-type", JSON_CONTENT_TYPE), ("idempotency-key", key.encode()))
    return KafkaMessage(topic, record.device_id.encode(), strict_json(record), headers)
