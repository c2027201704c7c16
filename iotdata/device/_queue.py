"""The durable reading queue of the device client: one per device id.

A :class:`ReadingQueue` holds a device's readings between the application and the broker's
PUBACK. :meth:`~ReadingQueue.put` stores them and returns only once they are committed;
:meth:`~ReadingQueue.take` lends the oldest pending ones to the network thread as one
:class:`Lease` (one :class:`~iotdata.Batch`); :meth:`~ReadingQueue.ack` deletes them for good,
:meth:`~ReadingQueue.release` puts them back to be taken again first.

Storage
-------
One SQLite file per device, and an intake journal for single-reading appends: their layout, the
row format, how seq numbers are reserved and what a crash or a power cut can cost under each
``durability`` are in ``_queue_store.py``. This module decides what is pending, lent,
acknowledged or deleted.

A lease is always a set of whole rows, so ``ack`` just deletes rows. When ``take`` has to lend
part of a row (a put larger than ``max_readings`` or ``max_bytes`` of the take), it first splits
the row in two (decode, slice, re-encode) in one transaction; both halves keep their seq numbers,
so a crash before or after the split loses and repeats nothing.

What is in flight is known only in memory: a frontier (rows at or above it were never lent since
the queue was opened), the released rows below it, and the leases. After a reopen everything
stored is pending again: unacknowledged readings are sent again; duplicates are possible, loss
is not, and ``(device_id, seq)`` lets the pipeline drop the duplicates.

Durability
----------
``put`` returns once its transaction is committed, ``append`` once its journal record is
written: when the process dies, under any ``durability``, nothing is lost. A memory-only queue
loses every unacknowledged reading with the process; its seq numbers start at the clock in
microseconds (``QueueConfig.first_seq`` overrides), so that a restarted device does not reuse a
``(device_id, seq)``.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

import attrs

from iotdata._checks import (
    INT64_MAX,
    check_callable,
    check_instance,
    check_int,
    check_sqlite_path,
    check_text,
    check_timeout,
    optional,
)
from iotdata.device._queue_store import CHUNK_READINGS, Chunk, Journal, Store, encode_rows, merge
from iotdata.errors import InvalidInputError, QueueClosedError, QueueFullError, QueueStorageError
from iotdata.model import Batch, Value, validate_device_id

__all__ = [
    "Lease",
    "Overflow",
    "QueueClosedError",
    "QueueConfig",
    "QueueFullError",
    "QueueStats",
    "QueueStorageError",
    "ReadingQueue",
]

log = logging.getLogger("iotdata.device")

_MIB = 1024 * 1024
#: Least interval between two warnings about dropped or expired readings, in seconds.
_WARN_INTERVAL = 60.0
#: A blocked put looks again at least this often (readings may have expired meanwhile).
_WAIT_SLICE = 1.0
_lease_ids = itertools.count(1)  # unique in the process: a stale lease never matches a new one


class Overflow(enum.Enum):
    """What :meth:`ReadingQueue.put` does when the new readings would exceed the bounds."""

    #: Wait until acknowledgements make room (at most ``block_timeout``, then QueueFullError).
    BLOCK = "block"
    #: Raise :class:`QueueFullError` at once.
    RAISE = "raise"
    #: Delete the oldest readings not in flight, count them as dropped and log a warning.
    DROP_OLDEST = "drop_oldest"


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_limit(attribute.name, value)


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A number of seconds: > 0 for max_age, >= 0 for block_timeout."""
    zero_ok = attribute.name == "block_timeout"
    number = value if type(value) in (int, float) else math.nan
    if not (number >= 0 if zero_ok else number > 0):  # type: ignore[operator]
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidInputError(f"{attribute.name} must be a number of seconds {bound}: {value!r}")


def _path(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_sqlite_path("path", value)


def _member_of(choices: Any) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise InvalidInputError(f"{attribute.name} must be one of {list(choices)}: {value!r}")

    return check


@attrs.frozen(kw_only=True)
class QueueConfig:
    """Where and how much a :class:`ReadingQueue` stores. See the module docs for durability."""

    #: The SQLite file of the queue (one per device id); None keeps readings in memory only.
    path: str | os.PathLike[str] | None = attrs.field(default=None, validator=_path)
    #: Bound on the stored encoded bytes (in-flight readings included).
    max_bytes: int = attrs.field(default=64 * _MIB, validator=_positive_int)
    #: Bound on the number of stored readings, if any.
    max_readings: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive_int)
    )
    #: Unacknowledged readings older than this (seconds) are deleted and counted as expired.
    max_age: float | None = attrs.field(default=None, validator=attrs.validators.optional(_seconds))
    overflow: Overflow = attrs.field(default=Overflow.BLOCK, validator=_member_of(list(Overflow)))
    #: Longest wait of a blocked put (``Overflow.BLOCK``), in seconds; None waits for ever.
    block_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_seconds)
    )
    #: SQLite ``synchronous`` in WAL mode: what a power cut can cost (see the module docs).
    durability: Literal["full", "normal", "off"] = attrs.field(
        default="normal", validator=_member_of(("full", "normal", "off"))
    )
    #: The seq a new queue starts at (0 to 2**63-1). By default 0 for a file, and the clock in
    #: microseconds for a memory-only queue, which forgets its next seq with the process: a
    #: restarted device then never reuses a (device_id, seq).
    first_seq: int | None = attrs.field(
        default=None, validator=optional(check_int, minimum=0, maximum=INT64_MAX)
    )


@attrs.frozen
class QueueStats:
    """A snapshot of a queue. Counters of events (acknowledged, dropped, expired) start at 0 when
    the queue is opened; dropped and expired readings are never sent."""

    #: Readings stored, in flight included.
    queued: int
    #: Encoded bytes stored (what ``max_bytes`` bounds).
    queued_bytes: int
    #: Readings lent by take and neither acknowledged nor released.
    in_flight: int
    acknowledged: int
    #: Readings deleted to make room (``Overflow.DROP_OLDEST``).
    dropped: int
    #: Readings deleted because they were older than ``max_age``.
    expired: int
    #: The seq the next reading will get.
    next_seq: int
    #: Readings set aside because they could not be sent (see :meth:`ReadingQueue.quarantine`),
    #: stored ones of earlier runs included.
    quarantined: int = 0


@attrs.frozen
class Lease:
    """Readings lent by :meth:`ReadingQueue.take`: ack them once delivered, or release them."""

    id: int
    #: The readings, columns per metric, with their seq numbers.
    batch: Batch
    #: ``len(batch)``.
    readings: int


def _cut(chunk: Chunk, max_readings: int, max_bytes: int | None) -> int:
    """How many readings of ``chunk`` (the first of a lease) the lease may hold."""
    cut = min(chunk.readings, max_readings)
    if max_bytes is not None and chunk.size > max_bytes:
        cut = min(cut, max(1, chunk.readings * max_bytes // chunk.size))
    return cut


def _check_limit(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")


def _check_lease(lease: object) -> None:
    if not isinstance(lease, Lease):
        raise InvalidInputError(f"expected a Lease from ReadingQueue.take, got {lease!r}")


@attrs.define(eq=False, repr=False)
class ReadingQueue:
    """The durable queue of one device's readings. Open it with :meth:`open`.

    Thread-safe: the application puts while the client's network thread takes, acks and
    releases. A context manager; :meth:`close` may be called twice.
    """

    device_id: str
    config: QueueConfig
    _store: Store
    _clock: Callable[[], float]
    _next_seq: int
    _last_created: float
    _queued: int
    _queued_bytes: int
    _cond: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    _frontier: int = attrs.field(default=0, init=False)
    _released: list[Chunk] = attrs.field(factory=list, init=False)
    _leases: dict[int, list[Chunk]] = attrs.field(factory=dict, init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _acknowledged: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _expired: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _last_warning: float = attrs.field(default=-math.inf, init=False)
    _journal: Journal | None = attrs.field(default=None, init=False)
    _quarantined: int = attrs.field(default=0, init=False)

    @classmethod
    def open(
        cls,
        device_id: str,
        config: QueueConfig = QueueConfig(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> ReadingQueue:
        """Open (or create) the queue of ``device_id``; everything stored is pending again.

        ``clock`` (seconds, wall time) dates readings for ``max_age``.

        Raises:
            InvalidInputError: a bad device id or config, or a file of another device.
            QueueStorageError: the file is in use by another queue, or not a queue file.
        """
        validate_device_id(device_id)
        if not isinstance(config, QueueConfig):
            raise InvalidInputError(f"config must be a QueueConfig, got {config!r:.60}")
        check_callable("clock", clock)
        store = Store.open(config.path, config.durability, device_id, clock)
        try:
            readings, size = store.totals()
            end, created = store.last() or (0, -math.inf)
        except BaseException:
            store.conn.close()
            raise
        first = config.first_seq
        if first is None:
            first = 0 if config.path is not None else int(clock() * 1_000_000)
        store.seq_limit = next_seq = max(store.seq_limit, end, first)
        queue = cls(device_id, config, store, clock, next_seq, created, readings, size)
        queue._journal = store.open_journal()
        queue._quarantined = len(store.quarantined())
        return queue

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._queued} readings"
        return f"<ReadingQueue {self.device_id!r} at {self._store.where}: {state}>"

    def __enter__(self) -> ReadingQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def put(self, readings: Sequence[tuple[str, int, Value]]) -> int:
        """Store ``(metric, ts, value)`` readings, with consecutive seq numbers in input order.

        Returns the seq of the first reading (the next seq when ``readings`` is empty), once the
        readings are committed. Applies ``config.overflow`` when they do not fit.

        Raises:
            InvalidInputError: a bad reading, or more than the queue can ever hold.
            QueueFullError: no room (``RAISE``, a ``BLOCK`` timeout, or all in flight).
            QueueClosedError: the queue is or gets closed.
        """
        frames = encode_rows(readings)
        count, size = len(readings), sum(len(frame) for _, frame in frames)
        self._check_bounds(count, size)
        deadline = self._deadline()
        with self._cond:
            while True:
                self._check_open()
                self._absorb()  # rows go into the store in seq order
                if not frames:
                    return self._next_seq
                now = self._clock()
                expired, dropped = self._plan_removal(now, count, size)
                removed = expired + dropped
                freed, freed_bytes = sum(c.readings for c in removed), sum(c.size for c in removed)
                if self._fits(count - freed, size - freed_bytes):
                    return self._insert(frames, now, expired, dropped)
                self._wait_for_room(deadline, count, size)

    def append(self, metric: str, ts: int, value: Value) -> int:
        """Store one reading; returns its seq. The fast path of ``put([(metric, ts, value)])``.

        The reading is written to an append-only intake journal (one ``os.write``, as durable
        against the death of the process as a committed transaction) and moved into the SQLite
        store in bulk: when a thousand have gathered, and before anything reads the store.
        Readings this path cannot take simply (memory-only queues, ``max_age``, a full queue,
        values to normalise or refuse) go through :meth:`put`, with the same errors.
        """
        journal = self._journal
        reading = (metric, ts, value)
        if journal is None or self.config.max_age is not None or not journal.plain(reading):
            return self.put([reading])
        with self._cond:
            self._check_open()
            seq = self._next_seq
            record = journal.record(seq, reading)
            if not self._fits(1, len(record)):
                return self.put([reading])  # the overflow policy decides (the lock is reentrant)
            self._store.cover(seq + 1)
            journal.append(seq, reading, record)
            self._next_seq = seq + 1
            self._queued += 1
            self._queued_bytes += len(record)
            if len(journal.readings) >= CHUNK_READINGS:
                self._absorb()
            if self._queued - 1 == self._in_flight:  # nothing was pending: wake a wait()
                self._cond.notify_all()
            return seq

    def _absorb(self) -> None:
        """Move the journal's readings into the store as rows (the lock is held)."""
        journal = self._journal
        if journal is None or not journal.readings:
            return
        created = max(self._clock(), self._last_created)
        stored = self._store.insert(journal.first_seq, encode_rows(journal.readings), created)
        self._last_created = created
        self._queued_bytes += stored - journal.size
        journal.truncate()

    def take(self, max_readings: int, *, max_bytes: int | None = None) -> Lease | None:
        """Lend the oldest pending readings as one batch; None when nothing is pending.

        A lease holds whole puts, oldest first, up to ``max_readings`` readings and ``max_bytes``
        stored bytes, and at least one reading: a put too large for one lease is split.
        """
        _check_limit("max_readings", max_readings)
        if max_bytes is not None:
            _check_limit("max_bytes", max_bytes)
        with self._cond:
            self._check_open()
            self._absorb()
            self._expire(self._clock())
            chosen, cut = self._choose(max_readings, max_bytes)
            if not chosen:
                return None
            if cut:
                batch, taken = self._split_first(chosen[0], cut)
                chosen = [taken]
            else:
                batch = merge(self.device_id, self._store.load(chosen))
            return self._lend(chosen, batch)

    def ack(self, lease: Lease) -> None:
        """Delete the readings of ``lease`` for good.

        A no-op for a lease already acknowledged or released, unknown here, or lent before the
        queue was closed (its readings stay stored and are taken again after a reopen).
        """
        _check_lease(lease)
        with self._cond:
            chunks = self._leases.get(lease.id)
            if chunks is None:
                return
            self._store.delete(chunks)
            del self._leases[lease.id]
            readings = sum(c.readings for c in chunks)
            self._in_flight -= readings
            self._acknowledged += readings
            self._queued -= readings
            self._queued_bytes -= sum(c.size for c in chunks)
            self._cond.notify_all()

    def release(self, lease: Lease) -> None:
        """Make the readings of ``lease`` pending again; they are taken again first."""
        _check_lease(lease)
        with self._cond:
            chunks = self._leases.pop(lease.id, None)
            if chunks:
                self._make_pending(chunks)

    def release_all(self) -> None:
        """Make every lent reading pending again (after the connection was lost)."""
        with self._cond:
            chunks = [chunk for lent in self._leases.values() for chunk in lent]
            self._leases.clear()
            if chunks:
                self._make_pending(chunks)

    def quarantine(self, batch: Batch, reason: str) -> None:
        """Set the readings of ``batch`` (lent in a lease) aside in the ``quarantine`` table.

        For readings that can never be sent (one alone is over the broker's packet limit): they
        are kept, counted in :attr:`QueueStats.quarantined` and listed by :meth:`quarantined`,
        and leave the queue when their lease is acknowledged, so they never block the readings
        behind them. Quarantining the same seq twice keeps one copy.
        """
        check_instance("batch", batch, Batch)
        check_text("reason", reason, empty=True)
        rows = [
            (seq, column.metric, ts, value)
            for column in batch.columns
            for ts, value, seq in zip(column.ts, column.values, column.seq, strict=True)
        ]
        with self._cond:
            self._check_open()
            self._store.quarantine(rows, reason)
            self._quarantined = len(self._store.quarantined())

    def quarantined(self) -> list[tuple[int, str, int, Value, str]]:
        """The quarantined readings, oldest seq first: ``(seq, metric, ts, value, reason)``."""
        with self._cond:
            self._check_open()
            return self._store.quarantined()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until some reading is pending (True) or ``timeout`` seconds passed (False).

        Raises:
            QueueClosedError: the queue is or gets closed.
        """
        wait = check_timeout("timeout", timeout)
        with self._cond:
            ready = self._cond.wait_for(self._pending_or_closed, wait)
            self._check_open()
            return ready

    def statistics(self) -> QueueStats:
        """A snapshot of the queue's counters."""
        with self._cond:
            return QueueStats(
                queued=self._queued,
                queued_bytes=self._queued_bytes,
                in_flight=self._in_flight,
                acknowledged=self._acknowledged,
                dropped=self._dropped,
                expired=self._expired,
                next_seq=self._next_seq,
                quarantined=self._quarantined,
            )

    def close(self) -> None:
        """Close the file. Blocked and later puts, takes and waits raise
        :class:`QueueClosedError`; acks and releases do nothing. Readings still in flight stay
        stored and are pending at the next open.
        """
        with self._cond:
            if self._closed:
                return
            self._absorb()
            self._closed = True
            self._leases.clear()
            self._in_flight = 0
            self._cond.notify_all()
            self._store.close(self._next_seq)
            if self._journal is not None:
                self._journal.close()

    # -- put ------------------------------------------------------------------------------

    def _check_bounds(self, count: int, size: int) -> None:
        limit = self.config.max_readings
        if size > self.config.max_bytes or (limit is not None and count > limit):
            raise InvalidInputError(
                f"a put of {count} readings ({size} bytes encoded) can never fit in a queue "
                f"bounded to max_bytes={self.config.max_bytes}, max_readings={limit}"
            )

    def _deadline(self) -> float | None:
        timeout = self.config.block_timeout
        return None if timeout is None else time.monotonic() + timeout

    def _fits(self, count: int, size: int) -> bool:
        limit = self.config.max_readings
        if limit is not None and self._queued + count > limit:
            return False
        return self._queued_bytes + size <= self.config.max_bytes

    def _wait_for_room(self, deadline: float | None, count: int, size: int) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if self.config.overflow is not Overflow.BLOCK or (remaining is not None and remaining <= 0):
            raise QueueFullError(
                f"reading queue of {self.device_id!r} is full: {self._queued} readings, "
                f"{self._queued_bytes} bytes stored ({self._in_flight} in flight); "
                f"no room for {count} more ({size} bytes)"
            )
        self._cond.wait(_WAIT_SLICE if remaining is None else min(remaining, _WAIT_SLICE))

    def _insert(
        self,
        frames: list[tuple[int, bytes]],
        now: float,
        expired: list[Chunk],
        dropped: list[Chunk],
    ) -> int:
        first = self._next_seq
        end = first + sum(count for count, _ in frames)
        self._store.cover(end)
        created = max(now, self._last_created)
        stored = self._store.insert(first, frames, created, gone=expired + dropped)
        self._next_seq, self._last_created = end, created
        self._queued += end - first
        self._queued_bytes += stored
        self._forget(expired, dropped)
        self._cond.notify_all()
        return first

    # -- removal of expired and dropped readings -------------------------------------------

    def _pending(self) -> Generator[Chunk, None, None]:
        """Pending rows, oldest first: released ones, then those never lent. Close it."""
        yield from self._released
        yield from self._store.scan(self._frontier)

    def _plan_removal(self, now: float, count: int, size: int) -> tuple[list[Chunk], list[Chunk]]:
        """Pending rows that expired, and (DROP_OLDEST) those to drop for ``count``/``size``."""
        max_age, limit = self.config.max_age, self.config.max_readings
        excess = max(self._queued + count - limit, 0) if limit is not None else 0
        excess_bytes = max(self._queued_bytes + size - self.config.max_bytes, 0)
        drop = self.config.overflow is Overflow.DROP_OLDEST and excess + excess_bytes > 0
        if max_age is None and not drop:
            return [], []
        cutoff = -math.inf if max_age is None else now - max_age
        expired: list[Chunk] = []
        dropped: list[Chunk] = []
        with contextlib.closing(self._pending()) as pending:
            for chunk in pending:
                if chunk.created < cutoff:
                    expired.append(chunk)
                elif drop and (excess > 0 or excess_bytes > 0):
                    dropped.append(chunk)
                else:
                    break
                excess, excess_bytes = excess - chunk.readings, excess_bytes - chunk.size
        return expired, dropped

    def _expire(self, now: float) -> None:
        expired, _ = self._plan_removal(now, 0, 0)
        if expired:
            self._store.delete(expired)
            self._forget(expired, [])

    def _forget(self, expired: list[Chunk], dropped: list[Chunk]) -> None:
        """Account for deleted pending rows."""
        if not expired and not dropped:
            return
        gone = {c.first_seq for c in expired + dropped}
        if self._released:
            self._released = [c for c in self._released if c.first_seq not in gone]
        self._expired += sum(c.readings for c in expired)
        self._dropped += sum(c.readings for c in dropped)
        self._queued -= sum(c.readings for c in expired + dropped)
        self._queued_bytes -= sum(c.size for c in expired + dropped)
        self._cond.notify_all()
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            log.warning(
                "reading queue of %s deleted unacknowledged readings: %d dropped to make room, "
                "%d expired (max_age=%s s) since it was opened",
                self.device_id,
                self._dropped,
                self._expired,
                self.config.max_age,
            )

    # -- take -----------------------------------------------------------------------------

    def _choose(self, max_readings: int, max_bytes: int | None) -> tuple[list[Chunk], int]:
        """The rows of the next lease, and the cut of the first one when it must be split."""
        chosen: list[Chunk] = []
        readings = size = 0
        with contextlib.closing(self._pending()) as pending:
            for chunk in pending:
                if not chosen:
                    cut = _cut(chunk, max_readings, max_bytes)
                    if cut < chunk.readings:
                        return [chunk], cut
                elif readings + chunk.readings > max_readings or (
                    max_bytes is not None and size + chunk.size > max_bytes
                ):
                    break
                chosen.append(chunk)
                readings, size = readings + chunk.readings, size + chunk.size
                if readings == max_readings:
                    break
        return chosen, 0

    def _split_first(self, chunk: Chunk, cut: int) -> tuple[Batch, Chunk]:
        """Split the first pending row after ``cut`` readings; return the head part."""
        head, taken, rest = self._store.split(chunk, cut)
        self._queued_bytes += taken.size + rest.size - chunk.size
        if self._released and self._released[0] == chunk:
            self._released[0] = rest  # the taken part leaves the released list below
            self._released.insert(0, taken)
        return merge(self.device_id, [(chunk.first_seq, head)]), taken

    def _lend(self, chosen: list[Chunk], batch: Batch) -> Lease:
        released = 0
        while released < len(chosen) and released < len(self._released):
            if self._released[released] != chosen[released]:
                break
            released += 1
        del self._released[:released]
        if released < len(chosen):
            self._frontier = max(self._frontier, chosen[-1].end)
        lease = Lease(next(_lease_ids), batch, len(batch))
        self._leases[lease.id] = chosen
        self._in_flight += lease.readings
        return lease

    def _make_pending(self, chunks: list[Chunk]) -> None:
        self._released.extend(chunks)
        self._released.sort()
        self._in_flight -= sum(c.readings for c in chunks)
        self._cond.notify_all()

    def _pending_or_closed(self) -> bool:
        return self._closed or self._queued > self._in_flight

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError(f"the reading queue of {self.device_id!r} is closed")
