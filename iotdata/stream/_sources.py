"""Sources for the stream runtime: Kafka and the embedded log (consumer groups, manual offset
commits), and MQTT for small deployments without Kafka.

:class:`KafkaSource` reads one topic of codec frames as a member of a consumer group. Offsets
are committed only by the runtime, after its checkpoint; the checkpoint's offset is where a
partition resumes, so auto-commit is off and a partition with no checkpoint starts from its
beginning. :class:`LocalSource` does the same on the embedded log (:class:`iotdata.local.LocalLog`).

:class:`MqttSource` subscribes to the devices' telemetry directly, as one worker with a
persistent session: a message is acknowledged to the broker only after the checkpoint that
covers it, so the broker sends everything after the last checkpoint again after a restart.
Those repeats reach the pipeline, so a pipeline on this source must start with
:meth:`~iotdata.stream.Pipeline.dedup` (whose state is in the checkpoint); all messages are
partition 0 and offsets count messages. For more than one worker, bridge MQTT to Kafka with the
gateway and use :class:`KafkaSource`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from iotdata._aio import wait_done
from iotdata._checks import (
    check_instance,
    check_int,
    check_iterable,
    check_mapping,
    check_seconds,
    check_text,
    check_timeout,
    validated,
)
from iotdata.errors import ClosedError, InvalidInputError
from iotdata.kafka._connect import check_bootstrap, start_client
from iotdata.kafka._security import KafkaSecurity
from iotdata.model import Batch
from iotdata.stream._checkpoint import (
    CheckpointStore,
    FileCheckpoints,
    KafkaCheckpoints,
    MemoryCheckpoints,
)
from iotdata.stream._runtime import Listener, SourceRecord

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from iotdata.mqtt import MqttConnection, MqttSettings, Topics

__all__ = ["KafkaSource", "LocalSource", "MemorySource", "MqttSource"]


#: Most partitions a MemorySource spreads its items over (as the embedded log allows).
_MAX_PARTITIONS = 10_000


def check_poll(timeout: object, max_records: object) -> float:
    """A poll's arguments: ``timeout`` in seconds (finite, >= 0), ``max_records`` an int >= 1."""
    check_int("max_records", max_records, minimum=1)
    return check_seconds("timeout", timeout)


def check_listener(listener: object) -> None:
    """What a source tells of its assignments: ``assigned`` and ``revoked`` coroutines."""
    if not all(callable(getattr(listener, m, None)) for m in ("assigned", "revoked")):
        raise InvalidInputError(
            f"listener needs async assigned(partitions) and revoked(partitions): {listener!r:.60}"
        )


def _log(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    from iotdata.local import LocalLog  # noqa: PLC0415 (the embedded log, a layer above)

    check_instance("log", value, LocalLog)


def _mqtt_settings(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    from iotdata.mqtt import MqttSettings  # noqa: PLC0415

    check_instance("settings", value, MqttSettings)


def _topics(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    from iotdata.mqtt import Topics  # noqa: PLC0415

    check_instance("topics", value, Topics, none=True)


def _key(raw: object) -> str | None:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "\ufffd"  # never a device id: the record is skipped as misaddressed
    return raw if isinstance(raw, str) else None


@attrs.define(eq=False)
class _ConsumerSource:
    """A source over an aiokafka-shaped consumer (aiokafka's, or the embedded log's)."""

    topic: str = attrs.field(validator=validated(check_text))
    _consumer: Any = attrs.field(default=None, init=False)

    def _partition(self, partition: int) -> Any:
        raise NotImplementedError

    async def poll(self, timeout: float, max_records: int) -> list[SourceRecord]:
        wait = check_poll(timeout, max_records)
        if self._consumer is None:
            raise ClosedError(f"the source of {self.topic!r} is not started, or closed")
        batches = await self._consumer.getmany(timeout_ms=int(wait * 1000), max_records=max_records)
        return [
            SourceRecord(
                record.topic,
                record.partition,
                record.offset,
                record.value,
                _key(record.key),
                record.timestamp,
            )
            for records in batches.values()
            for record in records
        ]

    def seek(self, partition: int, offset: int) -> None:
        check_int("partition", partition, minimum=0)
        check_int("offset", offset, minimum=0)
        self._consumer.seek(self._partition(partition), offset)

    async def commit(self, offsets: Mapping[int, int]) -> None:
        try:
            await self._consumer.commit({self._partition(p): o for p, o in offsets.items()})
        except Exception as exc:  # a rebalance took them: their checkpoint holds the offsets
            if type(exc).__name__ != "CommitFailedError":
                raise

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


@attrs.define(eq=False)
class KafkaSource(_ConsumerSource):
    """One topic of a Kafka cluster, read as a member of ``group``.

    Its default checkpoint store is the compacted topic ``{group}.checkpoints`` (created with
    one partition when missing), so a worker restarted on another machine recovers.
    """

    bootstrap: str = attrs.field(kw_only=True, validator=lambda _, __, v: check_bootstrap(v))
    group: str = attrs.field(kw_only=True, validator=validated(check_text))
    client_id: str = attrs.field(
        default="iotdata-stream", kw_only=True, validator=validated(check_text)
    )
    #: Seconds without a heartbeat before the group gives this member's partitions away.
    session_timeout: float = attrs.field(
        default=10.0, kw_only=True, validator=validated(check_seconds, zero=False)
    )
    #: Longest pause between two polls before the member is considered stuck.
    max_poll_interval: float = attrs.field(
        default=300.0, kw_only=True, validator=validated(check_seconds, zero=False)
    )
    #: TLS, mutual TLS or a SASL login (default: none); the checkpoint topic uses it too.
    security: KafkaSecurity = attrs.field(
        factory=KafkaSecurity, kw_only=True, validator=validated(check_instance, kind=KafkaSecurity)
    )

    def _partition(self, partition: int) -> Any:
        from aiokafka import TopicPartition  # noqa: PLC0415

        return TopicPartition(self.topic, partition)

    async def start(self, listener: Listener) -> None:
        from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.session_timeout * 1000 / 3),
            max_poll_interval_ms=int(self.max_poll_interval * 1000),
            **self.security.client_options(),
        )
        await start_client(consumer, self.bootstrap)
        consumer.subscribe([self.topic], listener=_rebalance(listener))
        self._consumer = consumer

    async def default_checkpoints(self) -> CheckpointStore:
        from iotdata.kafka import ensure_topics  # noqa: PLC0415

        store = KafkaCheckpoints(
            self.bootstrap, f"{self.group}.checkpoints", security=self.security
        )
        await ensure_topics(self.bootstrap, store.spec(), security=self.security)
        return store


# The checkpoints of an in-memory log live as long as the log: a worker restarted in the same
# process finds them, as it finds the log's committed offsets.
_MEMORY_CHECKPOINTS: weakref.WeakKeyDictionary[Any, dict[str, MemoryCheckpoints]] = (
    weakref.WeakKeyDictionary()
)


@attrs.define(eq=False)
class LocalSource(_ConsumerSource):
    """One topic of the embedded log (:class:`iotdata.local.LocalLog`), read as a member of
    ``group``: the default when no Kafka is given.

    Its default checkpoint store is the folder ``_checkpoints/{group}`` of a log kept in a
    folder, and the log's memory for an in-memory log.
    """

    log: Any = attrs.field(kw_only=True, validator=_log)
    group: str = attrs.field(kw_only=True, validator=validated(check_text))
    member_id: str = attrs.field(
        factory=lambda: f"stream-{uuid.uuid4().hex[:12]}",
        kw_only=True,
        validator=validated(check_text),
    )

    def _partition(self, partition: int) -> Any:
        from iotdata.local import TopicPartition  # noqa: PLC0415

        return TopicPartition(self.topic, partition)

    async def start(self, listener: Listener) -> None:
        from iotdata.local import LocalConsumer  # noqa: PLC0415

        check_listener(listener)
        self._consumer = LocalConsumer(
            self.log, self.group, [self.topic], self.member_id, listener=_Forward(listener)
        )
        await self._consumer.start()  # the first assignment seeks: _consumer must be set

    async def default_checkpoints(self) -> CheckpointStore:
        folder = self.log.folder
        if folder is not None:
            return FileCheckpoints(folder / "_checkpoints" / self.group)
        stores = _MEMORY_CHECKPOINTS.setdefault(self.log, {})
        return stores.setdefault(self.group, MemoryCheckpoints())


class _Forward:
    """A rebalance listener forwarding partition numbers to the runtime."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._listener.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._listener.assigned({tp.partition for tp in assigned})


def _rebalance(listener: Listener) -> Any:
    """:class:`_Forward` as aiokafka wants it: a ``ConsumerRebalanceListener`` subclass."""
    from aiokafka import ConsumerRebalanceListener  # noqa: PLC0415

    class Rebalance(_Forward, ConsumerRebalanceListener):  # type: ignore[misc]
        pass

    return Rebalance(listener)


_Arrival = tuple[str, bytes, int, int, int]  # topic, payload, mid, qos, connection generation


@attrs.define(eq=False)
class MqttSource:
    """The devices' telemetry straight from an MQTT broker (MQTT 5), for one worker.

    ``client_id`` names the persistent session: keep it stable across restarts. The broker
    keeps up to ``max_in_flight`` messages unacknowledged for us; the worker checkpoints when
    half of them wait, so that the broker never stops sending for want of acknowledgements.
    """

    settings: MqttSettings = attrs.field(validator=_mqtt_settings)
    client_id: str = attrs.field(kw_only=True, validator=validated(check_text))
    topics: Topics | None = attrs.field(default=None, kw_only=True, validator=_topics)
    #: Seconds the broker keeps the session (and queues messages) while the worker is away.
    session_expiry: int = attrs.field(
        default=3600, kw_only=True, validator=validated(check_int, minimum=0, maximum=2**32 - 1)
    )
    #: Messages the broker may send before we acknowledge (MQTT 5 receive maximum).
    max_in_flight: int = attrs.field(
        default=1000, kw_only=True, validator=validated(check_int, minimum=1, maximum=65535)
    )
    #: Repeats after a restart reach the pipeline: it must start with a dedup step.
    redelivers: ClassVar[bool] = True
    _topics: Topics | None = attrs.field(default=None, init=False)
    _connection: MqttConnection | None = attrs.field(default=None, init=False)
    _inbox: collections.deque[_Arrival] = attrs.field(factory=collections.deque, init=False)
    _arrived: asyncio.Future[None] | None = attrs.field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _started: threading.Event = attrs.field(factory=threading.Event, init=False)
    _next_offset: int = attrs.field(default=0, init=False)
    _unacked: collections.deque[tuple[int, int, int, int]] = attrs.field(
        factory=collections.deque, init=False
    )

    def __attrs_post_init__(self) -> None:
        if self.settings.protocol != 5:
            raise InvalidInputError("MqttSource needs MQTT 5 (session expiry, receive maximum)")
        if not self.client_id or "/" in self.client_id or self.client_id in {".", ".."}:
            raise InvalidInputError(f"bad client_id {self.client_id!r}")

    @classmethod
    def from_url(cls, url: str, *, client_id: str, **options: Any) -> MqttSource:
        """``MqttSource.from_url("mqtt://127.0.0.1:1883", client_id="stream-1")``; ``options``
        are ``topics``, ``session_expiry`` and ``max_in_flight``."""
        from iotdata.mqtt import MqttSettings  # noqa: PLC0415

        unknown = set(options) - {"topics", "session_expiry", "max_in_flight"}
        if unknown:
            raise InvalidInputError(f"unknown MqttSource option(s) {sorted(unknown)}")
        return cls(MqttSettings.from_url(url), client_id=client_id, **options)

    @property
    def topic(self) -> str:
        """The name checkpoints are kept under: ``mqtt-{client_id}``."""
        return f"mqtt-{self.client_id}"

    async def start(self, listener: Listener) -> None:
        from iotdata.mqtt import MqttConnection, Topics  # noqa: PLC0415

        check_listener(listener)
        await listener.assigned({0})
        self._loop = asyncio.get_running_loop()
        topics = self.topics or Topics()
        self._connection = MqttConnection.start(
            self.settings,
            self.client_id,
            clean_start=False,
            session_expiry=self.session_expiry,
            manual_ack=True,
            receive_maximum=self.max_in_flight,
            subscriptions={topics.all_telemetry(): self._arrive},
        )
        self._topics = topics
        self._started.set()

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until the broker acknowledged the subscription: from then on it keeps the
        devices' messages for this session, whether the worker is up or not."""
        wait = check_timeout("timeout", timeout)
        await asyncio.to_thread(self._started.wait, wait)
        if self._connection is None:
            raise ClosedError("the MQTT source is not started, or closed")
        await asyncio.to_thread(self._connection.wait_subscribed, wait)

    def _arrive(self, message: paho.MQTTMessage) -> None:
        """On the MQTT network thread: hand the message to the event loop, in order."""
        self._started.wait(10.0)
        connection, loop = self._connection, self._loop
        if connection is None or loop is None:
            return  # closed meanwhile: unacknowledged, the broker sends it again
        item = (message.topic, bytes(message.payload), message.mid, message.qos)
        loop.call_soon_threadsafe(self._put, (*item, connection.generation))

    def _put(self, arrival: _Arrival) -> None:
        """On the event loop: queue a message (at most ``max_in_flight`` are unacknowledged,
        so at most that many wait here) and wake a waiting poll."""
        self._inbox.append(arrival)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def poll(self, timeout: float, max_records: int) -> list[SourceRecord]:
        timeout = check_poll(timeout, max_records)
        inbox = self._inbox
        if not inbox:
            self._arrived = asyncio.get_running_loop().create_future()
            await wait_done(self._arrived, timeout)
        count = min(max_records, len(inbox))
        return [self._record(*inbox.popleft()) for _ in range(count)]

    def _record(self, topic: str, payload: bytes, mid: int, qos: int, generation: int) -> Any:
        offset = self._next_offset
        self._next_offset += 1
        if qos:
            self._unacked.append((offset, mid, qos, generation))
        parsed = None if self._topics is None else self._topics.parse(topic)
        key = parsed[0] if parsed is not None else "\ufffd"
        return SourceRecord(self.topic, 0, offset, payload, key)

    def seek(self, partition: int, offset: int) -> None:
        """Offsets go on from the checkpoint's (messages are counted, not stored)."""
        self._next_offset = offset

    def wants_checkpoint(self) -> bool:
        return len(self._unacked) * 2 >= self.max_in_flight

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Acknowledge, in arrival order, every message before the checkpoint's offset."""
        upto = offsets.get(0)
        connection = self._connection
        if upto is None or connection is None:
            return
        unacked = self._unacked
        while unacked and unacked[0][0] < upto:
            _, mid, qos, generation = unacked.popleft()
            connection.ack(mid, qos, generation)  # False: sent again on the new connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.to_thread(connection.close)


@attrs.define(eq=False)
class MemorySource:
    """A bounded, in-process source of batches, for tests, notebooks and benchmarks.

    ``items`` are :class:`~iotdata.Batch` objects, each given to the partition of its device id
    (Kafka's murmur2 over ``partitions``), or ``(partition, batch)`` pairs. They go to the
    processor as they are: no codec, no copies. One worker reads them all, in order (each
    partition's offsets count its items); the worker stops once every item was read.
    Commits are kept in :attr:`committed`.
    """

    items: Sequence[Batch | tuple[int, Batch]]
    topic: str = attrs.field(default="memory", kw_only=True)
    partitions: int = attrs.field(default=1, kw_only=True)
    committed: dict[int, int] = attrs.field(factory=dict, init=False)
    _records: list[SourceRecord] = attrs.field(factory=list, init=False)
    _cursor: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        from iotdata.kafka import Partitioner  # noqa: PLC0415

        check_int("partitions", self.partitions, minimum=1, maximum=_MAX_PARTITIONS)
        check_text("topic", self.topic)
        partitioner = Partitioner()
        counts = [0] * self.partitions
        for item in check_iterable("items", self.items):
            batch: Any
            if isinstance(item, Batch):
                partition = partitioner.partition(item.device_id.encode(), self.partitions)
                batch = item
            else:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise InvalidInputError(
                        f"MemorySource takes batches or (partition, batch) pairs: {item!r:.60}"
                    )
                partition, batch = item
                if type(partition) is not int or not 0 <= partition < self.partitions:
                    raise InvalidInputError(f"no partition {partition!r} of {self.partitions}")
            if type(batch) is not Batch:
                raise InvalidInputError(f"MemorySource takes Batch objects, not {batch!r:.60}")
            offset = counts[partition]
            counts[partition] += 1
            self._records.append(SourceRecord(self.topic, partition, offset, batch))

    @property
    def exhausted(self) -> bool:
        """Every item was read."""
        return self._cursor >= len(self._records)

    async def start(self, listener: Listener) -> None:
        check_listener(listener)
        await listener.assigned(set(range(self.partitions)))

    async def poll(self, timeout: float, max_records: int) -> list[SourceRecord]:
        check_poll(timeout, max_records)
        start = self._cursor
        self._cursor = min(len(self._records), start + max_records)
        return self._records[start : self._cursor]

    def seek(self, partition: int, offset: int) -> None:
        """Nothing to do: the worker skips what its checkpoint already holds."""

    async def commit(self, offsets: Mapping[int, int]) -> None:
        self.committed.update(check_mapping("offsets", offsets))

    async def close(self) -> None:
        return None
