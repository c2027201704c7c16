"""LocalProducer: the interface of :class:`iotdata.kafka.PartitionedProducer`, into a LocalLog.

The gateway and the sinks write through either one unchanged. An append is synchronous, so
the future :meth:`LocalProducer.send` returns is already done; with a durable log the write
(and, under ``durability="fsync"``, the fsync) happens in the caller's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import attrs

from iotdata._checks import record_key
from iotdata.errors import ClosedError, DeliveryError, InvalidInputError
from iotdata.kafka import Delivered, ProducerStats
from iotdata.local._errors import LogStorageError, UnknownTopicError
from iotdata.local._log import LocalLog

__all__ = ["LocalProducer"]


@attrs.define(eq=False)
class LocalProducer:
    """Records into a :class:`LocalLog`, with :class:`~iotdata.kafka.PartitionedProducer`'s
    methods. Closing the producer leaves the log open (the log has its own owner).

    As with Kafka: a topic that does not exist fails with
    :class:`~iotdata.errors.DeliveryError`; a write the log's folder refuses fails the returned
    future with a DeliveryError and stops the producer (later sends raise it).
    """

    log: LocalLog
    _closed: bool = attrs.field(default=False, init=False)
    _failure: DeliveryError | None = attrs.field(default=None, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("sent", "acknowledged", "failed"), 0), init=False
    )

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has; DeliveryError when it does not exist."""
        self._check_open()
        try:
            return self.log.partitions(topic)
        except UnknownTopicError as exc:
            raise DeliveryError(f"no metadata for topic {topic!r}: {exc}") from exc

    async def send(
        self,
        topic: str,
        key: str | bytes,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[Delivered]:
        """Append a record; the returned future (already done) holds where it went."""
        key_bytes = record_key(key)
        if type(value) is not bytes:
            raise InvalidInputError(f"value must be bytes, got {type(value).__name__}")
        self._check_open()
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        try:
            partition, offset = self.log.append(
                topic, key_bytes, value, headers=headers, timestamp_ms=timestamp_ms
            )
        except UnknownTopicError as exc:
            raise DeliveryError(f"no metadata for topic {topic!r}: {exc}") from exc
        except LogStorageError as exc:
            self._failure = DeliveryError(f"the local log refused a record: {exc}")
            self._failure.__cause__ = exc
            self._counts["sent"] += 1
            self._counts["failed"] += 1
            future.set_exception(self._failure)
            return future
        self._counts["sent"] += 1
        self._counts["acknowledged"] += 1
        future.set_result(Delivered(topic, partition, offset))
        return future

    async def flush(self, timeout: float | None = None) -> None:
        """Hand the log's buffered writes to the OS; every send is acknowledged already."""
        if self._failure is not None:
            raise self._failure
        if not self._closed and not self.log.closed:
            self.log.flush()

    def statistics(self) -> ProducerStats:
        """``batches`` and ``waits`` stay 0: records go one by one and never wait for room."""
        counts = self._counts
        return ProducerStats(
            sent=counts["sent"],
            acknowledged=counts["acknowledged"],
            failed=counts["failed"],
            buffered_bytes=0,
            batches=0,
            waits=0,
        )

    async def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting records. Safe to call twice."""
        self._closed = True

    async def __aenter__(self) -> LocalProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the producer is closed")
        if self._failure is not None:
            raise self._failure
