"""LocalConsumer: a member of a consumer group of a LocalLog, shaped like aiokafka's consumer.

It mirrors ``AIOKafkaConsumer`` with ``enable_auto_commit=False``: ``start``/``stop`` (also
``close`` and ``async with``), ``getmany(*partitions, timeout_ms, max_records)`` returning
``{TopicPartition: [record, ...]}``, ``seek``, ``seek_to_beginning``, ``seek_to_end``,
``position``, ``committed``, ``commit(offsets=None)`` (the current positions by default),
``assignment()`` and a rebalance listener with ``on_partitions_revoked`` /
``on_partitions_assigned``. ``auto_offset_reset`` ("earliest", the default here, or
"latest") picks the position of a partition without a committed offset and of one whose
position fell out of range; records skipped that way are counted in ``statistics().skipped``.

Where it differs: a rebalance completes at once (no join barrier). The member learns of it at
its next call, and the listener hears only the partitions that changed hands (as with Kafka's
cooperative protocol); a commit with the old generation is refused with
:class:`~iotdata.local.CommitFailedError`, so the new owner resumes from the last commit.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Literal, Protocol

import attrs

from iotdata.errors import ClosedError, InvalidInputError
from iotdata.local._checks import check_name, topic_set
from iotdata.local._errors import OffsetOutOfRangeError, UnknownMemberError
from iotdata.local._log import LocalLog
from iotdata.local._records import GroupAssignment, LogRecord, TopicPartition

__all__ = ["ConsumerStats", "LocalConsumer", "OffsetReset", "RebalanceListener"]

log = logging.getLogger("iotdata.local")

OffsetReset = Literal["earliest", "latest"]


class RebalanceListener(Protocol):
    """Told about partitions that changed hands, after the consumer took the new assignment
    (aiokafka's ``ConsumerRebalanceListener``)."""

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None: ...


@attrs.frozen
class ConsumerStats:
    """A snapshot of a :class:`LocalConsumer`."""

    #: Records returned by ``getmany``.
    fetched: int
    #: Records never returned because retention dropped them first (gaps), or passed over by
    #: ``auto_offset_reset="latest"``.
    skipped: int
    #: Positions found out of range and reset.
    resets: int
    #: Assignments taken (the first join included).
    rebalances: int
    #: The group generation the consumer works in (-1 before it joined).
    generation: int


def _topics(value: str | Collection[str]) -> tuple[str, ...]:
    return tuple(sorted(topic_set(value)))


def _log(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, LocalLog):
        raise InvalidInputError(f"log must be a LocalLog, got {value!r:.60}")


def _name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_name(attribute.name, value)


def _listener(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    methods = ("on_partitions_revoked", "on_partitions_assigned")
    if value is not None and not all(callable(getattr(value, m, None)) for m in methods):
        raise InvalidInputError(f"listener must be a RebalanceListener or None: {value!r:.60}")


def _partition(partition: object) -> TopicPartition:
    """A ``TopicPartition`` (or a ``(topic, partition)`` pair)."""
    if not isinstance(partition, tuple) or len(partition) != 2:
        raise InvalidInputError(f"expected a TopicPartition, got {partition!r:.60}")
    topic, number = partition
    if type(topic) is not str or type(number) is not int:
        raise InvalidInputError(f"expected a TopicPartition(str, int), got {partition!r:.60}")
    return TopicPartition(topic, number)


def _reset(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("earliest", "latest"):
        raise InvalidInputError(f"auto_offset_reset must be earliest or latest, got {value!r}")


def _max_records(value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"max_records must be an int >= 1, got {value!r}")
    return value


@attrs.define(eq=False)
class LocalConsumer:
    """A consumer group member reading a :class:`LocalLog`; for one event loop.

    >>> async with LocalConsumer(log, "workers", ["iot.telemetry"]) as consumer:  # doctest: +SKIP
    ...     batches = await consumer.getmany(timeout_ms=1000)
    """

    log: LocalLog = attrs.field(validator=_log)
    group: str = attrs.field(validator=_name)
    topics: tuple[str, ...] = attrs.field(converter=_topics)
    member_id: str = attrs.field(factory=lambda: f"local-{uuid.uuid4().hex[:12]}", validator=_name)
    auto_offset_reset: OffsetReset = attrs.field(default="earliest", kw_only=True, validator=_reset)
    #: Records one ``getmany`` returns at most when it is not given ``max_records``.
    max_poll_records: int = attrs.field(default=500, kw_only=True, converter=_max_records)
    listener: RebalanceListener | None = attrs.field(
        default=None, kw_only=True, validator=_listener
    )
    _generation: int = attrs.field(default=-1, init=False)
    _assigned: tuple[TopicPartition, ...] = attrs.field(default=(), init=False)
    _positions: dict[TopicPartition, int] = attrs.field(factory=dict, init=False)
    _turn: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("fetched", "skipped", "resets", "rebalances"), 0),
        init=False,
    )

    async def start(self) -> None:
        """Join the group and take an assignment (``getmany`` joins too when needed)."""
        await self._sync()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[LogRecord]]:
        """Records from the assigned partitions (or those of ``partitions`` still assigned),
        at most ``max_records`` in all, served round-robin; waits up to ``timeout_ms`` for the
        first one, waking on an append or a rebalance. Positions advance past what is returned.

        Each call is a heartbeat (and so is waiting inside it): with the log's
        ``session_timeout``, a member that does not call for that long leaves the group, as
        with Kafka's ``max.poll.interval.ms``.
        """
        if type(timeout_ms) is not int or timeout_ms < 0:
            raise InvalidInputError(f"timeout_ms must be an int >= 0, got {timeout_ms!r}")
        budget = self.max_poll_records if max_records is None else _max_records(max_records)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            await self._sync()
            wanted = [tp for tp in self._assigned if not partitions or tp in partitions]
            batch = self._fetch(wanted, budget)
            remaining = deadline - time.monotonic()
            if batch or remaining <= 0:
                return batch
            positions = {tp: self._positions[tp] for tp in wanted}
            session = self.log.session_timeout
            if session is not None:  # wake to heartbeat (in _sync) while waiting
                remaining = min(remaining, session / 3)
            await self.log._wait_fetchable(positions, self.group, self._generation, remaining)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions assigned at the last call that talked to the group."""
        return frozenset(self._assigned)

    @property
    def generation(self) -> int:
        """The group generation of :meth:`assignment` (-1 before joining)."""
        return self._generation

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (an assigned partition)."""
        self._check_assigned(partition)
        if type(offset) is not int or offset < 0:
            raise InvalidInputError(f"offset must be an int >= 0, got {offset!r}")
        self._positions[TopicPartition(*partition)] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Read from the oldest retained record (all assigned partitions when none named)."""
        for tp in [_partition(p) for p in partitions] or self._assigned:
            self.seek(tp, self.log.start_offset(*tp))

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Read only records appended from now on (all assigned partitions when none named)."""
        for tp in [_partition(p) for p in partitions] or self._assigned:
            self.seek(tp, self.log.end_offset(*tp))

    async def position(self, partition: TopicPartition) -> int:
        """The offset ``getmany`` reads next from ``partition`` (an assigned partition)."""
        self._check_assigned(partition)
        return self._positions[TopicPartition(*partition)]

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for ``partition``, or None."""
        return self.log.committed(self.group, *_partition(partition))

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit ``offsets`` (next offsets to read), by default the current positions, with
        the generation of the current assignment; CommitFailedError if the group rebalanced
        since (the member learns its new assignment at its next ``getmany``)."""
        self._check_open()
        if self._generation < 0:
            raise UnknownMemberError(f"{self.member_id!r} has not joined {self.group!r} yet")
        if offsets is None:
            offsets = {tp: self._positions[tp] for tp in self._assigned}
        self.log.commit(self.group, offsets, self._generation, member_id=self.member_id)

    def statistics(self) -> ConsumerStats:
        counts = self._counts
        return ConsumerStats(
            fetched=counts["fetched"],
            skipped=counts["skipped"],
            resets=counts["resets"],
            rebalances=counts["rebalances"],
            generation=self._generation,
        )

    async def close(self) -> None:
        """Leave the group (a rebalance for the others); commits nothing. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._generation >= 0 and not self.log.closed:
            with contextlib.suppress(ClosedError):  # the log closed meanwhile, and the group
                self.log.leave(self.group, self.member_id)

    async def stop(self) -> None:
        """:meth:`close` under aiokafka's name."""
        await self.close()

    async def __aenter__(self) -> LocalConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the consumer is closed")

    def _check_assigned(self, partition: TopicPartition) -> None:
        self._check_open()
        if _partition(partition) not in self._assigned:
            raise InvalidInputError(f"{partition} is not assigned to {self.member_id!r}")

    async def _sync(self) -> None:
        """Heartbeat; rejoin when the group forgot us; take a new assignment if there is one."""
        self._check_open()
        try:
            state = self.log.assignment(self.group, self.member_id)
        except UnknownMemberError:
            state = self.log.join(self.group, self.topics, self.member_id)
        if state.generation != self._generation:
            await self._rebalanced(state)

    async def _rebalanced(self, state: GroupAssignment) -> None:
        old, new = set(self._assigned), set(state.partitions)
        revoked, added = sorted(old - new), sorted(new - old)
        self._generation = state.generation
        self._assigned = state.partitions
        for tp in revoked:
            del self._positions[tp]
        for tp in added:
            self._positions[tp] = self._initial_position(tp)
        self._counts["rebalances"] += 1
        log.info(
            "%s of %s: generation %d, %d partitions",
            self.member_id,
            self.group,
            state.generation,
            len(new),
        )
        if self.listener is not None:
            if revoked:
                await self.listener.on_partitions_revoked(revoked)
            await self.listener.on_partitions_assigned(added)

    def _initial_position(self, tp: TopicPartition) -> int:
        committed = self.log.committed(self.group, *tp)
        if committed is not None:
            return committed
        if self.auto_offset_reset == "earliest":
            return self.log.start_offset(*tp)
        return self.log.end_offset(*tp)

    def _fetch(
        self, wanted: list[TopicPartition], budget: int
    ) -> dict[TopicPartition, list[LogRecord]]:
        batch: dict[TopicPartition, list[LogRecord]] = {}
        if not wanted:
            return batch
        self._turn = (self._turn + 1) % len(wanted)
        for tp in wanted[self._turn :] + wanted[: self._turn]:
            if budget <= 0:
                break
            records = self._read(tp, budget)
            if records:
                batch[tp] = records
                self._positions[tp] = records[-1].offset + 1
                budget -= len(records)
                self._counts["fetched"] += len(records)
        return batch

    def _read(self, tp: TopicPartition, budget: int) -> list[LogRecord]:
        while True:
            position = self._positions[tp]
            try:
                return self.log.read(tp.topic, tp.partition, position, budget)
            except OffsetOutOfRangeError as exc:
                self._reset(tp, position, exc)

    def _reset(self, tp: TopicPartition, position: int, exc: OffsetOutOfRangeError) -> None:
        target = exc.start_offset if self.auto_offset_reset == "earliest" else exc.end_offset
        skipped = max(0, target - position)
        log.warning(
            "%s-%s: offset %d is out of range [%d, %d]; %s reset to %d, %d records skipped",
            tp.topic,
            tp.partition,
            position,
            exc.start_offset,
            exc.end_offset,
            self.auto_offset_reset,
            target,
            skipped,
        )
        self._counts["skipped"] += skipped
        self._counts["resets"] += 1
        self._positions[tp] = target
