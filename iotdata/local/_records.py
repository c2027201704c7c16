"""Values of the embedded log: where a record lives, the record, retention, snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

from iotdata._checks import check_headers as _check_headers
from iotdata.errors import InvalidInputError

__all__ = [
    "RECORD_OVERHEAD",
    "GroupAssignment",
    "Headers",
    "LogRecord",
    "LogStats",
    "Retention",
    "TopicPartition",
    "check_headers",
    "record_size",
]

Headers = tuple[tuple[str, bytes], ...]

#: Bytes counted for each record on top of its key, value and headers (retention accounting).
RECORD_OVERHEAD = 64


class TopicPartition(NamedTuple):
    """A partition of a topic.

    A named tuple, as aiokafka's ``TopicPartition`` is: the two compare and hash equal, so
    either can key the same dict.
    """

    topic: str
    partition: int


@attrs.frozen
class LogRecord:
    """One record of the log, as a consumer reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers = ()
    #: Milliseconds since the epoch: given by the writer, else the log's clock at append.
    timestamp_ms: int = 0

    @property
    def timestamp(self) -> int:
        """``timestamp_ms`` under the name aiokafka's ``ConsumerRecord`` uses."""
        return self.timestamp_ms


def record_size(key: bytes, value: bytes, headers: Headers) -> int:
    """The bytes a record counts for in retention and limits."""
    return len(key) + len(value) + sum(len(n) + len(v) for n, v in headers) + RECORD_OVERHEAD


def check_headers(headers: Sequence[tuple[str, bytes]]) -> Headers:
    """``headers`` as a tuple of ``(str, bytes)`` pairs, or InvalidInputError."""
    return _check_headers(headers)


def _bound(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidInputError(f"{attribute.name} must be None or an int >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Retention:
    """How much of each partition the log keeps; the oldest records go first.

    At least one bound is required (every buffer has one). The newest record of a partition
    always stays, even when it alone exceeds ``max_bytes``. Bytes are counted as key + value +
    headers + :data:`RECORD_OVERHEAD` per record.
    """

    max_records: int | None = attrs.field(default=None, validator=_bound)
    max_bytes: int | None = attrs.field(default=32 * 1024 * 1024, validator=_bound)

    def __attrs_post_init__(self) -> None:
        if self.max_records is None and self.max_bytes is None:
            raise InvalidInputError("retention needs max_records, max_bytes or both")


@attrs.frozen
class GroupAssignment:
    """What a member of a consumer group owns, in which generation of the group."""

    group: str
    member_id: str
    #: Bumped on every change of the group's members; commits must name the current one.
    generation: int
    #: The member's partitions, sorted.
    partitions: tuple[TopicPartition, ...]


@attrs.frozen
class LogStats:
    """A snapshot of a :class:`LocalLog`. Counters start at zero when the log is opened."""

    topics: int
    partitions: int
    #: Records appended.
    appended: int
    #: Records and bytes held now.
    records: int
    bytes: int
    #: Records (and their bytes) removed by retention.
    dropped_records: int
    dropped_bytes: int
    #: Bytes of torn or corrupt tails cut off segment files when the folder was opened.
    truncated_bytes: int
    #: Consumer groups known (with members or committed offsets).
    groups: int
    #: Generation bumps of all groups (joins, leaves, expired sessions).
    rebalances: int
