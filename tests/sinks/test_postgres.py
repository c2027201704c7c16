"""The PostgreSQL sink on the real server: conformance, lost connections, a restart, errors."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg
import pytest
import tenacity

from iotdata.model import Batch
from iotdata.sinks import (
    MissingDependencyError,
    PostgresSink,
    RetryPolicy,
    SinkFatalError,
    SinkRetriableError,
    WindowAggregate,
)
from iotdata.testing import check_sink
from tests.sinks._readers import postgres_contents

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
PATIENT = RetryPolicy(wait=tenacity.wait_fixed(0.25), stop=tenacity.stop_after_delay(90))


@pytest.fixture
def prefix(postgres_dsn: str, unique_name: str) -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    name = f"{unique_name}_"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for kind in ("readings", "aggregates", "alerts", "dead_letters"):
            conn.execute(f'DROP TABLE IF EXISTS "{name}{kind}"')


def batch(device: str, first_seq: int, count: int, offset: float = 0.0) -> Batch:
    seqs = range(first_seq, first_seq + count)
    return Batch.from_columns(
        device,
        {"temperature": ([10**15 + s for s in seqs], [s / 10 + offset for s in seqs], seqs)},
    )


def stored(dsn: str, prefix: str) -> list[tuple[str, int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT device_id, seq, value FROM "{prefix}readings"').fetchall()
    return sorted(rows)


async def open_and_close(sink: PostgresSink) -> None:
    writer = await sink.open()
    await writer.close()


def test_postgres_sink_passes_the_conformance_check(postgres_dsn: str, prefix: str) -> None:
    sink = PostgresSink(dsn=postgres_dsn, table_prefix=prefix, create_tables=True)
    asyncio.run(check_sink(sink.open, read_back=lambda: postgres_contents(postgres_dsn, prefix)))


def test_postgres_sink_without_the_optimistic_insert_passes_too(
    postgres_dsn: str, prefix: str
) -> None:
    sink = PostgresSink(
        dsn=postgres_dsn, table_prefix=prefix, create_tables=True, optimistic_insert=False
    )
    asyncio.run(check_sink(sink.open, read_back=lambda: postgres_contents(postgres_dsn, prefix)))


def test_overlapping_flushes_keep_the_first_values(postgres_dsn: str, prefix: str) -> None:
    async def scenario() -> None:
        sink = PostgresSink(dsn=postgres_dsn, table_prefix=prefix, create_tables=True)
        async with sink.open() as writer:
            await writer.write(batch("dev-a", 0, 100))
            await writer.flush()
            await writer.write(batch("dev-a", 50, 100, offset=1000.0))

    asyncio.run(scenario())
    rows = stored(postgres_dsn, prefix)
    assert [(d, s) for d, s, _ in rows] == [("dev-a", s) for s in range(150)]
    assert [v for _, s, v in rows if s < 100] == [s / 10 for s in range(100)]


def test_a_lost_connection_is_retried_and_the_batch_written_once(
    postgres_dsn: str, prefix: str
) -> None:
    application = f"iotdata-test-{prefix}"
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, application_name=application)

    async def scenario() -> int:
        sink = PostgresSink(dsn=dsn, table_prefix=prefix, create_tables=True, retry=PATIENT)
        async with sink.open() as writer:
            await writer.write(batch("dev-a", 0, 1000))
            await writer.flush()
            await writer.write(batch("dev-a", 1000, 1000))
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (application,),
                ).fetchall()
            assert killed == [(True,)]
            await writer.flush()
            return writer.statistics().retries

    assert asyncio.run(scenario()) >= 1
    assert [(d, s) for d, s, _ in stored(postgres_dsn, prefix)] == [
        ("dev-a", s) for s in range(2000)
    ]


@pytest.mark.skipif(
    bool(os.environ.get("IOTDATA_POSTGRES_DSN")),
    reason="an external server (IOTDATA_POSTGRES_DSN) is not restarted by scripts/services.sh",
)
def test_the_server_restarted_between_flushes_loses_and_doubles_nothing(
    postgres_dsn: str, prefix: str
) -> None:
    """Flush every 200 readings while scripts/services.sh restarts PostgreSQL; go on for a few
    flushes after it is back. Every (device_id, seq) written is stored exactly once."""

    async def scenario() -> tuple[int, int]:
        sink = PostgresSink(
            dsn=postgres_dsn, table_prefix=prefix, create_tables=True, retry=PATIENT
        )
        async with sink.open() as writer:
            await writer.write(batch("dev-r", 0, 200))
            await writer.flush()
            restart = asyncio.ensure_future(
                asyncio.to_thread(
                    subprocess.run,
                    [str(REPO / "scripts" / "services.sh"), "restart", "postgres"],
                    capture_output=True,
                    text=True,
                    timeout=150,
                    check=False,
                )
            )
            seq, after = 200, 0
            while after < 3:
                done = restart.done()
                await writer.write(batch(f"dev-{seq % 3}", seq, 200))
                await writer.flush()
                seq += 200
                after += done
                await asyncio.sleep(0.05)
            result = await restart
            assert result.returncode == 0, result.stdout + result.stderr
            return seq, writer.statistics().retries

    written, retries = asyncio.run(scenario())
    rows = stored(postgres_dsn, prefix)
    keys = [(d, s) for d, s, _ in rows]
    assert len(keys) == len(set(keys)) == written
    assert sorted(s for _, s in keys) == list(range(written))
    assert retries >= 1


def test_bad_credentials_are_fatal_at_once(postgres_dsn: str) -> None:
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, password="not-the-password")
    started = time.monotonic()
    with pytest.raises(SinkFatalError, match="authentication failed"):
        asyncio.run(open_and_close(PostgresSink(dsn=dsn, retry=PATIENT)))
    assert time.monotonic() - started < 10


def test_an_unreachable_server_is_retriable(postgres_dsn: str) -> None:
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, host="127.0.0.1", port=1)
    policy = RetryPolicy(wait=tenacity.wait_fixed(0.01), stop=tenacity.stop_after_attempt(2))
    with pytest.raises(SinkRetriableError, match="cannot connect"):
        asyncio.run(open_and_close(PostgresSink(dsn=dsn, retry=policy)))


def test_missing_tables_and_timescaledb_are_fatal(postgres_dsn: str, prefix: str) -> None:
    with pytest.raises(SinkFatalError, match="create_tables=True"):
        asyncio.run(open_and_close(PostgresSink(dsn=postgres_dsn, table_prefix=prefix)))
    with psycopg.connect(postgres_dsn) as conn:
        timescale = conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    if timescale is None:
        sink = PostgresSink(
            dsn=postgres_dsn, table_prefix=prefix, create_tables=True, hypertable=True
        )
        with pytest.raises(SinkFatalError, match="timescaledb"):
            asyncio.run(open_and_close(sink))


def test_tables_in_a_schema_of_their_own(postgres_dsn: str, unique_name: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{unique_name}"')
    try:

        async def scenario() -> None:
            sink = PostgresSink(dsn=postgres_dsn, schema=unique_name, create_tables=True)
            async with sink.open() as writer:
                await writer.write(batch("dev-s", 0, 10))

        asyncio.run(scenario())
        with psycopg.connect(postgres_dsn) as conn:
            count = conn.execute(f'SELECT count(*) FROM "{unique_name}".readings').fetchone()
        assert count == (10,)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{unique_name}" CASCADE')


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'iotdata\[postgres\]'"):
        asyncio.run(open_and_close(PostgresSink(dsn="postgresql://nowhere/none")))


def test_extra_is_jsonb_that_postgres_can_query(postgres_dsn: str, prefix: str) -> None:
    start = 1_714_521_600_000_000
    aggregate = WindowAggregate(
        "d", "t", start, start + 60, 3, 1.0, 2.0, 4.5, 0, {"p99": 2.0, "up": math.inf}
    )

    async def scenario() -> None:
        sink = PostgresSink(dsn=postgres_dsn, table_prefix=prefix, create_tables=True)
        async with sink.open() as writer:
            await writer.write([aggregate, attrs.evolve(aggregate, metric="u", extra={})])

    asyncio.run(scenario())
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            f"SELECT metric, extra, (extra->>'p99')::float8 FROM \"{prefix}aggregates\" "
            "ORDER BY metric"
        ).fetchall()
    assert rows == [("t", {"p99": 2.0, "up": "Infinity"}, 2.0), ("u", {}, None)]
    stored = asyncio.run(postgres_contents(postgres_dsn, prefix)).aggregates
    assert sorted(stored, key=lambda a: a.metric)[0] == aggregate


def test_an_older_aggregates_table_gets_the_extra_column_or_a_clear_error(
    postgres_dsn: str, prefix: str
) -> None:
    sink = PostgresSink(dsn=postgres_dsn, table_prefix=prefix, create_tables=True)
    asyncio.run(open_and_close(sink))
    table = f'"{prefix}aggregates"'
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # as an earlier iotdata made it
        conn.execute(f"ALTER TABLE {table} DROP COLUMN extra")
        times = "to_timestamp(0), to_timestamp(60)"
        conn.execute(f"INSERT INTO {table} VALUES ('d', 't', {times}, 1, 1, 1, 1, 0)")
    with pytest.raises(SinkFatalError, match=r'aggregates" has no column extra.*ALTER TABLE'):
        asyncio.run(open_and_close(attrs.evolve(sink, create_tables=False)))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN extra text")
    with pytest.raises(SinkFatalError, match="column extra of type text, not jsonb"):
        asyncio.run(open_and_close(attrs.evolve(sink, create_tables=False)))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN extra")
    newer = WindowAggregate("d", "t", 60_000_000, 120_000_000, 2, 1.0, 2.0, 3.0, 0, {"p99": 2.0})

    async def migrate_and_write() -> None:
        async with sink.open() as writer:
            await writer.write(newer)

    asyncio.run(migrate_and_write())
    asyncio.run(open_and_close(attrs.evolve(sink, create_tables=False)))  # now it is fine
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(f"SELECT count, extra FROM {table} ORDER BY window_start").fetchall()
    assert rows == [(1, {}), (2, {"p99": 2.0})]
