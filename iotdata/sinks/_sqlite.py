"""The SQLite sink: the embedded default, one file, the same tables and keys as PostgreSQL.

The file is in WAL mode, so other processes read it while the writer writes. Every flush is one
``BEGIN IMMEDIATE`` transaction run on the writer's own thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, repeat
from typing import Any, Literal, TypeVar

import attrs

from iotdata._checks import check_sqlite_path
from iotdata.errors import InvalidInputError
from iotdata.sinks import _settings as valid
from iotdata.sinks._errors import (
    SinkBackpressureError,
    SinkError,
    SinkFatalError,
    SinkRetriableError,
)
from iotdata.sinks._records import PendingRecords, ReadingColumn, ValueKind
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._sql import (
    AGGREGATE_COLUMNS,
    AGGREGATE_EXTRA,
    AGGREGATE_KEY,
    ALERT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    READING_COLUMNS,
    VALUE_COLUMN,
    aggregate_rows,
    alert_rows,
    check_prefix,
    dead_letter_rows,
    reading_rows,
)
from iotdata.sinks._validate import RowLimits
from iotdata.sinks._writer import BufferedWriter, Opening

__all__ = ["SqliteSink", "SqliteWriter"]

log = logging.getLogger("iotdata.sinks")
T = TypeVar("T")

#: SQLite keeps no NaN: a NaN REAL reads back as NULL, so NaN is refused as a bad row.
SQLITE_LIMITS = RowLimits(allow_nan=False)

#: Adds the ``extra`` column to an aggregates table made by an earlier iotdata.
_ADD_EXTRA = """ALTER TABLE "{p}aggregates" ADD COLUMN extra TEXT NOT NULL DEFAULT '{{}}'"""

_DDL = """
CREATE TABLE IF NOT EXISTS "{p}readings" (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    value_int INTEGER,
    value_bool INTEGER,
    value_text TEXT,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "{p}aggregates" (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    "count" INTEGER NOT NULL,
    "min" REAL,
    "max" REAL,
    "sum" REAL,
    revision INTEGER NOT NULL,
    extra TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (device_id, metric, window_start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "{p}alerts" (
    device_id TEXT NOT NULL,
    detector TEXT NOT NULL,
    ts INTEGER NOT NULL,
    metric TEXT,
    value REAL,
    score REAL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (device_id, detector, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "{p}dead_letters" (
    sink TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    device_id TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    record TEXT NOT NULL,
    topic TEXT,
    partition INTEGER,
    "offset" INTEGER,
    PRIMARY KEY (sink, kind, key)
) WITHOUT ROWID;
"""
_TABLES = ("readings", "aggregates", "alerts")


def _path(_self: object, _attribute: attrs.Attribute[Any], value: Any) -> None:
    """A file path: not empty (SQLite would use a temporary file, lost at close) and not
    ``":memory:"`` (a database in memory, lost the same way)."""
    check_sqlite_path("path", value)


def _synchronous(_self: object, _attribute: object, value: object) -> None:
    if value not in ("normal", "full"):
        raise InvalidInputError(f"synchronous must be 'normal' or 'full', not {value!r}")


def _seconds(_self: object, attribute: attrs.Attribute[float], value: object) -> None:
    number = isinstance(value, (int, float)) and type(value) is not bool
    if not number or not 0 <= value < math.inf:  # type: ignore[operator]
        raise InvalidInputError(f"{attribute.name} must be a number of seconds >= 0: {value!r}")


def _at_least_one(_self: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{attribute.name} must be an int >= 1, not {value!r}")


@attrs.frozen(kw_only=True)
class SqliteSink:
    """Readings, aggregates and alerts in one SQLite file (see docs/sinks.md for the schema).

    ``table_prefix`` is put before the table names (``readings``, ``aggregates``, ``alerts``,
    and ``dead_letters`` for the records the sink refuses); ``create_tables`` creates missing
    tables at open. ``synchronous="normal"`` (WAL) keeps
    every flush through a crash of the process; ``"full"`` also through a power cut, at the
    cost of an fsync per flush. ``busy_timeout`` is how long a flush waits for another writer's
    lock (seconds). ``flush_rows`` bounds the writer's buffer.
    """

    path: str | os.PathLike[str] = attrs.field(validator=_path)
    table_prefix: str = attrs.field(default="", validator=lambda _s, _a, v: check_prefix(v))
    create_tables: bool = attrs.field(default=True, validator=valid.flag)
    synchronous: Literal["normal", "full"] = attrs.field(default="normal", validator=_synchronous)
    busy_timeout: float = attrs.field(default=5.0, validator=_seconds)
    flush_rows: int = attrs.field(default=100_000, validator=_at_least_one)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=valid.retry)

    def open(self) -> Opening[SqliteWriter]:
        """Open (and create) the file; await the result, or use it with ``async with``."""
        return Opening(self._open)

    async def _open(self) -> SqliteWriter:
        executor = ThreadPoolExecutor(1, thread_name_prefix="iotdata-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await self.retry.call(
                lambda: loop.run_in_executor(executor, _translated, self._connect),
                what=f"opening {os.fspath(self.path)!r}",
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return SqliteWriter(self, connection, executor)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            if self.create_tables:
                connection.executescript(_DDL.format(p=self.table_prefix))
            self._check_tables(connection)
            self._check_extra(connection)
            self._check_dead_letters(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_tables(self, connection: sqlite3.Connection) -> None:
        names = [f"{self.table_prefix}{kind}" for kind in _TABLES]
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        missing = [name for name in names if connection.execute(query, (name,)).fetchone() is None]
        if missing:
            raise SinkFatalError(
                f"{os.fspath(self.path)!r} has no table {', '.join(missing)}: "
                "create them, or pass create_tables=True"
            )

    def _check_dead_letters(self, connection: sqlite3.Connection) -> None:
        """A table made by an earlier iotdata has no dead letters beside it: say how to add it
        (``create_tables`` made it already)."""
        name = f"{self.table_prefix}dead_letters"
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        if connection.execute(query, (name,)).fetchone() is None:
            ddl = _DDL.format(p=self.table_prefix)
            create = ddl[ddl.index(f'CREATE TABLE IF NOT EXISTS "{name}"') :].strip()
            raise SinkFatalError(
                f"{os.fspath(self.path)!r} has no table {name} for the records the sink "
                f"refuses (made by an earlier iotdata): pass create_tables=True, or run "
                f"{' '.join(create.split())}"
            )

    def _check_extra(self, connection: sqlite3.Connection) -> None:
        """Add the ``extra`` column to an older aggregates table (with ``create_tables``), or
        refuse to write into it."""
        table = f"{self.table_prefix}aggregates"
        if _has_extra(connection, table):
            return
        if not self.create_tables:
            raise SinkFatalError(
                f"{os.fspath(self.path)!r}: table {table} has no column extra (it was made by "
                f"an earlier iotdata): pass create_tables=True to add it, or run "
                f"{_ADD_EXTRA.format(p=self.table_prefix)}"
            )
        connection.execute("BEGIN IMMEDIATE")  # another writer may be adding it right now
        try:
            if not _has_extra(connection, table):
                log.info("adding the column extra to %s", table)
                connection.execute(_ADD_EXTRA.format(p=self.table_prefix))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")


def _has_extra(connection: sqlite3.Connection, table: str) -> bool:
    columns = connection.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
    return (AGGREGATE_EXTRA,) in columns


class SqliteWriter(BufferedWriter):
    """The writer of a :class:`SqliteSink`; made by ``SqliteSink.open()``."""

    stores_dead_letters = True

    def __init__(
        self, sink: SqliteSink, connection: sqlite3.Connection, executor: ThreadPoolExecutor
    ) -> None:
        super().__init__(
            name=f"SqliteSink({os.fspath(sink.path)!r})",
            flush_rows=sink.flush_rows,
            retry=sink.retry,
            limits=SQLITE_LIMITS,
        )
        self._connection = connection
        self._executor = executor
        self._statements = _Statements.for_prefix(sink.table_prefix)

    async def persist(self, pending: PendingRecords) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _translated, lambda: self._persist(pending))

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(self._executor, self._connection.close)
        self._executor.shutdown(wait=False)
        await closing

    def _persist(self, pending: PendingRecords) -> None:
        connection = self._connection
        statements = self._statements
        connection.execute("BEGIN IMMEDIATE")
        try:
            for kind, columns in _by_kind(pending.columns()).items():
                connection.executemany(statements.readings[kind], _rows(kind, columns))
            aggregates = pending.aggregates()
            if aggregates:
                connection.executemany(statements.aggregates, aggregate_rows(aggregates))
            alerts = pending.alerts()
            if alerts:
                connection.executemany(statements.alerts, alert_rows(alerts))
            letters = pending.dead_letters()
            if letters:
                connection.executemany(statements.dead_letters, dead_letter_rows(letters))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")


@attrs.frozen
class _Statements:
    readings: dict[ValueKind, str]
    aggregates: str
    alerts: str
    dead_letters: str

    @classmethod
    def for_prefix(cls, prefix: str) -> _Statements:
        readings: dict[ValueKind, str] = {}
        for kind in ("float", "int", "bool", "str", "null", "mixed"):
            columns = list(READING_COLUMNS[:4])
            if kind == "mixed":
                columns = list(READING_COLUMNS)
            elif kind in VALUE_COLUMN:
                columns.append(VALUE_COLUMN[kind])
            readings[kind] = _insert(f"{prefix}readings", columns, "ON CONFLICT DO NOTHING")
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in AGGREGATE_COLUMNS[3:])
        conflict = (
            f"ON CONFLICT ({', '.join(AGGREGATE_KEY)}) DO UPDATE SET {updates} "
            f'WHERE excluded.revision >= "{prefix}aggregates".revision'
        )
        return cls(
            readings,
            _insert(f"{prefix}aggregates", AGGREGATE_COLUMNS, conflict),
            _insert(f"{prefix}alerts", ALERT_COLUMNS, "ON CONFLICT DO NOTHING"),
            _insert(f"{prefix}dead_letters", DEAD_LETTER_COLUMNS, "ON CONFLICT DO NOTHING"),
        )


def _insert(table: str, columns: Iterable[str], conflict: str) -> str:
    names = list(columns)
    quoted = ", ".join(f'"{c}"' for c in names)
    marks = ", ".join("?" * len(names))
    return f'INSERT INTO "{table}" ({quoted}) VALUES ({marks}) {conflict}'


def _by_kind(columns: Iterable[ReadingColumn]) -> dict[ValueKind, list[ReadingColumn]]:
    groups: dict[ValueKind, list[ReadingColumn]] = {}
    for column in columns:
        groups.setdefault(column.kind, []).append(column)
    return groups


def _rows(kind: ValueKind, columns: list[ReadingColumn]) -> Iterator[tuple[object, ...]]:
    """The parameter rows of ``columns`` (all of ``kind``) for that kind's statement."""
    if kind == "mixed":
        return chain.from_iterable(map(reading_rows, columns))
    if kind == "null":
        return chain.from_iterable(
            zip(repeat(c.device_id), c.column.seq, c.column.ts, repeat(c.column.metric))
            for c in columns
        )
    return chain.from_iterable(
        zip(repeat(c.device_id), col.seq, col.ts, repeat(col.metric), col.values)
        for c in columns
        for col in (c.column,)
    )


def _translated(operation: Callable[[], T]) -> T:
    """Run ``operation``, turning sqlite3 errors into sink errors (on the writer's thread)."""
    try:
        return operation()
    except sqlite3.Error as exc:
        raise _translate(exc) from exc


def _translate(exc: sqlite3.Error) -> SinkError:
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+; the message otherwise
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return SinkBackpressureError(f"SQLite database busy: {text}", retry_after=0.1)
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or text in _TRANSIENT:
        return SinkRetriableError(f"SQLite I/O failed: {text}")
    return SinkFatalError(f"SQLite refused the write: {text}")


_TRANSIENT = frozenset({"database or disk is full", "disk I/O error"})
