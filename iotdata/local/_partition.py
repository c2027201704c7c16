"""One partition in memory: records by offset, trimmed to its retention. No I/O, no locking."""

from __future__ import annotations

import attrs

from iotdata.local._errors import OffsetOutOfRangeError
from iotdata.local._records import LogRecord, Retention

__all__ = ["PartitionLog"]

_COMPACT_AT = 1024  # dropped slots kept at the head of the list before it is compacted


@attrs.define(eq=False)
class PartitionLog:
    """The retained records of one partition, offsets ``start`` to ``end - 1``.

    Records sit in a list with a moving head, so dropping the oldest and reading any offset
    both cost O(1) (amortised).
    """

    topic: str
    partition: int
    retention: Retention
    start: int = 0
    bytes: int = 0
    _records: list[LogRecord] = attrs.Factory(list)
    _sizes: list[int] = attrs.Factory(list)
    _head: int = 0

    @property
    def end(self) -> int:
        """The offset the next record gets."""
        return self.start + len(self._records) - self._head

    @property
    def count(self) -> int:
        return len(self._records) - self._head

    def add(self, record: LogRecord, size: int) -> tuple[int, int]:
        """Keep ``record`` (its offset is :attr:`end`); return the records and bytes dropped."""
        assert record.offset == self.end, (record.offset, self.end)
        self._records.append(record)
        self._sizes.append(size)
        self.bytes += size
        return self.trim()

    def trim(self) -> tuple[int, int]:
        """Drop the oldest records until the retention holds (the newest always stays)."""
        max_records = self.retention.max_records
        max_bytes = self.retention.max_bytes
        dropped = dropped_bytes = 0
        while self.count > 1 and (
            (max_records is not None and self.count > max_records)
            or (max_bytes is not None and self.bytes > max_bytes)
        ):
            size = self._sizes[self._head]
            self._head += 1
            self.start += 1
            self.bytes -= size
            dropped += 1
            dropped_bytes += size
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._records):
            del self._records[: self._head]
            del self._sizes[: self._head]
            self._head = 0
        return dropped, dropped_bytes

    def read(self, offset: int, max_records: int) -> list[LogRecord]:
        """Up to ``max_records`` records from ``offset`` on; ``[]`` at :attr:`end`."""
        if not self.start <= offset <= self.end:
            raise OffsetOutOfRangeError(self.topic, self.partition, offset, self.start, self.end)
        index = self._head + offset - self.start
        return self._records[index : index + max_records]
