"""The errors of the embedded log, each under :class:`~iotdata.errors.IotDataError`."""

from __future__ import annotations

from iotdata.errors import InvalidInputError, IotDataError

__all__ = [
    "CommitFailedError",
    "LogStorageError",
    "OffsetOutOfRangeError",
    "UnknownMemberError",
    "UnknownTopicError",
]


class UnknownTopicError(InvalidInputError):
    """No such topic (or partition) in the log: create it first with ``create_topic``."""


class OffsetOutOfRangeError(IotDataError):
    """A read asked for an offset the partition does not hold: one dropped by retention (below
    ``start_offset``) or one not written yet (above ``end_offset``), as Kafka's error of the
    same name. :class:`LocalConsumer` resets its position instead (``auto_offset_reset``)."""

    def __init__(
        self, topic: str, partition: int, offset: int, start_offset: int, end_offset: int
    ) -> None:
        super().__init__(
            f"offset {offset} of {topic}-{partition} is out of range: the partition holds "
            f"offsets {start_offset} to {end_offset - 1} (next is {end_offset})"
        )
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset


class CommitFailedError(IotDataError):
    """A consumer group refused a commit: the group rebalanced since the member's generation
    (Kafka's ``CommitFailedError``), or the member does not own the partition.

    Not retriable as such: the member must learn its new assignment first; the new owner of a
    partition resumes from the last offset committed, so records after it are read again.
    """


class UnknownMemberError(CommitFailedError):
    """The member is not in the group: it never joined, it left, or its session expired."""


class LogStorageError(IotDataError):
    """The log's folder cannot be used: in use by another log, unreadable, corrupt before its
    last record, or a write failed (the ``OSError`` is the ``__cause__``)."""
