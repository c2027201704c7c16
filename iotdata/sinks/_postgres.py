"""The PostgreSQL / TimescaleDB sink: the warm path.

Each flush is one transaction: binary COPY of the buffered rows into temporary staging tables,
then ``INSERT ... SELECT`` into the real tables with ``ON CONFLICT DO NOTHING`` (readings,
alerts) or ``ON CONFLICT ... DO UPDATE`` (aggregates, newest revision wins). A lost connection
fails the transaction as a whole; the retry policy reconnects and writes the batch again.

psycopg 3 is imported when a sink opens (the ``[postgres]`` extra).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from itertools import chain
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from iotdata._checks import check_bool
from iotdata.errors import InvalidInputError
from iotdata.sinks import _settings as valid
from iotdata.sinks._errors import (
    MissingDependencyError,
    SinkBackpressureError,
    SinkError,
    SinkFatalError,
    SinkRetriableError,
)
from iotdata.sinks._pgcopy import HEADER, TRAILER, encode_aggregates, encode_alerts, encode_column
from iotdata.sinks._records import PendingRecords
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._sql import (
    AGGREGATE_COLUMNS,
    AGGREGATE_EXTRA,
    AGGREGATE_KEY,
    ALERT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    READING_COLUMNS,
    check_prefix,
    dead_letter_rows,
)
from iotdata.sinks._validate import INT64_MAX, RowLimits
from iotdata.sinks._writer import BufferedWriter, Opening

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresSink", "PostgresWriter"]

log = logging.getLogger("iotdata.sinks")

#: timestamptz starts at 4714-11-24 BC; text cannot hold NUL characters.
POSTGRES_LIMITS = RowLimits(ts_min=-210_866_803_200_000_000, ts_max=INT64_MAX, allow_nul=False)
#: Bytes of COPY data sent per write to the server.
_COPY_CHUNK = 1 << 20
_INSTALL_HINT = "pip install 'iotdata[postgres]'"
# Connection failures that retrying will not cure (libpq gives no SQLSTATE for them).
_FATAL_CONNECT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",
)

# Formatted twice, by str.format then by psycopg's sql.SQL.format: '{{{{}}}}' ends up as '{}'.
_CREATE = {
    "readings": """CREATE TABLE IF NOT EXISTS {table} (
        device_id text NOT NULL,
        seq bigint NOT NULL,
        ts timestamptz NOT NULL,
        metric text NOT NULL,
        value double precision,
        value_int bigint,
        value_bool boolean,
        value_text text,
        PRIMARY KEY (device_id, seq{time_key})
    )""",
    "aggregates": """CREATE TABLE IF NOT EXISTS {table} (
        device_id text NOT NULL,
        metric text NOT NULL,
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        count bigint NOT NULL,
        min double precision,
        max double precision,
        sum double precision,
        revision bigint NOT NULL,
        extra jsonb NOT NULL DEFAULT '{{{{}}}}',
        PRIMARY KEY (device_id, metric, window_start)
    )""",
    "alerts": """CREATE TABLE IF NOT EXISTS {table} (
        device_id text NOT NULL,
        detector text NOT NULL,
        ts timestamptz NOT NULL,
        metric text,
        value double precision,
        score double precision,
        severity text NOT NULL,
        message text NOT NULL,
        PRIMARY KEY (device_id, detector, ts)
    )""",
}
#: The records the sink refused (see docs/stream.md); never a hypertable.
_DEAD_LETTERS = """CREATE TABLE IF NOT EXISTS {table} (
    sink text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    device_id text,
    reason text NOT NULL,
    detail text NOT NULL,
    record text NOT NULL,
    topic text,
    partition integer,
    "offset" bigint,
    PRIMARY KEY (sink, kind, key)
)"""
#: Adds the ``extra`` column to an aggregates table made by an earlier iotdata.
_ADD_EXTRA = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS extra jsonb NOT NULL DEFAULT '{{}}'"
_TIME_COLUMN = {"readings": "ts", "aggregates": "window_start", "alerts": "ts"}
_COLUMNS = {"readings": READING_COLUMNS, "aggregates": AGGREGATE_COLUMNS, "alerts": ALERT_COLUMNS}


def _import_psycopg() -> ModuleType:
    try:
        import psycopg  # noqa: PLC0415 (an optional extra, loaded when a sink opens)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the PostgreSQL sink needs psycopg 3: {_INSTALL_HINT}"
        ) from exc
    return psycopg


def _dsn(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str or not value.strip() or "\0" in value:
        raise InvalidInputError("dsn must be a libpq connection string or URL (not shown here)")


def _hypertable(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_bool("hypertable", value)


@attrs.frozen(kw_only=True)
class PostgresSink:
    """Readings, aggregates and alerts in PostgreSQL (TimescaleDB hypertables when available).

    ``dsn`` is a libpq connection string or URL. Tables are ``{table_prefix}readings``,
    ``{table_prefix}aggregates``, ``{table_prefix}alerts`` and ``{table_prefix}dead_letters``
    (the records the sink refuses) in ``schema`` (default: the search path); ``create_tables``
    creates missing ones at open. ``hypertable`` None makes
    them hypertables when the timescaledb extension is installed in the database (the readings
    key then includes ``ts``); True requires it, False never does.

    ``optimistic_insert`` first tries a plain ``INSERT ... SELECT`` from staging in a savepoint
    and falls back to ``ON CONFLICT DO NOTHING`` when a key already exists: the same result,
    faster when keys are new, slower on a replay. ``flush_rows`` bounds the writer's buffer;
    ``retry`` says how long a lost server is retried (also at open).
    """

    dsn: str = attrs.field(repr=False, validator=_dsn)
    schema: str | None = attrs.field(default=None, validator=valid.text)
    table_prefix: str = attrs.field(default="", validator=lambda _s, _a, v: check_prefix(v))
    create_tables: bool = attrs.field(default=False, validator=valid.flag)
    hypertable: bool | None = attrs.field(default=None, validator=_hypertable)
    optimistic_insert: bool = attrs.field(default=True, validator=valid.flag)
    connect_timeout: float = attrs.field(default=10.0, validator=valid.seconds)
    flush_rows: int = attrs.field(default=100_000, validator=valid.flush_rows)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=valid.retry)

    def open(self) -> Opening[PostgresWriter]:
        """Connect (and create tables); await the result, or use it with ``async with``."""
        return Opening(self._open)

    async def _open(self) -> PostgresWriter:
        writer = PostgresWriter(self, _import_psycopg())
        try:
            await self.retry.call(writer.setup, what="connecting to PostgreSQL")
        except BaseException:
            await writer.close()
            raise
        return writer


class PostgresWriter(BufferedWriter):
    """The writer of a :class:`PostgresSink`; made by ``PostgresSink.open()``."""

    stores_dead_letters = True

    def __init__(self, sink: PostgresSink, psycopg_module: ModuleType) -> None:
        super().__init__(
            name="PostgresSink",
            flush_rows=sink.flush_rows,
            retry=sink.retry,
            limits=POSTGRES_LIMITS,
        )
        self._sink = sink
        self._pg = psycopg_module
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._queries: _Queries | None = None
        #: The connection whose temporary staging tables exist.
        self._staged: object = None

    # ------------------------------------------------------------------ connection

    async def setup(self) -> None:
        """Connect, create the tables when asked, and check they exist (one attempt)."""
        conn = await self._connection()
        async with self._translated(conn):
            if self._sink.create_tables:
                await self._create_tables(conn)
            await self._check_tables(conn)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        held = self._conn
        if held is not None and not held.closed and not held.broken:
            return held
        await self._drop_connection()
        sink = self._sink
        try:
            conn: psycopg.AsyncConnection[Any] = await self._pg.AsyncConnection.connect(
                sink.dsn,
                autocommit=True,
                connect_timeout=max(1, math.ceil(sink.connect_timeout)),
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except self._pg.Error as exc:
            raise _connect_error(exc) from exc
        self._conn = conn
        async with self._translated(conn):
            # Staging tables live in temp buffers; give them room before the first is made.
            await conn.execute("SET temp_buffers = '64MB'")
            self._queries = _Queries.build(self._pg.sql, sink)
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # a broken connection may fail to say goodbye
                log.debug("closing a PostgreSQL connection failed: %s", exc)

    async def _create_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        sink = self._sink
        queries = self._require_queries()
        async with conn.transaction():
            # Two writers creating the same tables at once would collide in the catalogue.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('iotdata.sinks.create'))")
            cursor = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            timescale = await cursor.fetchone() is not None
            if sink.hypertable and not timescale:
                raise SinkFatalError(
                    "hypertable=True but the timescaledb extension is not installed in this "
                    "database (CREATE EXTENSION timescaledb)"
                )
            hyper = timescale if sink.hypertable is None else sink.hypertable
            for kind, template in _CREATE.items():
                time_key = ", ts" if hyper and kind == "readings" else ""
                ddl = template.format(table="{table}", time_key=time_key)
                await conn.execute(self._pg.sql.SQL(ddl).format(table=queries.tables[kind]))
                if hyper:
                    await conn.execute(
                        "SELECT create_hypertable(%s::regclass, %s, if_not_exists => TRUE)",
                        (queries.table_names[kind], _TIME_COLUMN[kind]),
                    )
            ddl = self._pg.sql.SQL(_DEAD_LETTERS).format(table=queries.dead_letters)
            await conn.execute(ddl)
            if await self._extra_type(conn) is None:  # ALTER locks the table: only when needed
                log.info("adding the column extra to %s", queries.table_names["aggregates"])
                add = self._pg.sql.SQL(_ADD_EXTRA).format(table=queries.tables["aggregates"])
                await conn.execute(add)

    async def _check_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        queries = self._require_queries()
        missing = []
        for name in queries.table_names.values():
            cursor = await conn.execute("SELECT to_regclass(%s)", (name,))
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                missing.append(name)
        if missing:
            raise SinkFatalError(
                f"PostgreSQL has no table {', '.join(missing)}: create them, or pass "
                "create_tables=True"
            )
        extra = await self._extra_type(conn)
        table = queries.table_names["aggregates"]
        if extra is None:
            raise SinkFatalError(
                f"PostgreSQL table {table} has no column extra (it was made by an earlier "
                f"iotdata): pass create_tables=True to add it, or run "
                f"{_ADD_EXTRA.format(table=table)}"
            )
        if extra != "jsonb":
            raise SinkFatalError(
                f"PostgreSQL table {table} has a column extra of type {extra}, not jsonb: "
                f"convert it (ALTER TABLE {table} ALTER COLUMN extra TYPE jsonb USING ...)"
            )
        cursor = await conn.execute("SELECT to_regclass(%s)", (queries.dead_letters_name,))
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            create = " ".join(_DEAD_LETTERS.format(table=queries.dead_letters_name).split())
            raise SinkFatalError(
                f"PostgreSQL has no table {queries.dead_letters_name} for the records the sink "
                f"refuses (the tables were made by an earlier iotdata): pass "
                f"create_tables=True, or run {create}"
            )

    async def _extra_type(self, conn: psycopg.AsyncConnection[Any]) -> str | None:
        """The type of the aggregates table's ``extra`` column; None when it has none."""
        cursor = await conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
            (self._require_queries().table_names["aggregates"], AGGREGATE_EXTRA),
        )
        row = await cursor.fetchone()
        return None if row is None else str(row[0])

    def _require_queries(self) -> _Queries:
        assert self._queries is not None  # set by _connection()
        return self._queries

    # ------------------------------------------------------------------ flushing

    async def persist(self, pending: PendingRecords) -> None:
        conn = await self._connection()
        queries = self._require_queries()
        if self._staged is not conn:
            async with self._translated(conn):
                await conn.execute(queries.staging)
            self._staged = conn
        async with self._translated(conn), conn.transaction(), conn.cursor() as cursor:
            columns = list(pending.columns())
            if columns:
                await self._copy(cursor, queries.copy["readings"], map(encode_column, columns))
                await self._insert_readings(conn, cursor, queries)
            aggregates = pending.aggregates()
            if aggregates:
                data = [encode_aggregates(aggregates)]
                await self._copy(cursor, queries.copy["aggregates"], data)
                await cursor.execute(queries.upsert_aggregates)
            alerts = pending.alerts()
            if alerts:
                await self._copy(cursor, queries.copy["alerts"], [encode_alerts(alerts)])
                await cursor.execute(queries.insert["alerts"])
            letters = pending.dead_letters()
            if letters:  # rare: one statement a row is fast enough
                await cursor.executemany(queries.insert_dead_letters, dead_letter_rows(letters))

    async def _copy(
        self, cursor: psycopg.AsyncCursor[Any], statement: sql.Composed, rows: Iterable[bytes]
    ) -> None:
        async with cursor.copy(statement) as copy:
            for data in _chunks(chain([HEADER], rows, [TRAILER])):
                await copy.write(data)

    async def _insert_readings(
        self,
        conn: psycopg.AsyncConnection[Any],
        cursor: psycopg.AsyncCursor[Any],
        queries: _Queries,
    ) -> None:
        if self._sink.optimistic_insert:
            try:
                async with conn.transaction():
                    await cursor.execute(queries.insert_plain)
            except self._pg.errors.UniqueViolation:
                log.debug("some readings were stored already; inserting with ON CONFLICT")
            else:
                return
        await cursor.execute(queries.insert["readings"])

    async def release(self) -> None:
        await self._drop_connection()

    # ------------------------------------------------------------------ errors

    def _translated(self, conn: psycopg.AsyncConnection[Any]) -> _Translated:
        return _Translated(self, conn)


class _Translated:
    """Turns psycopg errors into sink errors; drops a connection left in an unknown state."""

    def __init__(self, writer: PostgresWriter, conn: psycopg.AsyncConnection[Any]) -> None:
        self._writer = writer
        self._conn = conn

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        writer = self._writer
        psycopg_error = isinstance(exc, writer._pg.Error)
        unknown_state = not psycopg_error or self._conn.broken or self._conn.closed
        if unknown_state and writer._conn is self._conn:
            # Cancelled or failed mid-statement: the connection cannot be trusted any more.
            await writer._drop_connection()
        if psycopg_error and not isinstance(exc, SinkError):
            raise _query_error(writer._pg, exc) from exc


def _query_error(pg: ModuleType, exc: BaseException) -> SinkError:
    state = getattr(exc, "sqlstate", None) or ""
    text = str(exc).strip()
    if state.startswith("53"):
        return SinkBackpressureError(f"PostgreSQL is short of resources: {text}", retry_after=1.0)
    if state.startswith(("08", "57", "40")) or state in {"55P03", "55006"}:
        return SinkRetriableError(f"PostgreSQL failed, may succeed later: {text}")
    if not state and isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
        return SinkRetriableError(f"lost the PostgreSQL connection: {text}")
    return SinkFatalError(f"PostgreSQL refused the write ({state or 'no SQLSTATE'}): {text}")


def _connect_error(exc: BaseException) -> SinkError:
    text = str(exc).strip()
    if any(marker in text for marker in _FATAL_CONNECT):
        return SinkFatalError(f"cannot connect to PostgreSQL: {text}")
    return SinkRetriableError(f"cannot connect to PostgreSQL: {text}")


def _chunks(parts: Iterable[bytes]) -> Iterator[bytes]:
    """``parts`` joined into pieces of about ``_COPY_CHUNK`` bytes."""
    held: list[bytes] = []
    size = 0
    for part in parts:
        held.append(part)
        size += len(part)
        if size >= _COPY_CHUNK:
            yield b"".join(held)
            held, size = [], 0
    if held:
        yield b"".join(held)


@attrs.frozen
class _Queries:
    """The statements of one sink's tables, composed once per connection."""

    tables: dict[str, sql.Composable]
    table_names: dict[str, str]
    staging: sql.Composed
    copy: dict[str, sql.Composed]
    insert: dict[str, sql.Composed]
    insert_plain: sql.Composed
    upsert_aggregates: sql.Composed
    dead_letters: sql.Composable
    dead_letters_name: str
    insert_dead_letters: sql.Composed

    @classmethod
    def build(cls, sql_module: ModuleType, sink: PostgresSink) -> _Queries:
        sql = sql_module
        tables: dict[str, Any] = {}
        names: dict[str, str] = {}
        for kind in _CREATE:
            name = f"{sink.table_prefix}{kind}"
            parts = (name,) if sink.schema is None else (sink.schema, name)
            tables[kind] = sql.Identifier(*parts)
            names[kind] = ".".join(_quote(part) for part in parts)
        stages = {kind: sql.Identifier(f"iotdata_stage_{kind}") for kind in _CREATE}
        cols = {kind: sql.SQL(", ").join(map(sql.Identifier, _COLUMNS[kind])) for kind in _CREATE}
        staging = sql.SQL("; ").join(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                "SELECT {cols} FROM {table} WITH NO DATA"
            ).format(stage=stages[kind], cols=cols[kind], table=tables[kind])
            for kind in _CREATE
        )
        copy = {
            kind: sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)").format(
                stage=stages[kind], cols=cols[kind]
            )
            for kind in _CREATE
        }
        select = {
            kind: sql.SQL("INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {stage}").format(
                table=tables[kind], cols=cols[kind], stage=stages[kind]
            )
            for kind in _CREATE
        }
        insert = {kind: select[kind] + sql.SQL(" ON CONFLICT DO NOTHING") for kind in _CREATE}
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in AGGREGATE_COLUMNS[3:]
        )
        upsert = select["aggregates"] + sql.SQL(
            " ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE EXCLUDED.revision >= t.revision"
        ).format(key=sql.SQL(", ").join(map(sql.Identifier, AGGREGATE_KEY)), updates=updates)
        name = f"{sink.table_prefix}dead_letters"
        parts = (name,) if sink.schema is None else (sink.schema, name)
        letters = sql.Identifier(*parts)
        insert_letters = sql.SQL(
            "INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        ).format(
            table=letters,
            cols=sql.SQL(", ").join(map(sql.Identifier, DEAD_LETTER_COLUMNS)),
            marks=sql.SQL(", ").join([sql.Placeholder()] * len(DEAD_LETTER_COLUMNS)),
        )
        letters_name = ".".join(_quote(part) for part in parts)
        return cls(
            tables,
            names,
            staging,
            copy,
            insert,
            select["readings"],
            upsert,
            letters,
            letters_name,
            insert_letters,
        )


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
