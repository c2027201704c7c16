"""LocalLog: Kafka's shapes in one process, for the embedded default and for tests.

Topics of N partitions; records keyed like Kafka's Java producer keys them
(:func:`iotdata.kafka.partition_for`), so a device lands in the same partition number here and
on a real cluster; offsets per partition; bounded retention; consumer groups with generations;
optional durability in a folder. One lock guards everything: device threads, the in-process
broker's dispatcher and the event loop of a stream runtime use one log together. Waiting for
records blocks a thread (:meth:`LocalLog.wait`) or suspends a coroutine
(:meth:`LocalLog.wait_async`) until an append wakes it; nothing polls.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from iotdata._checks import check_int, check_path
from iotdata.errors import ClosedError, InvalidInputError
from iotdata.kafka import Partitioner, TopicSpec
from iotdata.local._checks import (
    check_count,
    check_name,
    check_retention,
    check_timeout,
    is_int,
    positive,
    session_timeout,
    topic_set,
)
from iotdata.local._checks import retention as retention_check
from iotdata.local._errors import LogStorageError, UnknownTopicError
from iotdata.local._groups import Groups
from iotdata.local._partition import PartitionLog
from iotdata.local._records import (
    GroupAssignment,
    LogRecord,
    LogStats,
    Retention,
    TopicPartition,
    check_headers,
    record_size,
)
from iotdata.local._storage import DURABILITIES, DiskStore, Durability
from iotdata.local._wait import Waiting

__all__ = ["LocalLog"]

_INT64 = 2**63
#: Most partitions a topic of the embedded log may have (each is an object in memory).
MAX_PARTITIONS = 10_000
T = TypeVar("T")


@attrs.define(eq=False)
class _Topic:
    retention: Retention
    partitions: list[PartitionLog]


@attrs.define(eq=False, kw_only=True)
class LocalLog:
    """An in-process partitioned log. :meth:`memory` (also plain ``LocalLog()``) keeps it in
    memory; :meth:`open` keeps it in a folder too, to resume after a restart.

    Reading below the start offset (records dropped by retention) or past the end raises
    :class:`~iotdata.local.OffsetOutOfRangeError`, which names the range held; a
    :class:`~iotdata.local.LocalConsumer` resets and counts the gap instead.
    """

    #: Retention of topics created without their own.
    retention: Retention = attrs.field(factory=Retention, validator=retention_check)
    #: Seconds without a call from a group member before it is dropped from its group (a
    #: rebalance); None keeps members until they leave.
    session_timeout: float | None = attrs.field(default=None, validator=session_timeout)
    #: Largest record (key + value + headers + overhead) an append accepts.
    max_record_bytes: int = attrs.field(default=1024 * 1024, validator=positive)
    #: Wall clock for record timestamps; monotonic clock for group sessions (both seconds).
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _topics: dict[str, _Topic] = attrs.field(factory=dict, init=False)
    _sizes: dict[str, int] = attrs.field(factory=dict, init=False)
    _groups: Groups = attrs.field(init=False)
    _waiting: Waiting = attrs.field(init=False)
    _partitioner: Partitioner = attrs.field(factory=Partitioner, init=False)
    _store: DiskStore | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("appended", "dropped_records", "dropped_bytes"), 0),
        init=False,
    )

    def __attrs_post_init__(self) -> None:
        self._groups = Groups(self.session_timeout)
        self._waiting = Waiting(self._lock, self._check_open)

    @classmethod
    def memory(cls, **options: Any) -> LocalLog:
        """A log in memory only; ``options`` are the fields of :class:`LocalLog`."""
        return cls(**options)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "flush",
        segment_bytes: int = 8 * 1024 * 1024,
        **options: Any,
    ) -> LocalLog:
        """A log kept in the folder ``path`` (created if missing), with what it held.

        ``durability``: ``"none"`` (written at flush, roll or close), ``"flush"`` (every record
        handed to the OS: survives a killed process) or ``"fsync"`` (survives power loss).
        A segment file rolls over at ``segment_bytes``; retention deletes whole segments.
        A torn tail (a record cut short by a crash) is truncated. Raises
        :class:`~iotdata.local.LogStorageError` when the folder is in use or corrupt.
        """
        if durability not in DURABILITIES:
            raise InvalidInputError(f"durability must be one of {DURABILITIES}, got {durability!r}")
        check_count("segment_bytes", segment_bytes, 1)
        folder = Path(check_path("path", path))
        log = cls(**options)
        store = DiskStore.open(folder, durability, segment_bytes)
        try:
            log._load(store)
        except BaseException:
            store.close()
            raise
        log._store = store
        return log

    # ------------------------------------------------------------------ topics and records

    def create_topic(
        self, name: str, partitions: int, *, retention: Retention | None = None
    ) -> int:
        """Create ``name`` with ``partitions`` partitions, or check that it has that many;
        return the count (at most 10,000 here). Idempotent like
        :func:`iotdata.kafka.ensure_topics`: an existing topic with another count is refused
        (InvalidInputError); a ``retention`` given for an existing topic replaces its
        retention."""
        TopicSpec(name=name, partitions=partitions)  # Kafka's rules for names and counts
        check_int("partitions", partitions, maximum=MAX_PARTITIONS)  # each one is an object here
        if retention is not None:
            check_retention(retention)
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is None:
                self._add_topic(name, partitions, retention or self.retention)
            elif len(topic.partitions) != partitions:
                raise InvalidInputError(
                    f"topic {name!r} exists with {len(topic.partitions)} partitions, not "
                    f"{partitions}: changing the count would move keys between partitions"
                )
            elif retention is not None and retention != topic.retention:
                topic.retention = retention
                for part in topic.partitions:
                    part.retention = retention
                    self._dropped(part, *part.trim())
            else:
                return partitions
            self._save_state()
        return partitions

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        with self._lock:
            self._check_open()
            return dict(self._sizes)

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (UnknownTopicError when it does not exist)."""
        with self._lock:
            self._check_open()
            return len(self._topic(topic).partitions)

    def append(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Append a record; return its ``(partition, offset)``.

        The partition is ``partition_for(key, partitions)`` (Kafka's Java producer's choice)
        unless given. ``timestamp_ms`` defaults to the log's clock. With a folder, the record
        is written before it becomes visible.
        """
        if type(key) is not bytes or type(value) is not bytes:
            raise InvalidInputError(
                f"key and value must be bytes, not {type(key).__name__} and {type(value).__name__}"
            )
        pairs = check_headers(headers) if headers else ()
        size = record_size(key, value, pairs)
        if size > self.max_record_bytes:
            raise InvalidInputError(f"a {size}-byte record exceeds {self.max_record_bytes} bytes")
        if timestamp_ms is None:
            timestamp_ms = int(self.clock() * 1000)
        elif not is_int(timestamp_ms) or not -_INT64 <= timestamp_ms < _INT64:
            raise InvalidInputError(f"timestamp_ms must be an int64, got {timestamp_ms!r}")
        with self._lock:
            self._check_open()
            parts = self._topic(topic).partitions
            if partition is None:
                partition = self._partitioner.partition(key, len(parts))
            elif not is_int(partition) or not 0 <= partition < len(parts):
                raise UnknownTopicError(f"topic {topic!r} has no partition {partition!r}")
            part = parts[partition]
            record = LogRecord(topic, partition, part.end, key, value, pairs, timestamp_ms)
            if self._store is not None:
                self._store.write(record)
            self._counts["appended"] += 1
            self._dropped(part, *part.add(record, size))
            self._waiting.signals.notify((topic, partition))
            return partition, record.offset

    def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[LogRecord]:
        """Up to ``max_records`` records of a partition from ``offset`` on (``[]`` at the end).

        Raises :class:`~iotdata.local.OffsetOutOfRangeError` below :meth:`start_offset` or
        past :meth:`end_offset`.
        """
        check_count("offset", offset, 0)
        check_count("max_records", max_records, 1)
        with self._lock:
            self._check_open()
            return self._partition(topic, partition).read(offset, max_records)

    def start_offset(self, topic: str, partition: int) -> int:
        """The oldest offset retained (the end offset when the partition is empty)."""
        with self._lock:
            self._check_open()
            return self._partition(topic, partition).start

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of the partition gets."""
        with self._lock:
            self._check_open()
            return self._partition(topic, partition).end

    def wait(self, topic: str, partition: int, offset: int, timeout: float | None = None) -> bool:
        """Block this thread until the partition holds a record at ``offset`` or later
        (``end_offset > offset``); False after ``timeout`` seconds. Raises ClosedError when
        the log closes meanwhile."""
        keys, ready = self._after(topic, partition, offset, timeout)
        return self._waiting.block(keys, ready, timeout)

    async def wait_async(
        self, topic: str, partition: int, offset: int, timeout: float | None = None
    ) -> bool:
        """:meth:`wait` for a coroutine: the event loop runs on while it waits."""
        keys, ready = self._after(topic, partition, offset, timeout)
        return await self._waiting.block_async(keys, ready, timeout)

    # ------------------------------------------------------------------ consumer groups

    def join(self, group: str, topics: str | Collection[str], member_id: str) -> GroupAssignment:
        """Add ``member_id`` to ``group``, subscribed to ``topics`` (which must exist); return its
        assignment. A new member, or new topics, start a new generation (a rebalance); joining
        again with the same topics changes nothing. Partitions are spread by Kafka's range
        assignor over the members sorted by id."""
        names = topic_set(topics)
        check_name("group", group)
        check_name("member_id", member_id)
        with self._lock:
            self._check_open()
            for name in names:
                self._topic(name)
            now = self.monotonic()
            return self._in_group(
                group, lambda: self._groups.join(group, member_id, names, self._sizes, now)
            )

    def leave(self, group: str, member_id: str) -> bool:
        """Remove ``member_id`` from ``group`` (a rebalance); False when it was not a member."""
        check_name("group", group)
        check_name("member_id", member_id)
        with self._lock:
            self._check_open()
            now = self.monotonic()
            return self._in_group(
                group, lambda: self._groups.leave(group, member_id, self._sizes, now)
            )

    def assignment(self, group: str, member_id: str) -> GroupAssignment:
        """The member's partitions and the group's generation; counts as a heartbeat.
        Raises :class:`~iotdata.local.UnknownMemberError` when it is not a member."""
        check_name("group", group)
        check_name("member_id", member_id)
        with self._lock:
            self._check_open()
            now = self.monotonic()
            return self._in_group(
                group, lambda: self._groups.assignment(group, member_id, self._sizes, now)
            )

    def commit(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        generation: int | None = None,
        *,
        member_id: str | None = None,
    ) -> None:
        """Commit ``offsets`` (per partition, the next offset to read) for ``group``.

        ``generation`` must be the group's current one, else
        :class:`~iotdata.local.CommitFailedError` (a rebalance happened); with ``member_id``
        the member must also own each partition. ``generation=None`` commits outside the group
        protocol and is allowed only while the group has no members.
        """
        if generation is not None and not is_int(generation):
            raise InvalidInputError(f"generation must be None or an int, got {generation!r}")
        if member_id is not None:
            check_name("member_id", member_id)
        with self._lock:
            self._check_open()
            checked = self._check_offsets(offsets)
            now = self.monotonic()
            self._in_group(
                group,
                lambda: self._groups.commit(
                    group,
                    checked,
                    generation=generation,
                    member=member_id,
                    partitions=self._sizes,
                    now=now,
                ),
            )
            self._save_state()

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The offset ``group`` committed for the partition, or None."""
        check_name("group", group)
        with self._lock:
            self._check_open()
            self._partition(topic, partition)
            return self._groups.committed(group, TopicPartition(topic, partition))

    # ------------------------------------------------------------------ lifetime

    def statistics(self) -> LogStats:
        with self._lock:
            parts = [part for topic in self._topics.values() for part in topic.partitions]
            return LogStats(
                topics=len(self._topics),
                partitions=len(parts),
                appended=self._counts["appended"],
                records=sum(part.count for part in parts),
                bytes=sum(part.bytes for part in parts),
                dropped_records=self._counts["dropped_records"],
                dropped_bytes=self._counts["dropped_bytes"],
                truncated_bytes=0 if self._store is None else self._store.truncated_bytes,
                groups=len(self._groups),
                rebalances=self._groups.rebalances,
            )

    def flush(self) -> None:
        """Hand buffered writes to the OS (``durability="none"``); nothing to do in memory."""
        with self._lock:
            self._check_open()
            if self._store is not None:
                self._store.flush()

    def close(self) -> None:
        """Write out and release the folder; waiters get ClosedError. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._waiting.signals.notify_all()
            store, self._store = self._store, None
            if store is not None:
                store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def folder(self) -> Path | None:
        """The folder of a log made by :meth:`open`; None for a log in memory."""
        return None if self._store is None else self._store.folder

    def __enter__(self) -> LocalLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the local log is closed")

    def _topic(self, name: str) -> _Topic:
        check_name("topic", name)
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"no topic {name!r} in the local log; create_topic() first")
        return topic

    def _partition(self, topic: str, partition: int) -> PartitionLog:
        parts = self._topic(topic).partitions
        if not is_int(partition) or not 0 <= partition < len(parts):
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition!r}")
        return parts[partition]

    def _add_topic(self, name: str, count: int, retention: Retention) -> _Topic:
        parts = [PartitionLog(name, p, retention) for p in range(count)]
        topic = self._topics[name] = _Topic(retention, parts)
        self._sizes[name] = count
        return topic

    def _dropped(self, part: PartitionLog, records: int, size: int) -> None:
        if records:
            self._counts["dropped_records"] += records
            self._counts["dropped_bytes"] += size
            if self._store is not None:
                self._store.trim(TopicPartition(part.topic, part.partition), part.start)

    def _check_offsets(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        checked: dict[TopicPartition, int] = {}
        if not isinstance(offsets, Mapping):
            raise InvalidInputError(f"offsets must map TopicPartition to int, got {offsets!r}")
        for key, offset in offsets.items():
            try:
                topic, partition = key
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{key!r} is not a (topic, partition) pair") from exc
            part = self._partition(topic, partition)
            if not is_int(offset) or not 0 <= offset <= part.end:
                raise InvalidInputError(
                    f"cannot commit offset {offset!r} for {topic}-{partition}: it holds "
                    f"offsets up to {part.end}"
                )
            checked[TopicPartition(topic, partition)] = offset
        return checked

    def _in_group(self, group: str, call: Callable[[], T]) -> T:
        """Run a group operation; wake the group's waiters when its generation moved."""
        check_name("group", group)
        before = self._groups.generation(group)
        try:
            return call()
        finally:
            if self._groups.generation(group) != before:
                self._waiting.signals.notify(("group", group))

    def _state(self) -> dict[str, Any]:
        topics = {
            name: {
                "partitions": len(topic.partitions),
                "max_records": topic.retention.max_records,
                "max_bytes": topic.retention.max_bytes,
            }
            for name, topic in self._topics.items()
        }
        return {"format": 1, "topics": topics, "offsets": self._groups.snapshot()}

    def _save_state(self) -> None:
        if self._store is not None:
            self._store.save_state(self._state())

    def _load(self, store: DiskStore) -> None:
        state = store.load_state()
        try:
            topics = {
                name: (
                    TopicSpec(name=name, partitions=spec["partitions"]).partitions,
                    Retention(max_records=spec["max_records"], max_bytes=spec["max_bytes"]),
                )
                for name, spec in state["topics"].items()
            }
            offsets = [
                (group, TopicPartition(topic, partition), offset)
                for group, rows in state["offsets"].items()
                for topic, partition, offset in rows
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # InvalidInputError too
            raise LogStorageError(f"{store.folder}/state.json is malformed: {exc!r}") from exc
        for name, (count, retention) in topics.items():
            for part in self._add_topic(name, count, retention).partitions:
                tp = TopicPartition(name, part.partition)
                part.start, records = store.replay(tp)
                for record in records:
                    part.add(record, record_size(record.key, record.value, record.headers))
                store.trim(tp, part.start)
        for group, tp, offset in offsets:
            self._groups.restore(group, [(tp, offset)])

    # ------------------------------------------------------------------ waiting

    def _after(
        self, topic: str, partition: int, offset: int, timeout: float | None
    ) -> tuple[list[Hashable], Callable[[], bool]]:
        check_count("offset", offset, 0)
        check_timeout(timeout)
        with self._lock:
            part = self._partition(topic, partition)
        return [(topic, partition)], lambda: part.end > offset

    async def _wait_fetchable(
        self,
        positions: Mapping[TopicPartition, int],
        group: str,
        generation: int,
        timeout: float,
    ) -> bool:
        """For a consumer: wait until one of its partitions has a record at its position or
        later, or the group's generation moved on."""
        with self._lock:
            parts = [(self._partition(*tp), position) for tp, position in positions.items()]

        def ready() -> bool:
            if self._groups.generation(group) != generation:
                return True
            return any(part.end > position for part, position in parts)

        keys: list[Hashable] = [*positions, ("group", group)]
        return await self._waiting.block_async(keys, ready, timeout)
