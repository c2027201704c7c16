"""In-memory sinks for tests of the contract: a correct one and deliberately broken ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from iotdata.model import Reading
from iotdata.sinks import BufferedWriter, Opening, PendingRecords, RetryPolicy
from iotdata.sinks._json import dead_letter_fields
from iotdata.testing import SinkContents


@attrs.define
class Store:
    """What a memory sink keeps, keyed like the real sinks (or not, for the broken ones)."""

    readings: dict[Any, Reading] = attrs.Factory(dict)
    aggregates: dict[Any, Any] = attrs.Factory(dict)
    alerts: dict[Any, Any] = attrs.Factory(dict)
    dead_letters: dict[Any, Any] = attrs.Factory(dict)
    log: list[Any] = attrs.Factory(list)

    def contents(self) -> SinkContents:
        return SinkContents(
            list(self.readings.values()),
            list(self.aggregates.values()),
            list(self.alerts.values()),
            [dead_letter_fields(letter) for letter in self.dead_letters.values()],
        )


class MemoryWriter(BufferedWriter):
    def __init__(self, store: Store, **options: Any) -> None:
        super().__init__(name="MemorySink", **options)
        self.store = store
        self.failures: list[BaseException] = []
        self.released = 0

    async def persist(self, pending: PendingRecords) -> None:
        if self.failures:
            raise self.failures.pop(0)
        for column in pending.columns():
            col = column.column
            for ts, value, seq in zip(col.ts, col.values, col.seq, strict=True):
                reading = Reading(column.device_id, col.metric, ts, value, seq)
                self.store.readings.setdefault((reading.device_id, seq), reading)
        for aggregate in pending.aggregates():
            held = self.store.aggregates.get(aggregate.key)
            if held is None or aggregate.revision >= held.revision:
                self.store.aggregates[aggregate.key] = aggregate
        for alert in pending.alerts():
            self.store.alerts.setdefault(alert.key, alert)
        for letter in pending.dead_letters():
            self.store.dead_letters.setdefault(letter.identity, letter)
        self.store.log.append(pending)

    async def release(self) -> None:
        self.released += 1


@attrs.frozen
class MemorySink:
    store: Store = attrs.Factory(Store)
    writer_class: Callable[..., MemoryWriter] = MemoryWriter
    flush_rows: int = 100_000
    retry: RetryPolicy = attrs.Factory(RetryPolicy)

    def open(self) -> Opening[MemoryWriter]:
        async def opener() -> MemoryWriter:
            return self.writer_class(self.store, flush_rows=self.flush_rows, retry=self.retry)

        return Opening(opener)


class DuplicatingWriter(MemoryWriter):
    """Appends instead of keying: a replay stores readings twice."""

    async def persist(self, pending: PendingRecords) -> None:
        for column in pending.columns():
            col = column.column
            for ts, value, seq in zip(col.ts, col.values, col.seq, strict=True):
                key = (column.device_id, seq, len(self.store.readings))
                self.store.readings[key] = Reading(column.device_id, col.metric, ts, value, seq)
        await super().persist(PendingRecords(()))
        for aggregate in pending.aggregates():
            self.store.aggregates[aggregate.key] = aggregate
        for alert in pending.alerts():
            self.store.alerts.setdefault(alert.key, alert)


class LastWriteWinsWriter(MemoryWriter):
    """Ignores the revision of aggregates."""

    async def persist(self, pending: PendingRecords) -> None:
        await super().persist(pending)
        for aggregate in pending.aggregates():
            self.store.aggregates[aggregate.key] = aggregate


class ForgetfulWriter(MemoryWriter):
    """Drops alerts."""

    async def persist(self, pending: PendingRecords) -> None:
        await super().persist(
            attrs.evolve(
                pending, chunks=tuple(attrs.evolve(chunk, alerts=()) for chunk in pending.chunks)
            )
        )


class DeadLetterWriter(MemoryWriter):
    """Keeps dead letters too, keyed on their identity."""

    stores_dead_letters = True


class DeadLetterDroppingWriter(MemoryWriter):
    """Says it keeps dead letters, and drops them."""

    stores_dead_letters = True

    async def persist(self, pending: PendingRecords) -> None:
        chunks = tuple(attrs.evolve(chunk, dead_letters=()) for chunk in pending.chunks)
        await super().persist(attrs.evolve(pending, chunks=chunks))


class LaxSortOutWriter(MemoryWriter):
    """Its sort_out lets every record through: it disagrees with its write."""

    def sort_out(self, records: Any) -> tuple[list[Any], list[Any]]:
        return list(records), []
