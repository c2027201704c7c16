"""The SQLite sink: conformance, WAL readers in another process, locks, schema, bad rows."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import attrs
import pytest
import tenacity

from iotdata.errors import InvalidInputError
from iotdata.model import Batch
from iotdata.sinks import BadRowError, RetryPolicy, SinkFatalError, SqliteSink, WindowAggregate
from iotdata.testing import check_sink
from tests.sinks._readers import sqlite_contents

pytestmark = pytest.mark.timeout(120)


def batch(device: str, first_seq: int, count: int) -> Batch:
    seqs = range(first_seq, first_seq + count)
    return Batch.from_columns(
        device, {"temperature": ([10**15 + s for s in seqs], [s / 10 for s in seqs], seqs)}
    )


def test_sqlite_sink_passes_the_conformance_check(tmp_path: Path) -> None:
    path = tmp_path / "sink.db"
    sink = SqliteSink(path=path, table_prefix="iot_")
    asyncio.run(check_sink(sink.open, read_back=lambda: sqlite_contents(path, "iot_")))


def test_the_file_is_in_wal_mode_with_the_documented_keys(tmp_path: Path) -> None:
    path = tmp_path / "sink.db"

    async def scenario() -> None:
        async with SqliteSink(path=path).open() as writer:
            await writer.write(batch("d", 0, 3))

    asyncio.run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        keys = {
            table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[5]]
            for table in ("readings", "aggregates", "alerts")
        }
    conn.close()
    assert keys == {
        "readings": ["device_id", "seq"],
        "aggregates": ["device_id", "metric", "window_start"],
        "alerts": ["device_id", "detector", "ts"],
    }


READER = textwrap.dedent(
    """
    import json, os, sqlite3, sys, time
    path, stop = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
    counts, errors = [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stopping = os.path.exists(stop)
        try:
            counts.append(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
            if len(counts) == 1:
                print("ready", flush=True)
        except sqlite3.Error as exc:
            errors.append(str(exc))
        if stopping:
            break
        time.sleep(0.002)
    print(json.dumps({"counts": counts, "errors": errors}), flush=True)
    """
)


def test_another_process_reads_while_the_sink_writes(tmp_path: Path) -> None:
    path, stop = tmp_path / "sink.db", tmp_path / "stop"
    flushes, per_flush = 30, 2_000

    async def scenario() -> None:
        async with SqliteSink(path=path).open() as writer:
            await writer.flush()  # the tables exist before the reader starts
            reader = subprocess.Popen(
                [sys.executable, "-c", READER, str(path), str(stop)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready"
            for i in range(flushes):
                await writer.write(batch(f"dev-{i % 3}", i * per_flush, per_flush))
                await writer.flush()
            stop.touch()
            output, _ = await asyncio.to_thread(reader.communicate, timeout=60)
        report = json.loads(output.strip().splitlines()[-1])
        assert report["errors"] == []
        counts = report["counts"]
        assert counts == sorted(counts), "a reader saw rows disappear"
        assert counts[-1] == flushes * per_flush
        assert all(c % per_flush == 0 for c in counts), "a reader saw half a flush"
        assert len(set(counts)) > 2, "the reader never saw the table between flushes"

    asyncio.run(scenario())


def test_a_locked_file_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    path = tmp_path / "sink.db"
    sqlite3.connect(path).close()
    policy = RetryPolicy(wait=tenacity.wait_fixed(0.05), stop=tenacity.stop_after_delay(20))
    sink = SqliteSink(path=path, busy_timeout=0.05, retry=policy)

    async def scenario() -> int:
        writer = await sink.open()
        locked, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_lock)
        holder.start()
        locked.wait(10)
        await writer.write(batch("d", 0, 100))
        asyncio.get_running_loop().call_later(0.5, release.set)
        await writer.flush()
        holder.join()
        retries = writer.statistics().retries
        await writer.close()
        return retries

    assert asyncio.run(scenario()) >= 1
    assert len(sqlite_contents(path).readings) == 100


def test_flushing_runs_off_the_event_loop(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, float]:
        writer = await SqliteSink(path=tmp_path / "sink.db", flush_rows=10**6).open()
        for i in range(100):
            await writer.write(batch(f"dev-{i}", 0, 2_000))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.perf_counter()
        await writer.flush()
        elapsed = time.perf_counter() - started
        ticker.cancel()
        await writer.close()
        return ticks, elapsed

    ticks, elapsed = asyncio.run(scenario())
    assert ticks >= min(5, elapsed / 0.02), f"the loop ticked {ticks} times in {elapsed:.2f} s"


def test_nan_is_a_bad_row_in_sqlite(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SqliteSink(path=tmp_path / "sink.db").open() as writer:
            bad = Batch.from_columns("dev-n", {"x": ([1, 2], [1.0, math.nan], [5, 6])})
            with pytest.raises(BadRowError, match=r"dev-n.*seq=6.*NaN"):
                await writer.write(bad)

    asyncio.run(scenario())


async def open_and_close(sink: SqliteSink) -> None:
    writer = await sink.open()
    await writer.close()


def test_missing_tables_or_folder_are_fatal(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(SinkFatalError, match="create_tables=True"):
        asyncio.run(open_and_close(SqliteSink(path=tmp_path / "empty.db", create_tables=False)))
    with pytest.raises(SinkFatalError, match="unable to open"):
        asyncio.run(open_and_close(SqliteSink(path=tmp_path / "no" / "such" / "dir.db")))


def test_a_bad_table_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="table_prefix"):
        SqliteSink(path="x.db", table_prefix='x"; DROP TABLE y; --')


OLD_AGGREGATES = """CREATE TABLE aggregates (
    device_id TEXT NOT NULL, metric TEXT NOT NULL, window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL, "count" INTEGER NOT NULL, "min" REAL, "max" REAL, "sum" REAL,
    revision INTEGER NOT NULL, PRIMARY KEY (device_id, metric, window_start)) WITHOUT ROWID"""


def test_extra_is_a_json_column_that_sqlite_can_query(tmp_path: Path) -> None:
    path = tmp_path / "sink.db"
    aggregate = WindowAggregate("d", "t", 0, 60, 3, 1.0, 2.0, 4.5, 0, {"p99": 2.0, "up": math.inf})

    async def scenario() -> None:
        async with SqliteSink(path=path).open() as writer:
            await writer.write([aggregate, attrs.evolve(aggregate, metric="u", extra={})])

    asyncio.run(scenario())
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT metric, extra, json_extract(extra, '$.p99') FROM aggregates ORDER BY metric"
        ).fetchall()
    conn.close()
    assert rows == [("t", '{"p99":2.0,"up":"Infinity"}', 2.0), ("u", "{}", None)]
    assert sqlite_contents(path).aggregates[0] == aggregate


def test_an_older_aggregates_table_gets_the_extra_column_or_a_clear_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_AGGREGATES)
        conn.execute("INSERT INTO aggregates VALUES ('d', 't', 0, 60, 1, 1.0, 1.0, 1.0, 0)")
    conn.close()
    with pytest.raises(SinkFatalError, match=r"no table readings, alerts"):
        asyncio.run(open_and_close(SqliteSink(path=path, create_tables=False)))
    with sqlite3.connect(path) as conn:  # the other tables as an earlier iotdata made them
        conn.executescript(
            "CREATE TABLE readings (device_id TEXT, seq INTEGER);"
            "CREATE TABLE alerts (device_id TEXT, detector TEXT);"
        )
    conn.close()
    with pytest.raises(SinkFatalError, match=r"aggregates has no column extra.*ALTER TABLE"):
        asyncio.run(open_and_close(SqliteSink(path=path, create_tables=False)))
    newer = WindowAggregate("d", "t", 60, 120, 2, 1.0, 2.0, 3.0, 0, {"p99": 2.0})

    async def migrate_and_write() -> None:
        async with SqliteSink(path=path).open() as writer:
            await writer.write(newer)

    asyncio.run(migrate_and_write())
    asyncio.run(open_and_close(SqliteSink(path=path, create_tables=False)))  # now it is fine
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT window_start, extra FROM aggregates").fetchall()
    conn.close()
    assert sorted(rows) == [(0, "{}"), (60, '{"p99":2.0}')]


def test_settings_that_make_no_sense_are_refused_when_the_sink_is_made() -> None:
    for options, name in [
        ({"synchronous": "bogus"}, "synchronous"),  # SQLite would ignore it silently
        ({"synchronous": 1}, "synchronous"),
        ({"busy_timeout": math.nan}, "busy_timeout"),
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"flush_rows": 0}, "flush_rows"),
    ]:
        with pytest.raises(InvalidInputError, match=name):
            SqliteSink(path="x.db", **options)  # type: ignore[arg-type]


def test_a_folder_or_a_file_that_is_no_database_fails_at_once(tmp_path: Path) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    patient = RetryPolicy(stop=tenacity.stop_after_attempt(50), sleep=sleep)
    (tmp_path / "text.db").write_text("not a database " * 500)
    for path, message in [(tmp_path, "unable to open"), (tmp_path / "text.db", "not a database")]:
        with pytest.raises(SinkFatalError, match=message):
            asyncio.run(open_and_close(SqliteSink(path=path, retry=patient)))
    assert waits == []  # configuration errors are not retried
