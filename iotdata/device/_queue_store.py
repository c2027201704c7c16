"""The storage layer of the reading queue: the SQLite file, its row format, the intake journal.

Plain storage and encoding: which rows are pending, lent or acknowledged is the business of
:class:`~iotdata.device.ReadingQueue` (``_queue.py``), which calls everything here under its lock.

The SQLite file
---------------
:class:`Store` is one SQLite connection to one file per device, in WAL mode. It holds the file
with an exclusive lock for as long as the queue is open, so a second queue on the same file (in
this process or another) fails to open instead of sending the same readings twice. Memory-only
queues (``path=None``) are the same code on an SQLite ``:memory:`` database. Two tables:

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
  ``seq_limit``, a bound above every seq ever handed out.
* ``quarantine(seq, metric, ts, value, reason)``, made on first use: readings the client could
  not send at all (one reading alone over the broker's packet limit), kept for inspection
  instead of blocking the queue; ``value`` is msgpack, keyed by seq so storing one twice (a
  crash between quarantine and ack) keeps one row.

Sequence numbers never go backwards: before a seq at or above ``seq_limit`` is handed out,
:meth:`Store.cover` commits a new limit (about a million higher) with ``synchronous=FULL`` (an
fsync, whatever ``durability`` says); a clean :meth:`Store.close` lowers it to the next seq. So
after a clean close the next seq follows on, and after a crash or a power cut it jumps past
every seq that may have been used (a gap, never a seq used twice for two readings).

The intake journal
------------------
:class:`Journal` (the file next to the queue's, ``-intake`` appended to its name) takes the
single-reading appends: a record is its length and CRC-32, then msgpack ``[seq, metric, ts,
value]``. The readings it holds are moved into the store in bulk, and the records a crash left
behind are stored again when the queue is next opened (:meth:`Store.replay`).

Durability
----------
``put`` returns after its transaction is committed, i.e. written to the WAL file; ``append``
after one ``os.write`` of its journal record.

* **The process dies** (SIGKILL, OOM killer, a crash) under any ``durability``: nothing is lost.
  A committed transaction (or a written record) is in the operating system's page cache, and the
  next open replays the WAL (and the journal). A put interrupted before returning is stored
  entirely or not at all.
* **Power cut or kernel crash:**

  - ``"full"``: nothing committed is lost; every commit (put, ack, split) waits for an fsync of
    the WAL, and every journal record for an fsync of the journal, which bounds the rate of
    small puts by the disk's fsync rate.
  - ``"normal"`` (the default): SQLite fsyncs the WAL only before each checkpoint, which it runs
    once the WAL passes 1,000 pages (4 MiB with the default 4 KiB pages; each put writes at least
    one page, so up to about 1,000 puts). A power cut can roll back a suffix of the transactions
    committed since the last checkpoint, in practice those the OS had not yet written back (on
    Linux dirty pages are written within about 30 s). The file stays consistent; lost puts are
    lost readings, lost acks are readings sent again; seq numbers are never reused.
  - ``"off"``: SQLite never fsyncs (except the ``seq_limit`` commits). A power cut can lose
    anything the OS had not written, checkpointed rows included, and can corrupt the file.

* **Memory-only**: every unacknowledged reading is lost with the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, NamedTuple

import attrs
import msgpack
import zstandard

from iotdata.errors import InvalidInputError, QueueStorageError
from iotdata.model import MAX_STRING_LENGTH, Batch, Column, Value

__all__ = ["CHUNK_READINGS", "Chunk", "Journal", "Part", "Store", "encode_rows", "merge"]

log = logging.getLogger("iotdata.device")

#: Most readings in one stored row (bounds what splitting a row costs).
CHUNK_READINGS = 1024
#: How far past the seq in use the durable ``seq_limit`` is moved at a time.
_SEQ_RESERVATION = 1 << 20
_SCHEMA = 1
_BUSY_TIMEOUT_MS = 1000
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
_QUARANTINE = (
    "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY, metric TEXT NOT NULL,"
    " ts INTEGER NOT NULL, value BLOB NOT NULL, reason TEXT NOT NULL)"
)
_QUARANTINE_PUT = "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?)"
_QUARANTINE_READ = "SELECT seq, metric, ts, value, reason FROM quarantine ORDER BY seq"

_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})
_INT_RANGE = (-(2**63), 2**64 - 1)


class Chunk(NamedTuple):
    """One stored row, without its frame. Sorts by first_seq."""

    first_seq: int
    readings: int
    size: int
    created: float

    @property
    def end(self) -> int:
        return self.first_seq + self.readings


# ---------------------------------------------------------------------------------- rows


class Part(NamedTuple):
    """The readings of one stored row, in put order: reading ``i`` has seq ``first_seq + i``."""

    names: tuple[str, ...]
    #: The metric of each reading, as an index into ``names``.
    metric_of: tuple[int, ...]
    ts: tuple[int, ...]
    values: tuple[Value, ...]

    @classmethod
    def validated(cls, readings: Sequence[tuple[str, int, Value]]) -> Part:
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
    def from_frame(cls, frame: bytes, where: str) -> Part:
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

    def split(self, cut: int) -> tuple[Part, Part]:
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


def encode_rows(readings: Sequence[tuple[str, int, Value]]) -> list[tuple[int, bytes]]:
    """``(readings, frame)`` of each row the readings will be stored in."""
    if not isinstance(readings, Sequence) or isinstance(readings, (str, bytes)):
        raise InvalidInputError(f"readings must be a sequence of tuples, got {readings!r}")
    frames = []
    for start in range(0, len(readings), CHUNK_READINGS):
        part = Part.validated(readings[start : start + CHUNK_READINGS])
        frames.append((len(part.ts), part.frame()))
    return frames


def merge(device_id: str, parts: list[tuple[int, Part]]) -> Batch:
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


# ---------------------------------------------------------------------------------- the file


@contextlib.contextmanager
def _storage_errors(where: str) -> Iterator[None]:
    """The one boundary where SQLite errors become iotdata errors."""
    try:
        yield
    except sqlite3.Error as exc:
        hint = " (another ReadingQueue holds it open)" if "locked" in str(exc) else ""
        raise QueueStorageError(f"reading queue {where}: {exc}{hint}") from exc


@attrs.define
class Store:
    """The SQLite side of a queue: one connection, always used under the queue's lock."""

    conn: sqlite3.Connection
    where: str
    synchronous: str
    #: The intake journal's file; None for a memory-only store.
    journal_path: str | None
    #: Seqs at or above it are handed out only once it has been raised (:meth:`cover`).
    seq_limit: int = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None,
        durability: str,
        device_id: str,
        clock: Callable[[], float],
    ) -> Store:
        """Open (or create) the file of ``device_id``'s queue, and store what its intake journal
        held (dated by ``clock``)."""
        where = ":memory:" if path is None else os.fspath(path)
        journal = None if path is None else where + "-intake"
        with _storage_errors(where):
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        store = cls(conn, where, durability.upper(), journal)
        try:
            with _storage_errors(where):
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                [(mode,)] = conn.execute("PRAGMA journal_mode = WAL").fetchall()
                if path is not None and mode != "wal":
                    raise QueueStorageError(f"{where}: SQLite cannot use WAL mode here ({mode})")
                conn.execute(f"PRAGMA synchronous = {store.synchronous}")
            store.attach(device_id)
            if journal is not None:
                store.replay(Journal.read(journal), clock())
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

    def attach(self, device_id: str) -> None:
        """Create the tables of a new queue, or check an existing file; read its seq_limit."""
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
        self.seq_limit = int(meta["seq_limit"])

    def open_journal(self) -> Journal | None:
        """The intake journal, emptied (what it held is stored now); None when memory-only."""
        if self.journal_path is None:
            return None
        journal = Journal.open(self.journal_path, sync=self.synchronous == "FULL")
        journal.truncate()
        return journal

    def query(self, sql: str, *args: object) -> list[Any]:
        with _storage_errors(self.where):
            return self.conn.execute(sql, args).fetchall()

    def totals(self) -> tuple[int, int]:
        """How many readings, and how many frame bytes, are stored."""
        [(readings, size)] = self.query(_TOTALS)
        return readings, size

    def last(self) -> tuple[int, float] | None:
        """The end seq and ``created`` of the newest row; None when there is none."""
        last = self.query(_LAST)
        return (last[0][0], last[0][1]) if last else None

    def scan(self, from_seq: int) -> Generator[Chunk, None, None]:
        """Rows from ``from_seq`` on, oldest first, read lazily (close the iterator)."""
        with _storage_errors(self.where):
            cursor = self.conn.execute(_SCAN, (from_seq,))
            try:
                for row in cursor:
                    yield Chunk(*row)
            finally:
                cursor.close()

    def load(self, chunks: list[Chunk]) -> list[tuple[int, Part]]:
        """``(first_seq, part)`` of consecutive stored rows."""
        frames = dict(self.query(_FRAMES, chunks[0].first_seq, chunks[-1].first_seq))
        return [(c.first_seq, Part.from_frame(frames[c.first_seq], self.where)) for c in chunks]

    def insert(
        self,
        first_seq: int,
        frames: list[tuple[int, bytes]],
        created: float,
        *,
        gone: Sequence[Chunk] = (),
    ) -> int:
        """Store ``frames`` from ``first_seq`` on and delete the rows ``gone``, in one
        transaction; return the bytes stored."""
        rows, seq = [], first_seq
        for count, frame in frames:
            rows.append((seq, count, len(frame), created, frame))
            seq += count
        with self.transaction() as tx:
            tx.executemany(_DELETE, [(c.first_seq,) for c in gone])
            tx.executemany(_INSERT, rows)
        return sum(row[2] for row in rows)

    def delete(self, chunks: list[Chunk]) -> None:
        """Delete whole rows, in one transaction."""
        with self.transaction() as tx:
            tx.executemany(_DELETE, [(c.first_seq,) for c in chunks])

    def split(self, chunk: Chunk, cut: int) -> tuple[Part, Chunk, Chunk]:
        """Split a row after ``cut`` readings: the head's readings, and the two rows."""
        [(_, frame)] = self.query(_FRAMES, chunk.first_seq, chunk.first_seq)
        head, tail = Part.from_frame(frame, self.where).split(cut)
        head_frame, tail_frame = head.frame(), tail.frame()
        taken = chunk._replace(readings=cut, size=len(head_frame))
        rest = Chunk(chunk.first_seq + cut, chunk.readings - cut, len(tail_frame), chunk.created)
        with self.transaction() as tx:
            tx.execute(_SHRINK, (cut, taken.size, head_frame, chunk.first_seq))
            tx.execute(_INSERT, (*rest, tail_frame))
        return head, taken, rest

    def replay(self, records: list[tuple[int, str, int, Value]], now: float) -> None:
        """Store the journal records newer than the stored rows (older ones were absorbed)."""
        last = self.last()
        end = last[0] if last else -1
        fresh = [r for r in records if r[0] >= end]
        if not fresh:
            return
        rows = []
        for start in range(0, len(fresh), CHUNK_READINGS):
            part = fresh[start : start + CHUNK_READINGS]
            frame = Part.validated([(m, ts, v) for _, m, ts, v in part]).frame()
            rows.append((part[0][0], len(part), len(frame), now, frame))
        with self.transaction() as tx:
            tx.executemany(_INSERT, rows)
        log.info("recovered %d readings from %s", len(fresh), self.where)

    def quarantine(self, readings: Sequence[tuple[int, str, int, Value]], reason: str) -> None:
        """Keep ``(seq, metric, ts, value)`` readings aside, with the reason (one transaction)."""
        rows = [(seq, m, ts, msgpack.packb(v), reason) for seq, m, ts, v in readings]
        with self.transaction() as tx:
            tx.execute(_QUARANTINE)
            tx.executemany(_QUARANTINE_PUT, rows)

    def quarantined(self) -> list[tuple[int, str, int, Value, str]]:
        """The quarantined readings, by seq: ``(seq, metric, ts, value, reason)``."""
        with _storage_errors(self.where):
            self.conn.execute(_QUARANTINE)
            rows = self.conn.execute(_QUARANTINE_READ).fetchall()
        return [(seq, m, ts, msgpack.unpackb(v), why) for seq, m, ts, v, why in rows]

    def cover(self, end: int) -> None:
        """Before seqs up to ``end`` (excluded) are handed out: raise seq_limit past them."""
        if end > self.seq_limit:
            self.reserve(end + _SEQ_RESERVATION)

    def reserve(self, seq_limit: int) -> None:
        """Commit ``seq_limit`` with an fsync, whatever the configured durability."""
        with _storage_errors(self.where):
            self.conn.execute("PRAGMA synchronous = FULL")
            try:
                with self.transaction() as tx:
                    tx.execute(_SET_META, ("seq_limit", seq_limit))
            finally:
                self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        self.seq_limit = seq_limit

    def close(self, seq_limit: int) -> None:
        """Record the exact next seq (so a clean reopen leaves no gap) and close."""
        try:
            with self.transaction() as tx:
                tx.execute(_SET_META, ("seq_limit", seq_limit))
        except QueueStorageError as exc:
            log.warning("closing %s: next seq not recorded, it will jump: %s", self.where, exc)
        finally:
            self.conn.close()


# ---------------------------------------------------------------------------------- the journal


@attrs.define
class Journal:
    """The intake journal, and the readings appended to it since the store last absorbed them.

    One ``os.write`` per record reaches the operating system before ``append`` returns, so the
    reading survives the death of the process as a committed WAL transaction does; with
    ``sync`` (``durability="full"``) each record is also fsynced.
    """

    path: str
    sync: bool
    fd: int
    packer: msgpack.Packer = attrs.field(factory=msgpack.Packer)
    #: The readings of the records since the last :meth:`truncate`, and their bytes.
    readings: list[tuple[str, int, Value]] = attrs.field(factory=list)
    first_seq: int = 0
    size: int = 0
    #: Metric names known to be valid (a bounded cache).
    names: set[str] = attrs.field(factory=set)

    @classmethod
    def open(cls, path: str, *, sync: bool) -> Journal:
        return cls(path, sync, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))

    def plain(self, reading: tuple[str, int, Value]) -> bool:
        """A cheap version of the model's checks; False sends the reading the careful way."""
        metric, ts, value = reading
        kind = type(value)
        if type(ts) is not int or not -(2**63) <= ts < 2**63 or kind not in _PLAIN_TYPES:
            return False
        if type(metric) is not str:
            return False
        if kind is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:  # type: ignore[operator]
            return False
        if kind is str and (len(value) > MAX_STRING_LENGTH or not value.isascii()):  # type: ignore[arg-type,union-attr]
            return False
        if metric not in self.names:
            try:
                Column(metric, (), (), ())
            except InvalidInputError:
                return False
            if len(self.names) < 4096:
                self.names.add(metric)
        return True

    def record(self, seq: int, reading: tuple[str, int, Value]) -> bytes:
        """The record of reading ``seq``, header included."""
        payload: bytes = self.packer.pack([seq, *reading])
        return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    def append(self, seq: int, reading: tuple[str, int, Value], record: bytes) -> None:
        """Write the ``record`` of reading ``seq``."""
        os.write(self.fd, record)
        if self.sync:
            os.fsync(self.fd)
        if not self.readings:
            self.first_seq = seq
        self.readings.append(reading)
        self.size += len(record)

    def truncate(self) -> None:
        """Forget the records: the store has them now."""
        os.ftruncate(self.fd, 0)
        self.readings.clear()
        self.size = 0

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
