"""The durable reading queue of the device client: one per device id.

A :class:`ReadingQueue` holds a device's readings between the application and the broker's
PUBACK. :meth:`~ReadingQueue.put` stores them and returns only once they are committed;
:meth:`~ReadingQueue.take` lends the oldest pending ones to the network thread as one
:class:`Lease` (one :class:`~iotdata.Batch`); :meth:`~ReadingQueue.ack` deletes them for good,
:meth:`~ReadingQueue.release` puts them back to be taken again first.

Storage
-------
One SQLite file per device, in WAL mode, used through one connection under the queue's lock.
The connection holds the file with an exclusive lock for as long as the queue is open, so a
second queue on the same file (in this process or another) fails to open instead of sending
the same readings twice. Two tables:

* ``chunks(first_seq, readings, size, created, frame)``: one row per put (puts larger than 1,024
  readings become several rows, in the same transaction); reading ``i`` of a row has seq
  ``first_seq + i``. ``frame`` is a msgpack array ``[metric names, metric index of each
  reading, ts, values]``, zstd-compressed (level 1) when that is smaller, behind one byte that
  says which. msgpack keeps every value exact (floats bit for bit, NaN payloads and ``-0.0``
  included, which SQLite REAL would not; ``1``, ``1.0`` and ``True`` stay apart). ``size`` is the
  frame's length, what ``max_bytes`` bounds. The frame does not hold seq numbers, so ``put``
  validates (as :class:`~iotdata.Column` does) and encodes outside the lock. ``created`` is the
  clock at put time, never decreasing from one row to the next, so the readings older than
  ``max_age`` are always the oldest rows.

  Why not :mod:`iotdata.codec` frames: on a small device the codec's column encodings cost 5
  to 10 us a reading in batches of 100 (too slow to store 100,000 readings a second), ``take``
  would decode them only for the client to encode the merged batch again, and merged batches
  encode smaller than the small batches of single puts. A msgpack row costs about 1 us a reading
  to validate and encode, and 5 to 12 bytes a reading in puts of 100 (about 30 for a put of one
  reading); the codec runs once, on the batch that goes on the wire.
* ``meta``: the device id (a file of another device is refused), the schema version, and
  ``seq_limit``, a bound above every seq ever handed out (see below).

A lease is always a set of whole rows, so ``ack`` just deletes rows. When ``take`` has to lend
part of a row (a put larger than ``max_readings`` or ``max_bytes`` of the take), it first splits
the row in two (decode, slice, re-encode) in one transaction; both halves keep their seq numbers,
so a crash before or after the split loses and repeats nothing.

What is in flight is known only in memory: a frontier (rows at or above it were never lent since
the queue was opened), the released rows below it, and the leases. After a reopen everything
stored is pending again: unacknowledged readings are sent again; duplicates are possible, loss
is not, and ``(device_id, seq)`` lets the pipeline drop the duplicates.

Sequence numbers never go backwards: before handing out a seq at or above ``seq_limit``, the
queue commits a new limit (about a million higher) with ``synchronous=FULL`` (an fsync, whatever
``durability`` says); a clean :meth:`~ReadingQueue.close` lowers it to the next seq. So after a
clean close the next seq follows on, and after a crash or a power cut it jumps past every seq
that may have been used (a gap, never a seq used twice for two readings).

Memory-only queues (``path=None``) are the same code on an SQLite ``:memory:`` database.

Durability
----------
``put`` returns after its transaction is committed, i.e. written to the WAL file.

* **The process dies** (SIGKILL, OOM killer, a crash) under any ``durability``: nothing is lost.
  A committed transaction is in the operating system's page cache, and the next open replays
  the WAL. A put interrupted before returning is stored entirely or not at all.
* **Power cut or kernel crash:**

  - ``"full"``: nothing committed is lost; every commit (put, ack, split) waits for an fsync of
    the WAL, which bounds the rate of small puts by the disk's fsync rate.
  - ``"normal"`` (the default): SQLite fsyncs the WAL only before each checkpoint, which it runs
    once the WAL passes 1,000 pages (4 MiB with the default 4 KiB pages; each put writes at least
    one page, so up to about 1,000 puts). A power cut can roll back a suffix of the transactions
    committed since the last checkpoint, in practice those the OS had not yet written back (on
    Linux dirty pages are written within about 30 s). The file stays consistent; lost puts are
    lost readings, lost acks are readings sent again; seq numbers are never reused.
  - ``"off"``: SQLite never fsyncs (except the ``seq_limit`` commits). A power cut can lose
    anything the OS had not written, checkpointed rows included, and can corrupt the file.

* **Memory-only**: every unacknowledged reading is lost with the process. Seq numbers start at
  the clock in microseconds (``QueueConfig.first_seq`` overrides), so that a restarted device
  does not reuse a ``(device_id, seq)``.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import attrs
import msgpack
import zstandard

from iotdata.errors import (
    InvalidInputError,
    QueueClosedError,
    QueueFullError,
    QueueStorageError,
)
from iotdata.model import MAX_STRING_LENGTH, Batch, Column, Value, validate_device_id

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
#: Most readings in one stored row (bounds what splitting a row costs).
_CHUNK_READINGS = 1024
#: How far past the seq in use the durable ``seq_limit`` is moved at a time.
_SEQ_RESERVATION = 1 << 20
_SCHEMA = 1
_BUSY_TIMEOUT_MS = 1000
#: Least interval between two warnings about dropped or expired readings, in seconds.
_WARN_INTERVAL = 60.0
#: A blocked put looks again at least this often (readings may have expired meanwhile).
_WAIT_SLICE = 1.0
_lease_ids = itertools.count(1)  # unique in the process: a stale lease never matches a new one
_RAW, _ZSTD = b"\x00", b"\x01"  # the first byte of a frame
_local = threading.local()

_CREATE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE chunks (first_seq INTEGER PRIMARY KEY, readings INTEGER NOT NULL,"
    " size INTEGER NOT NULL, created REAL NOT NULL, frame BLOB NOT NULL)",
)
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_INSERT = "INSERT INTO chunks VALUES (?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM chunks WHERE first_seq = ?"
_SHRINK = "UPDATE chunks SET readings = ?, size = ?, frame = ? WHERE first_seq = ?"
_SCAN = "SELECT first_seq, readings, size, created FROM chunks WHERE first_seq >= ? ORDER BY 1"
_FRAMES = "SELECT first_seq, frame FROM chunks WHERE first_seq BETWEEN ? AND ?"
_TOTALS = "SELECT coalesce(sum(readings), 0), coalesce(sum(size), 0) FROM chunks"
_LAST = "SELECT first_seq + readings, created FROM chunks ORDER BY first_seq DESC LIMIT 1"


class Overflow(enum.Enum):
    """What :meth:`ReadingQueue.put` does when the new readings would exceed the bounds."""

    #: Wait until acknowledgements make room (at most ``block_timeout``, then QueueFullError).
    BLOCK = "block"
    #: Raise :class:`QueueFullError` at once.
    RAISE = "raise"
    #: Delete the oldest readings not in flight, count them as dropped and log a warning.
    DROP_OLDEST = "drop_oldest"


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{attribute.name} must be a positive int, got {value!r}")


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A number of seconds: > 0 for max_age, >= 0 for block_timeout."""
    zero_ok = attribute.name == "block_timeout"
    number = value if type(value) in (int, float) else math.nan
    if not (number >= 0 if zero_ok else number > 0):  # type: ignore[operator]
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidInputError(f"{attribute.name} must be a number of seconds {bound}: {value!r}")


def _path(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, (str, os.PathLike)) and os.fspath(value)):
        raise InvalidInputError(f"path must be a file path or None (memory-only): {value!r}")


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
    #: The seq a new queue starts at. By default 0 for a file, and the clock in microseconds
    #: for a memory-only queue, which forgets its next seq with the process: a restarted
    #: device then never reuses a (device_id, seq).
    first_seq: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
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


@attrs.frozen
class Lease:
    """Readings lent by :meth:`ReadingQueue.take`: ack them once delivered, or release them."""

    id: int
    #: The readings, columns per metric, with their seq numbers.
    batch: Batch
    #: ``len(batch)``.
    readings: int


class _Chunk(NamedTuple):
    """One stored row, without its frame. Sorts by first_seq."""

    first_seq: int
    readings: int
    size: int
    created: float

    @property
    def end(self) -> int:
        return self.first_seq + self.readings


@contextlib.contextmanager
def _storage_errors(where: str) -> Iterator[None]:
    """The one boundary where SQLite errors become iotdata errors."""
    try:
        yield
    except sqlite3.Error as exc:
        hint = " (another ReadingQueue holds it open)" if "locked" in str(exc) else ""
        raise QueueStorageError(f"reading queue {where}: {exc}{hint}") from exc


@attrs.define
class _Store:
    """The SQLite side of a queue: one connection, always used under the queue's lock."""

    conn: sqlite3.Connection
    where: str
    synchronous: str

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None, durability: str) -> _Store:
        where = ":memory:" if path is None else os.fspath(path)
        with _storage_errors(where):
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        store = cls(conn, where, durability.upper())
        try:
            with _storage_errors(where):
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                [(mode,)] = conn.execute("PRAGMA journal_mode = WAL").fetchall()
                if path is not None and mode != "wal":
                    raise QueueStorageError(f"{where}: SQLite cannot use WAL mode here ({mode})")
                conn.execute(f"PRAGMA synchronous = {store.synchronous}")
        except BaseException:
            conn.close()
            raise
        return store

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on exit, rolled back on any exception."""
        with _storage_errors(self.where):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def attach(self, device_id: str) -> dict[str, Any]:
        """Create the tables of a new queue, or check an existing file; return its meta."""
        with self.transaction() as tx:
            tables = {name for (name,) in tx.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in _CREATE:
                    tx.execute(statement)
                tx.executemany(
                    _SET_META, [("schema", _SCHEMA), ("device_id", device_id), ("seq_limit", 0)]
                )
            elif not {"meta", "chunks"} <= tables:
                raise QueueStorageError(f"{self.where} is not an iotdata reading queue")
            meta = dict(tx.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != _SCHEMA:
            raise QueueStorageError(f"{self.where}: unsupported queue schema {meta.get('schema')}")
        if meta.get("device_id") != device_id:
            raise InvalidInputError(
                f"queue file {self.where} belongs to device {meta.get('device_id')!r}, "
                f"not {device_id!r}"
            )
        return meta

    def query(self, sql: str, *args: object) -> list[Any]:
        with _storage_errors(self.where):
            return self.conn.execute(sql, args).fetchall()

    def scan(self, from_seq: int) -> Generator[_Chunk, None, None]:
        """Rows from ``from_seq`` on, oldest first, read lazily (close the iterator)."""
        with _storage_errors(self.where):
            cursor = self.conn.execute(_SCAN, (from_seq,))
            try:
                for row in cursor:
                    yield _Chunk(*row)
            finally:
                cursor.close()

    def reserve(self, seq_limit: int) -> None:
        """Commit ``seq_limit`` with an fsync, whatever the configured durability."""
        with _storage_errors(self.where):
            self.conn.execute("PRAGMA synchronous = FULL")
            try:
                with self.transaction() as tx:
                    tx.execute(_SET_META, ("seq_limit", seq_limit))
            finally:
                self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def close(self, seq_limit: int) -> None:
        """Record the exact next seq (so a clean reopen leaves no gap) and close."""
        try:
            with self.transaction() as tx:
                tx.execute(_SET_META, ("seq_limit", seq_limit))
        except QueueStorageError as exc:
            log.warning("closing %s: next seq not recorded, it will jump: %s", self.where, exc)
        finally:
            self.conn.close()


class _Part(NamedTuple):
    """The readings of one stored row, in put order: reading ``i`` has seq ``first_seq + i``."""

    names: tuple[str, ...]
    #: The metric of each reading, as an index into ``names``.
    metric_of: tuple[int, ...]
    ts: tuple[int, ...]
    values: tuple[Value, ...]

    @classmethod
    def validated(cls, readings: Sequence[tuple[str, int, Value]]) -> _Part:
        """Check ``(metric, ts, value)`` readings as :class:`~iotdata.Column` does."""
        try:
            metrics, ts, values = zip(*readings, strict=True)
            names = tuple(dict.fromkeys(metrics))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"readings must be (metric, ts, value) tuples: {exc}") from None
        for name in names[1:]:
            Column(name, (), (), ())
        column = Column(names[0], ts, values, range(len(ts)))  # values normalized, e.g. numpy
        if len(names) == 1:
            return cls(names, (0,) * len(ts), column.ts, column.values)
        position = {name: i for i, name in enumerate(names)}
        return cls(names, tuple(position[m] for m in metrics), column.ts, column.values)

    @classmethod
    def from_frame(cls, frame: bytes, where: str) -> _Part:
        try:
            body = frame[1:] if frame[:1] == _RAW else _zstd()[1].decompress(frame[1:])
            names, metric_of, ts, values = msgpack.unpackb(body, raw=False, use_list=False)
        except Exception as exc:
            raise QueueStorageError(f"reading queue {where}: corrupt row ({exc})") from exc
        return cls(names, metric_of, ts, values)

    def frame(self) -> bytes:
        body: bytes = msgpack.packb(self, use_bin_type=True)
        compressed: bytes = _zstd()[0].compress(body)
        return _ZSTD + compressed if len(compressed) < len(body) else _RAW + body

    def split(self, cut: int) -> tuple[_Part, _Part]:
        head = self._replace(
            metric_of=self.metric_of[:cut], ts=self.ts[:cut], values=self.values[:cut]
        )
        tail = self._replace(
            metric_of=self.metric_of[cut:], ts=self.ts[cut:], values=self.values[cut:]
        )
        return head, tail


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's zstd contexts (they are not thread-safe)."""
    contexts: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None
    contexts = getattr(_local, "zstd", None)
    if contexts is None:
        contexts = _local.zstd = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return contexts


def _frames(readings: Sequence[tuple[str, int, Value]]) -> list[tuple[int, bytes]]:
    """``(readings, frame)`` of each row the readings will be stored in."""
    if not isinstance(readings, Sequence) or isinstance(readings, (str, bytes)):
        raise InvalidInputError(f"readings must be a sequence of tuples, got {readings!r}")
    frames = []
    for start in range(0, len(readings), _CHUNK_READINGS):
        part = _Part.validated(readings[start : start + _CHUNK_READINGS])
        frames.append((len(part.ts), part.frame()))
    return frames


def _merge(device_id: str, parts: list[tuple[int, _Part]]) -> Batch:
    """One batch, columns per metric, of rows given as ``(first_seq, part)``, oldest first."""
    grouped: dict[str, tuple[list[int], list[Value], list[int]]] = {}
    for base, part in parts:
        columns = [grouped.setdefault(name, ([], [], [])) for name in part.names]
        if len(columns) == 1:
            columns[0][0].extend(part.ts)
            columns[0][1].extend(part.values)
            columns[0][2].extend(range(base, base + len(part.ts)))
            continue
        for seq, (metric, ts, value) in enumerate(
            zip(part.metric_of, part.ts, part.values, strict=True), base
        ):
            column = columns[metric]
            column[0].append(ts)
            column[1].append(value)
            column[2].append(seq)
    return Batch._trusted(
        device_id,
        tuple(
            Column._trusted(name, tuple(ts), tuple(values), tuple(seq))
            for name, (ts, values, seq) in grouped.items()
            if ts  # a split row may keep names it no longer uses
        ),
    )


def _cut(chunk: _Chunk, max_readings: int, max_bytes: int | None) -> int:
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


_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})
_INT_RANGE = (-(2**63), 2**64 - 1)


class _Journal:
    """The intake journal: one appended record per single-reading append, absorbed in bulk.

    A record is its length and CRC-32, then msgpack ``[seq, metric, ts, value]``. One
    ``os.write`` per record reaches the operating system before ``append`` returns, so the
    reading survives the death of the process as a committed WAL transaction does; with
    ``durability="full"`` each record is also fsynced.
    """

    def __init__(self, path: str, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.packer = msgpack.Packer()

    def write(self, payload: bytes) -> None:
        os.write(self.fd, _RECORD.pack(len(payload), zlib.crc32(payload)) + payload)
        if self.sync:
            os.fsync(self.fd)

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    @staticmethod
    def read(path: str) -> list[tuple[int, str, int, Value]]:
        """The records of a journal left by a previous run, up to the first torn one."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return []
        records, pos = [], 0
        while pos + _RECORD.size <= len(data):
            size, crc = _RECORD.unpack_from(data, pos)
            payload = data[pos + _RECORD.size : pos + _RECORD.size + size]
            if len(payload) != size or zlib.crc32(payload) != crc:
                break  # the tail of an append that never returned
            seq, metric, ts, value = msgpack.unpackb(payload, raw=False)
            records.append((seq, metric, ts, value))
            pos += _RECORD.size + size
        return records


def _replay(store: _Store, records: list[tuple[int, str, int, Value]], now: float) -> None:
    """Store the journal records newer than the stored rows (older ones were absorbed)."""
    last = store.query(_LAST)
    end = last[0][0] if last else -1
    fresh = [r for r in records if r[0] >= end]
    if not fresh:
        return
    rows = []
    for start in range(0, len(fresh), _CHUNK_READINGS):
        part = fresh[start : start + _CHUNK_READINGS]
        frame = _Part.validated([(m, ts, v) for _, m, ts, v in part]).frame()
        rows.append((part[0][0], len(part), len(frame), now, frame))
    with store.transaction() as tx:
        tx.executemany(_INSERT, rows)
    log.info("recovered %d readings from %s", len(fresh), store.where)


@attrs.define(eq=False, repr=False)
class ReadingQueue:
    """The durable queue of one device's readings. Open it with :meth:`open`.

    Thread-safe: the application puts while the client's network thread takes, acks and
    releases. A context manager; :meth:`close` may be called twice.
    """

    device_id: str
    config: QueueConfig
    _store: _Store
    _clock: Callable[[], float]
    _next_seq: int
    _seq_limit: int
    _last_created: float
    _queued: int
    _queued_bytes: int
    _cond: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    _frontier: int = attrs.field(default=0, init=False)
    _released: list[_Chunk] = attrs.field(factory=list, init=False)
    _leases: dict[int, list[_Chunk]] = attrs.field(factory=dict, init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _acknowledged: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _expired: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _last_warning: float = attrs.field(default=-math.inf, init=False)
    _journal: _Journal | None = attrs.field(default=None, init=False)
    _intake: list[tuple[str, int, Value]] = attrs.field(factory=list, init=False)
    _intake_first: int = attrs.field(default=0, init=False)
    _intake_bytes: int = attrs.field(default=0, init=False)
    _names: set[str] = attrs.field(factory=set, init=False)

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
            raise InvalidInputError(f"config must be a QueueConfig, got {config!r}")
        store = _Store.open(config.path, config.durability)
        journal_path = None if config.path is None else os.fspath(config.path) + "-intake"
        try:
            meta = store.attach(device_id)
            if journal_path is not None:
                _replay(store, _Journal.read(journal_path), clock())
            [(readings, size)] = store.query(_TOTALS)
            last = store.query(_LAST)
        except BaseException:
            store.conn.close()
            raise
        end, created = last[0] if last else (0, -math.inf)
        seq_limit = max(int(meta["seq_limit"]), end)
        first = config.first_seq
        if first is None:
            first = 0 if config.path is not None else int(clock() * 1_000_000)
        seq_limit = max(seq_limit, first)
        queue = cls(device_id, config, store, clock, seq_limit, seq_limit, created, readings, size)
        if journal_path is not None:
            queue._journal = _Journal(journal_path, sync=config.durability == "full")
            queue._journal.truncate()  # what it held is in the store now
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
        frames = _frames(readings)
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
        if journal is None or self.config.max_age is not None or not self._plain(reading):
            return self.put([reading])
        with self._cond:
            self._check_open()
            seq = self._next_seq
            payload = journal.packer.pack([seq, metric, ts, value])
            size = len(payload) + _RECORD.size
            if not self._fits(1, size):
                return self.put([reading])  # the overflow policy decides (the lock is reentrant)
            if seq + 1 > self._seq_limit:
                self._store.reserve(seq + 1 + _SEQ_RESERVATION)
                self._seq_limit = seq + 1 + _SEQ_RESERVATION
            journal.write(payload)
            if not self._intake:
                self._intake_first = seq
            self._intake.append(reading)
            self._intake_bytes += size
            self._next_seq = seq + 1
            self._queued += 1
            self._queued_bytes += size
            if len(self._intake) >= _CHUNK_READINGS:
                self._absorb()
            if self._queued - 1 == self._in_flight:  # nothing was pending: wake a wait()
                self._cond.notify_all()
            return seq

    def _plain(self, reading: tuple[str, int, Value]) -> bool:
        """A cheap version of the model's checks; False sends the reading the careful way."""
        metric, ts, value = reading
        kind = type(value)
        if type(ts) is not int or not -(2**63) <= ts < 2**63 or kind not in _PLAIN_TYPES:
            return False
        if kind is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:  # type: ignore[operator]
            return False
        if kind is str and len(value) > MAX_STRING_LENGTH:  # type: ignore[arg-type]
            return False
        if metric not in self._names:
            try:
                Column(metric, (), (), ())
            except InvalidInputError:
                return False
            if len(self._names) < 4096:
                self._names.add(metric)
        return True

    def _absorb(self) -> None:
        """Move the intake into the store as rows (the lock is held)."""
        if not self._intake:
            return
        journal = self._journal
        assert journal is not None
        rows, seq = [], self._intake_first
        created = max(self._clock(), self._last_created)
        for count, frame in _frames(self._intake):
            rows.append((seq, count, len(frame), created, frame))
            seq += count
        with self._store.transaction() as tx:
            tx.executemany(_INSERT, rows)
        self._last_created = created
        self._queued_bytes += sum(row[2] for row in rows) - self._intake_bytes
        self._intake.clear()
        self._intake_bytes = 0
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
                batch = self._load(chosen)
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
            with self._store.transaction() as tx:
                tx.executemany(_DELETE, [(c.first_seq,) for c in chunks])
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

    def wait(self, timeout: float | None = None) -> bool:
        """Block until some reading is pending (True) or ``timeout`` seconds passed (False).

        Raises:
            QueueClosedError: the queue is or gets closed.
        """
        if timeout is not None and (type(timeout) not in (int, float) or not timeout >= 0):
            raise InvalidInputError(f"timeout must be None or seconds >= 0, got {timeout!r}")
        with self._cond:
            ready = self._cond.wait_for(self._pending_or_closed, timeout)
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
        expired: list[_Chunk],
        dropped: list[_Chunk],
    ) -> int:
        first = self._next_seq
        end = first + sum(count for count, _ in frames)
        if end > self._seq_limit:
            self._store.reserve(end + _SEQ_RESERVATION)
            self._seq_limit = end + _SEQ_RESERVATION
        created = max(now, self._last_created)
        rows, seq = [], first
        for count, frame in frames:
            rows.append((seq, count, len(frame), created, frame))
            seq += count
        with self._store.transaction() as tx:
            tx.executemany(_DELETE, [(c.first_seq,) for c in expired + dropped])
            tx.executemany(_INSERT, rows)
        self._next_seq, self._last_created = end, created
        self._queued += end - first
        self._queued_bytes += sum(row[2] for row in rows)
        self._forget(expired, dropped)
        self._cond.notify_all()
        return first

    # -- removal of expired and dropped readings -------------------------------------------

    def _pending(self) -> Generator[_Chunk, None, None]:
        """Pending rows, oldest first: released ones, then those never lent. Close it."""
        yield from self._released
        yield from self._store.scan(self._frontier)

    def _plan_removal(self, now: float, count: int, size: int) -> tuple[list[_Chunk], list[_Chunk]]:
        """Pending rows that expired, and (DROP_OLDEST) those to drop for ``count``/``size``."""
        max_age, limit = self.config.max_age, self.config.max_readings
        excess = max(self._queued + count - limit, 0) if limit is not None else 0
        excess_bytes = max(self._queued_bytes + size - self.config.max_bytes, 0)
        drop = self.config.overflow is Overflow.DROP_OLDEST and excess + excess_bytes > 0
        if max_age is None and not drop:
            return [], []
        cutoff = -math.inf if max_age is None else now - max_age
        expired: list[_Chunk] = []
        dropped: list[_Chunk] = []
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
            with self._store.transaction() as tx:
                tx.executemany(_DELETE, [(c.first_seq,) for c in expired])
            self._forget(expired, [])

    def _forget(self, expired: list[_Chunk], dropped: list[_Chunk]) -> None:
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

    def _choose(self, max_readings: int, max_bytes: int | None) -> tuple[list[_Chunk], int]:
        """The rows of the next lease, and the cut of the first one when it must be split."""
        chosen: list[_Chunk] = []
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

    def _split_first(self, chunk: _Chunk, cut: int) -> tuple[Batch, _Chunk]:
        """Split the first pending row after ``cut`` readings; return the head part."""
        [(_, frame)] = self._store.query(_FRAMES, chunk.first_seq, chunk.first_seq)
        head, tail = _Part.from_frame(frame, self._store.where).split(cut)
        head_frame, tail_frame = head.frame(), tail.frame()
        taken = chunk._replace(readings=cut, size=len(head_frame))
        rest = _Chunk(chunk.first_seq + cut, chunk.readings - cut, len(tail_frame), chunk.created)
        with self._store.transaction() as tx:
            tx.execute(_SHRINK, (cut, taken.size, head_frame, chunk.first_seq))
            tx.execute(_INSERT, (*rest, tail_frame))
        self._queued_bytes += taken.size + rest.size - chunk.size
        if self._released and self._released[0] == chunk:
            self._released[0] = rest  # the taken part leaves the released list below
            self._released.insert(0, taken)
        return _merge(self.device_id, [(chunk.first_seq, head)]), taken

    def _load(self, chosen: list[_Chunk]) -> Batch:
        rows = self._store.query(_FRAMES, chosen[0].first_seq, chosen[-1].first_seq)
        frames = dict(rows)
        where = self._store.where
        parts = [(c.first_seq, _Part.from_frame(frames[c.first_seq], where)) for c in chosen]
        return _merge(self.device_id, parts)

    def _lend(self, chosen: list[_Chunk], batch: Batch) -> Lease:
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

    def _make_pending(self, chunks: list[_Chunk]) -> None:
        self._released.extend(chunks)
        self._released.sort()
        self._in_flight -= sum(c.readings for c in chunks)
        self._cond.notify_all()

    def _pending_or_closed(self) -> bool:
        return self._closed or self._queued > self._in_flight

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError(f"the reading queue of {self.device_id!r} is closed")
