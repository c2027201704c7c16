"""PartitionedProducer: telemetry into Kafka, keyed and ordered by device, with bounded memory.

Each record goes to the partition Kafka's Java client would choose for its key (murmur2, see
:mod:`iotdata.kafka._partitioner`), so per-device order holds and consumers in any language
agree. Records are appended to one open aiokafka batch per partition; a batch goes out when it
is full or ``linger`` has passed, through aiokafka's batch API. Each partition has one batch in
flight at a time: the next one (filling meanwhile) goes only after Kafka acknowledged it, so a
batch that fails with a retriable error (a leader election, a broker restart) is sent again
before anything behind it, and per-device order holds. The idempotent producer (on by default)
keeps aiokafka's own retries from duplicating; a retry of ours after an unanswered request can
duplicate a batch, which ``(device_id, seq)`` absorbs downstream.

Two bounds keep a stuck broker from becoming a hang or an unbounded buffer: ``send`` waits while
``buffer_bytes`` of records are unacknowledged (backpressure), and a record not acknowledged
within ``delivery_timeout`` fails with :class:`~iotdata.errors.DeliveryTimeoutError`. That, or
an error that is not retriable, stops the producer: every record not yet acknowledged fails
with it, so that later records never overtake the failed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from iotdata._checks import (
    check_bool,
    check_headers,
    check_instance,
    check_int,
    check_seconds,
    check_text,
    check_timeout,
    record_key,
    validated,
)
from iotdata.errors import (
    ClosedError,
    ConnectError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidInputError,
    WaitTimeoutError,
)
from iotdata.kafka._admin import TopicSpec
from iotdata.kafka._connect import check_bootstrap, start_client
from iotdata.kafka._partitioner import Partitioner
from iotdata.kafka._security import KafkaSecurity

__all__ = ["Delivered", "PartitionedProducer", "ProducerSettings", "ProducerStats"]

log = logging.getLogger("iotdata.kafka")

Compression = Literal["zstd", "lz4", "gzip"]
Headers = Sequence[tuple[str, bytes]]
_COMPRESSIONS = (None, "zstd", "lz4", "gzip")
_RECORD_OVERHEAD = 64  # bytes Kafka adds around a record, for the buffer accounting
#: Errors that a new producer id cures (besides every retriable one).
_RENEWABLE = frozenset({"OutOfOrderSequenceNumber", "UnknownProducerIdError"})
#: Seconds ``close`` gives aiokafka to stop once our own flush is over (see _stop_within).
_STOP_GRACE = 5.0


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if attribute.name.endswith("_bytes"):
        check_int(attribute.name, value, minimum=1)
    else:
        check_seconds(attribute.name, value, zero=False)


def _bootstrap(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_bootstrap(value)


@attrs.frozen(kw_only=True)
class ProducerSettings:
    """Where to send and how; every field has a default that suits telemetry."""

    #: Kafka bootstrap servers, ``host:port[,host:port...]``.
    bootstrap: str = attrs.field(default="127.0.0.1:9092", validator=_bootstrap)
    client_id: str = attrs.field(default="iotdata-producer", validator=validated(check_text))
    #: Kafka-level compression. iotdata frames are zstd-compressed already, so None is the
    #: default; zstd and lz4 need ``pip install 'iotdata[kafka-compression]'``.
    compression: Compression | None = None
    #: The idempotent producer: retries never duplicate or reorder within a partition.
    idempotent: bool = attrs.field(default=True, validator=validated(check_bool))
    #: Seconds a partly filled partition batch waits for more records.
    linger: float = attrs.field(default=0.005, validator=_positive)
    #: Largest partition batch in bytes (a record larger than this goes alone).
    batch_bytes: int = attrs.field(default=512 * 1024, validator=_positive)
    #: Largest request in bytes; keep it at or below the broker's ``message.max.bytes``.
    max_request_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    #: Accepted but unacknowledged bytes before ``send`` waits.
    buffer_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    #: Seconds from ``send`` to acknowledgement before the record fails.
    delivery_timeout: float = attrs.field(default=120.0, validator=_positive)
    #: Seconds one request may take before aiokafka retries it.
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: TLS, mutual TLS or a SASL login (default: none).
    security: KafkaSecurity = attrs.field(
        factory=KafkaSecurity, validator=validated(check_instance, kind=KafkaSecurity)
    )

    def __attrs_post_init__(self) -> None:
        if self.compression not in _COMPRESSIONS:
            raise InvalidInputError(
                f"compression must be one of zstd, lz4, gzip or None, got {self.compression!r}"
            )
        if self.batch_bytes > self.max_request_bytes:
            raise InvalidInputError("batch_bytes must not exceed max_request_bytes")

    def client_options(self) -> dict[str, Any]:
        """The aiokafka ``AIOKafkaProducer`` arguments these settings stand for."""
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "compression_type": self.compression,
            "enable_idempotence": self.idempotent,
            "acks": "all",
            "linger_ms": 0,  # we linger per partition ourselves
            "max_batch_size": self.batch_bytes,
            "max_request_size": self.max_request_bytes,
            "request_timeout_ms": int(self.request_timeout * 1000),
            **self.security.client_options(),
        }


def _evolved(settings: object, options: dict[str, Any]) -> ProducerSettings:
    """``settings`` (default ones for None) with ``options`` for some of their fields."""
    base = check_instance("settings", settings or ProducerSettings(), ProducerSettings)
    unknown = set(options) - {f.name for f in attrs.fields(ProducerSettings)}
    if unknown:
        raise InvalidInputError(f"unknown ProducerSettings field(s) {sorted(unknown)}")
    return attrs.evolve(base, **options)


@attrs.frozen
class Delivered:
    """Where Kafka wrote a record."""

    topic: str
    partition: int
    offset: int


@attrs.frozen
class ProducerStats:
    """A snapshot of a producer."""

    #: Records accepted by ``send``.
    sent: int
    #: Records Kafka acknowledged.
    acknowledged: int
    #: Records that failed (their futures hold the error).
    failed: int
    #: Bytes accepted and not yet acknowledged or failed.
    buffered_bytes: int
    #: Partition batches sent to Kafka (retries included).
    batches: int
    #: Times ``send`` had to wait for buffer room.
    waits: int
    #: Times the Kafka client was replaced to send a batch again after a failure.
    renewals: int = 0


@attrs.define(eq=False)
class _Open:
    """The batch being filled for one partition, and the futures of its records."""

    builder: Any
    futures: list[asyncio.Future[Delivered]] = attrs.Factory(list)
    #: ``(key, value, headers, timestamp_ms)`` of each record, to rebuild the batch for a retry.
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]], int | None]] = attrs.Factory(list)
    size: int = 0
    started: float = attrs.Factory(time.monotonic)


@attrs.define
class _Lane:
    """One topic partition: the open batch, sealed batches in order, and the task draining."""

    topic: str
    partition: int
    current: _Open | None = None
    sealed: deque[_Open] = attrs.Factory(deque)
    in_flight: _Open | None = None
    wake: asyncio.Event = attrs.Factory(asyncio.Event)
    task: asyncio.Task[None] | None = None


@attrs.define(eq=False)
class PartitionedProducer:
    """An asyncio Kafka producer for device telemetry. Build it with :meth:`start`.

    >>> producer = await PartitionedProducer.start(ProducerSettings())  # doctest: +SKIP
    >>> delivered = await (await producer.send("iot.telemetry", "pump-7", frame))  # doctest: +SKIP
    """

    settings: ProducerSettings
    _kafka: Any
    partitioner: Partitioner = attrs.Factory(Partitioner)
    _lanes: dict[tuple[str, int], _Lane] = attrs.Factory(dict)
    _partitions: dict[str, int] = attrs.Factory(dict)
    _room: asyncio.Event = attrs.Factory(asyncio.Event)
    _renewing: asyncio.Lock = attrs.Factory(asyncio.Lock)
    #: The tasks stopping aiokafka producers a renewal replaced, and those producers.
    _retired: dict[asyncio.Task[None], Any] = attrs.Factory(dict)
    _buffered: int = 0
    _failure: BaseException | None = None
    _closed: bool = False
    _counts: dict[str, int] = attrs.Factory(
        lambda: dict.fromkeys(("sent", "acknowledged", "failed", "batches", "waits", "renewals"), 0)
    )

    @classmethod
    async def start(
        cls, settings: ProducerSettings | None = None, **options: Any
    ) -> PartitionedProducer:
        """Connect to Kafka; ``options`` override fields of ``settings``.

        Raises :class:`~iotdata.errors.ConnectError` when no bootstrap server answers.
        """
        settings = _evolved(settings, options)
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415

        try:
            kafka = AIOKafkaProducer(**settings.client_options())
        except (AssertionError, ValueError, RuntimeError) as exc:  # aiokafka's argument checks
            hint = " (pip install 'iotdata[kafka-compression]')" if settings.compression else ""
            raise InvalidInputError(f"Kafka producer settings: {exc}{hint}") from exc
        await start_client(kafka, settings.bootstrap)
        return cls(settings, kafka)

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (asked once, then remembered)."""
        count = self._partitions.get(topic) if type(topic) is str else None
        if count is None:
            TopicSpec(name=topic)  # the name as Kafka allows it, or InvalidInputError
            from aiokafka.errors import KafkaError  # noqa: PLC0415

            try:
                found = await self._kafka.partitions_for(topic)
            except KafkaError as exc:
                raise DeliveryError(
                    f"no metadata for topic {topic!r}: {exc}", retriable=exc.retriable
                ) from exc
            count = self._partitions[topic] = len(found)
        return count

    async def send(
        self,
        topic: str,
        key: str | bytes,
        value: bytes,
        *,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[Delivered]:
        """Accept a record; the returned future resolves to where Kafka wrote it.

        Waits while the buffer is full. Records with the same key keep their order. The future
        fails with :class:`~iotdata.errors.DeliveryError` (``retriable`` set when sending again
        may help) or :class:`~iotdata.errors.DeliveryTimeoutError`.
        """
        if type(topic) is not str:
            raise InvalidInputError(f"topic must be a str, got {type(topic).__name__}")
        key_bytes = record_key(key)
        if type(value) is not bytes:
            raise InvalidInputError(f"value must be bytes, got {type(value).__name__}")
        headers = check_headers(headers)
        if timestamp_ms is not None:
            check_int("timestamp_ms", timestamp_ms, minimum=0, maximum=2**63 - 1)
        size = len(key_bytes) + len(value) + _RECORD_OVERHEAD
        size += sum(len(name) + len(data) for name, data in headers)
        if size > self.settings.max_request_bytes:
            raise InvalidInputError(
                f"a {size}-byte record exceeds max_request_bytes={self.settings.max_request_bytes}"
            )
        self._check_open()
        partition = self.partitioner.partition(key_bytes, await self.partitions(topic))
        await self._reserve(size)
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        try:
            self._check_open()
            self._append(
                topic=topic,
                partition=partition,
                key=key_bytes,
                value=value,
                headers=headers,
                timestamp_ms=timestamp_ms,
                future=future,
                size=size,
            )
        except BaseException:
            self._release(size)
            raise
        self._counts["sent"] += 1
        return future

    async def flush(self, timeout: float | None = None) -> None:
        """Send every open batch now and wait until everything accepted is acknowledged
        (or failed). Raises :class:`~iotdata.errors.WaitTimeoutError` (a ``TimeoutError``)
        after ``timeout`` seconds (None or ``math.inf``: no limit)."""
        wait = check_timeout("timeout", timeout)
        for lane in self._lanes.values():
            self._seal(lane)
        try:
            await asyncio.wait_for(self._wait_room(0), wait)
        except (TimeoutError, asyncio.TimeoutError):
            raise WaitTimeoutError(f"not acknowledged within {timeout} s") from None
        if self._failure is not None:
            raise self._failure

    def statistics(self) -> ProducerStats:
        counts = self._counts
        return ProducerStats(
            sent=counts["sent"],
            acknowledged=counts["acknowledged"],
            failed=counts["failed"],
            buffered_bytes=self._buffered,
            batches=counts["batches"],
            waits=counts["waits"],
            renewals=counts["renewals"],
        )

    async def close(self, timeout: float | None = 30.0) -> None:
        """Deliver what was accepted (up to ``timeout`` seconds), then disconnect.

        Records still unacknowledged after that fail with :class:`ClosedError`. Disconnecting
        takes a few seconds at most, also when Kafka is unreachable (the batches aiokafka still
        holds are given up: Kafka may have some of them and write them later). Safe to call
        twice, and from a cancelled task.
        """
        if self._closed:
            return
        try:
            if self._failure is None:
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await self.flush(timeout)
        finally:
            self._closed = True
            for lane in self._lanes.values():
                if lane.task is not None:
                    lane.task.cancel()
            self._fail_all(ClosedError("the producer was closed before Kafka acknowledged"))
            for retired in self._retired.values():
                _give_up(retired)
            await _stop_within(self._kafka, _STOP_GRACE)
            if self._retired:
                await asyncio.wait(list(self._retired), timeout=_STOP_GRACE)

    async def __aenter__(self) -> PartitionedProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the producer is closed")
        if self._failure is not None:
            raise self._failure

    async def _reserve(self, size: int) -> None:
        limit = self.settings.buffer_bytes - size
        if self._buffered > limit and self._buffered:
            self._counts["waits"] += 1
            await self._wait_room(max(limit, 0))
            self._check_open()
        self._buffered += size

    async def _wait_room(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes are buffered (or the producer stopped)."""
        while self._buffered > limit and not self._closed and self._failure is None:
            self._room.clear()
            await self._room.wait()

    def _release(self, size: int) -> None:
        self._buffered -= size
        self._room.set()

    def _append(
        self,
        *,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: Headers,
        timestamp_ms: int | None,
        future: asyncio.Future[Delivered],
        size: int,
    ) -> None:
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[topic, partition] = _Lane(topic, partition)
            lane.task = asyncio.get_running_loop().create_task(
                self._drain(lane), name=f"iotdata-kafka-{topic}-{partition}"
            )
        header_list = list(headers)
        for _ in range(2):
            current = lane.current
            if current is None:
                current = lane.current = _Open(self._kafka.create_batch())
            if current.builder.append(
                key=key, value=value, timestamp=timestamp_ms, headers=header_list
            ):
                current.futures.append(future)
                current.records.append((key, value, header_list, timestamp_ms))
                current.size += size
                if len(current.futures) == 1:
                    lane.wake.set()  # the lane's task starts the linger clock
                return
            self._seal(lane)  # full: the record opens the next batch
        raise InvalidInputError(f"a {size}-byte record does not fit in a Kafka batch")

    def _seal(self, lane: _Lane) -> None:
        current = lane.current
        if current is not None and current.futures:
            lane.current = None
            lane.sealed.append(current)
            lane.wake.set()

    async def _drain(self, lane: _Lane) -> None:
        """Submit the lane's batches one after the other, in order (runs as a task)."""
        linger = self.settings.linger
        while True:
            if not lane.sealed:
                current = lane.current
                if current is None or not current.futures:
                    lane.wake.clear()
                    await lane.wake.wait()
                    continue
                remaining = current.started + linger - time.monotonic()
                if remaining > 0:
                    lane.wake.clear()
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        await asyncio.wait_for(lane.wake.wait(), remaining)
                    continue
                self._seal(lane)
            await self._deliver(lane, lane.sealed.popleft())

    async def _deliver(self, lane: _Lane, batch: _Open) -> None:
        """Send one batch and wait for Kafka's acknowledgement, retrying what is retriable,
        before the lane's next batch goes: one batch in flight per partition keeps the order
        even when a retry is needed."""
        from aiokafka.errors import KafkaError, KafkaTimeoutError  # noqa: PLC0415

        deadline = batch.started + self.settings.delivery_timeout
        lane.in_flight = batch
        builder, attempt = batch.builder, 0
        while batch.futures and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._expire(lane, batch)
                return
            kafka, acked = self._kafka, None
            try:
                acked = await kafka.send_batch(builder, lane.topic, partition=lane.partition)
                acked.add_done_callback(_retrieve)  # nobody may wait for it any more
                self._counts["batches"] += 1
                metadata = await asyncio.wait_for(asyncio.shield(acked), remaining)
            except (TimeoutError, asyncio.TimeoutError, KafkaTimeoutError):
                continue  # the deadline decides
            except asyncio.CancelledError:
                if acked is None or not acked.cancelled() or self._closed:
                    raise  # we are being cancelled, not the batch
                builder = self._rebuild(batch)  # a replaced client dropped it: send it again
                continue
            except KafkaError as exc:
                if not (exc.retriable or type(exc).__name__ in _RENEWABLE):
                    self._fail(lane, batch, exc)
                    return
                attempt += 1
                log.warning(
                    "sending a batch for %s-%s again (attempt %d) after: %s",
                    lane.topic,
                    lane.partition,
                    attempt,
                    exc,
                )
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0, max(0.0, remaining)))
                # aiokafka gave this batch up: its sequence numbers are spent, and the broker
                # would refuse the next ones as out of order. A new producer id starts afresh.
                await self._renew(kafka, deadline)
                builder = self._rebuild(batch)
                continue
            self._acknowledged(lane, batch, metadata.offset)
        lane.in_flight = None

    async def _renew(self, broken: Any, deadline: float) -> None:
        """Replace the aiokafka producer ``broken`` (unless another lane did already)."""
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415

        async with self._renewing:
            if self._kafka is not broken:
                return
            fresh = AIOKafkaProducer(**self.settings.client_options())
            while True:
                try:
                    await start_client(fresh, self.settings.bootstrap)
                    break
                except ConnectError:
                    if time.monotonic() >= deadline:
                        return  # the caller's deadline check fails the batch
                    await asyncio.sleep(1.0)
            self._kafka = fresh
            self._counts["renewals"] += 1
            # The old one may still deliver batches other lanes wait for: let it, up to their
            # deadline (which always comes first), then give up what it holds.
            stop = _stop_within(broken, self.settings.delivery_timeout)
            task = asyncio.get_running_loop().create_task(stop)
            self._retired[task] = broken
            task.add_done_callback(lambda done: self._retired.pop(done, None))

    def _rebuild(self, batch: _Open) -> Any:
        """A fresh aiokafka batch with the same records (a failed one cannot be sent again)."""
        builder = self._kafka.create_batch()
        for key, value, headers, timestamp_ms in batch.records:
            builder.append(key=key, value=value, timestamp=timestamp_ms, headers=headers)
        return builder

    def _acknowledged(self, lane: _Lane, batch: _Open, base: int) -> None:
        for index, future in enumerate(batch.futures):
            if not future.done():
                future.set_result(Delivered(lane.topic, lane.partition, base + index))
        self._counts["acknowledged"] += len(batch.futures)
        self._release(batch.size)
        batch.futures = []
        batch.records = []

    def _fail(self, lane: _Lane, batch: _Open, exc: BaseException) -> None:
        error = DeliveryError(
            f"Kafka refused a batch for {lane.topic}-{lane.partition}: {exc}", retriable=False
        )
        error.__cause__ = exc
        log.error("%s; the producer stops", error)
        self._failure = error
        self._fail_all(error)

    def _expire(self, lane: _Lane, batch: _Open) -> None:
        if all(future.done() for future in batch.futures):
            return
        error = DeliveryTimeoutError(
            f"Kafka did not acknowledge {len(batch.futures)} records for "
            f"{lane.topic}-{lane.partition} within {self.settings.delivery_timeout} s"
        )
        log.error("%s; the producer stops", error)
        self._failure = error
        self._fail_all(error)

    def _settle(self, batch: _Open, error: BaseException) -> None:
        failed = 0
        for future in batch.futures:
            if not future.done():
                future.set_exception(error)
                failed += 1
        self._counts["failed"] += failed
        if batch.futures:
            self._release(batch.size)
        batch.futures = []
        batch.records = []

    def _fail_all(self, error: BaseException) -> None:
        for lane in self._lanes.values():
            if lane.in_flight is not None:
                self._settle(lane.in_flight, error)
                lane.in_flight = None
            if lane.current is not None:
                self._settle(lane.current, error)
                lane.current = None
            while lane.sealed:
                self._settle(lane.sealed.popleft(), error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _give_up(kafka: Any) -> None:
    """Fail every batch the aiokafka producer ``kafka`` still holds, so that its ``stop``
    returns (our own futures of those records are settled already)."""
    from aiokafka.errors import ProducerClosed  # noqa: PLC0415

    accumulator = getattr(kafka, "_message_accumulator", None)  # aiokafka has no public way
    if accumulator is not None:
        accumulator.fail_all(ProducerClosed())


async def _stop_within(kafka: Any, grace: float) -> None:
    """Stop the aiokafka producer ``kafka`` within about ``grace`` seconds, whatever happens.

    Its ``stop`` waits until every batch it holds is delivered, which is for ever while Kafka
    is unreachable (it never expires a batch of an idempotent producer): after ``grace`` the
    batches are given up. Errors of the stop are ignored; a cancellation is not.
    """
    stopping = asyncio.ensure_future(kafka.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=grace)
        if not done:
            log.warning("Kafka did not take the producer's last batches within %s s", grace)
            _give_up(kafka)
            await asyncio.wait({stopping}, timeout=_STOP_GRACE)
    finally:
        if not stopping.done():
            stopping.cancel()
        elif not stopping.cancelled():
            stopping.exception()  # retrieved: a failed stop is not an error of ours
