"""Records a sink refuses (NaN in SQLite, NUL and ancient times in PostgreSQL): the bad ones go
to the route's dead letters (or are skipped, or stop the worker, as the route says), the good
readings of the same batch are stored, and a replay stores each dead letter once."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from iotdata import codec
from iotdata.local import LocalLog
from iotdata.model import Batch
from iotdata.sinks import (
    BadRowError,
    PostgresSink,
    RowLimits,
    SourcePosition,
    SqliteSink,
)
from iotdata.stream import (
    Count,
    LocalSource,
    Mean,
    MemoryCheckpoints,
    MemorySource,
    Pipeline,
    Tumbling,
    WorkerStats,
)
from tests.sinks._memory import MemoryWriter, Store

S = 1_000_000
BASE = 1_700_000_040 * S  # a multiple of 10 s
pytestmark = pytest.mark.timeout(120)


def frames(bad: dict[int, object] | None = None) -> list[Batch]:
    """Devices a and b, two frames of five readings each (seq 0..9, one a second); the values
    of device a at the seqs of ``bad`` replaced (NaN at seq 4 by default)."""
    bad = {4: math.nan} if bad is None else bad
    out = []
    for first in (0, 5):
        for device in ("a", "b"):
            seqs = list(range(first, first + 5))
            values = [bad.get(s, float(s)) if device == "a" else float(s) for s in seqs]
            ts = [BASE + s * S for s in seqs]
            out.append(Batch.from_columns(device, {"temp": (ts, values, seqs)}))
    return out


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        found = db.execute(sql).fetchall()
    db.close()
    return sorted(found)


def dead_letters(path: Path) -> list[tuple[Any, ...]]:
    return rows(path, "SELECT sink, kind, key, reason FROM dead_letters")


def run(pipeline: Pipeline, items: list[Batch]) -> WorkerStats:
    """The whole input once, from the beginning (fresh checkpoints: a second call replays)."""
    return asyncio.run(pipeline.run(MemorySource(items), flush_at_end=True))


def test_a_nan_reading_is_dead_lettered_next_to_the_data_and_the_rest_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.sqlite"
    window = Tumbling(10 * S)
    pipeline = Pipeline().window(window, Count(), Mean(), grace=10 * S).to(SqliteSink(path=path))
    stats = run(pipeline, frames())
    # every reading but the NaN one, including the four good ones of its batch
    stored = rows(path, "SELECT device_id, seq FROM readings")
    assert stored == sorted({(d, s) for d in "ab" for s in range(10)} - {("a", 4)})
    # the NaN made the window's sum NaN: that aggregate is refused too, the others stored
    aggregates = rows(path, 'SELECT device_id, "count", "sum" FROM aggregates')
    assert aggregates == [("b", 10, 45.0)]
    sink = f"SqliteSink({str(path)!r})"
    assert dead_letters(path) == [
        (sink, "aggregate", f"a/temp/{BASE}/0", "nan"),
        (sink, "reading", "a/4", "nan"),
    ]
    assert (stats.dead_lettered, stats.skipped, stats.bad_rows) == (2, 0, {"nan": 2})
    columns = 'detail, record, topic, partition, "offset"'
    detail, record, topic, partition, offset = rows(
        path, f"SELECT {columns} FROM dead_letters WHERE kind = 'reading'"
    )[0]
    assert "NaN" in detail
    assert json.loads(record) == {
        "kind": "reading",
        "device_id": "a",
        "metric": "temp",
        "ts": BASE + 4 * S,
        "value": "NaN",
        "seq": 4,
        "value_type": "float",
    }
    # the source record that carried it: device a's first frame, the first of partition 0
    first_a = next(i for i, b in enumerate(frames()) if b.device_id == "a")
    assert (topic, partition, offset) == ("memory", 0, first_a)

    again = run(pipeline, frames())  # a replay of the whole input
    assert again.dead_lettered == 2
    assert len(dead_letters(path)) == 2  # each dead letter stored once
    assert rows(path, "SELECT device_id, seq FROM readings") == stored


class CrashingCheckpoints(MemoryCheckpoints):
    """Its first save fails, as a crash between flushing the sinks and saving the state would:
    the dead letters are durable, the offsets are not."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def save(self, checkpoints: Any) -> None:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("killed between the flush and the save")
        await super().save(checkpoints)


def test_a_replay_from_a_checkpoint_stores_each_dead_letter_once(tmp_path: Path) -> None:
    log = LocalLog.memory()
    log.create_topic("t", 1)
    for item in frames():
        log.append("t", item.device_id.encode(), codec.encode(item))
    path = tmp_path / "out.sqlite"
    pipeline = Pipeline().to(SqliteSink(path=path))
    checkpoints = CrashingCheckpoints()

    async def run_once() -> WorkerStats:
        source = LocalSource("t", log=log, group="g")
        return await pipeline.run(source, checkpoints=checkpoints, until=lambda s: s.records == 4)

    with pytest.raises(RuntimeError, match="killed"):
        asyncio.run(run_once())
    assert len(dead_letters(path)) == 1  # flushed before the save that failed
    assert log.committed("g", "t", 0) is None  # so nothing was committed: all is replayed
    again = asyncio.run(run_once())
    assert (again.records, again.dead_lettered) == (4, 1)
    assert len(dead_letters(path)) == 1
    assert len(rows(path, "SELECT seq FROM readings")) == 19


def test_skip_counts_and_stores_nothing_and_stop_is_the_old_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "out.sqlite"
    stats = run(Pipeline().to(SqliteSink(path=path), bad_rows="skip"), frames())
    assert (stats.dead_lettered, stats.skipped, stats.bad_rows) == (0, 1, {"nan": 1})
    assert len(rows(path, "SELECT seq FROM readings")) == 19
    assert dead_letters(path) == []
    stopping = Pipeline().to(SqliteSink(path=tmp_path / "stop.sqlite"), bad_rows="stop")
    with pytest.raises(BadRowError, match=r"seq=4.*NaN"):
        run(stopping, frames())


class NoNanWriter(MemoryWriter):
    """A writer of the user's own that refuses NaN and keeps no dead letters."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, limits=RowLimits(allow_nan=False))


def test_dead_letters_go_to_the_given_destination_or_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq = tmp_path / "dlq.sqlite"
    store = Store()
    stats = run(Pipeline().to(NoNanWriter(store), dead_letters=SqliteSink(path=dlq)), frames())
    assert stats.dead_lettered == 1 and len(store.readings) == 19
    assert dead_letters(dlq) == [("MemorySink", "reading", "a/4", "nan")]
    assert rows(dlq, "SELECT seq FROM readings") == []  # only the dead letters went there
    # a writer that keeps no dead letters, and no destination: one JSON line each on stderr
    run(Pipeline().to(NoNanWriter(Store())), frames())
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(d["kind"], d["sink"], d["key"], d["reason"]) for d in lines] == [
        ("dead_letter", "MemorySink", "a/4", "nan")
    ]
    assert lines[0]["record"]["value"] == "NaN"


class StrictWriter:
    """A writer that is no BufferedWriter: refuses a batch holding NaN, naming the reading."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, int]] = []

    async def write(self, records: Any, *, position: SourcePosition | None = None) -> None:
        for index, batch in enumerate(records):
            for reading in batch:
                if isinstance(reading.value, float) and math.isnan(reading.value):
                    raise BadRowError("no NaN here", index=index, record=reading)
        self.stored += [(r.device_id, r.seq) for batch in records for r in batch]

    async def flush(self) -> None:
        return None


def test_a_writer_of_any_kind_gets_its_good_records_and_the_bad_ones_are_isolated(
    tmp_path: Path,
) -> None:
    writer = StrictWriter()
    bad = {1: math.nan, 3: math.nan, 4: math.nan}
    stats = run(Pipeline().to(writer, dead_letters=SqliteSink(path=tmp_path / "d.db")), frames(bad))
    assert sorted(writer.stored) == sorted(
        {(d, s) for d in "ab" for s in range(10)} - {("a", 1), ("a", 3), ("a", 4)}
    )
    assert [key for _, _, key, _ in dead_letters(tmp_path / "d.db")] == ["a/1", "a/3", "a/4"]
    assert stats.bad_rows == {"invalid": 3}  # the writer gave no reason code


def test_one_bad_device_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    seqs = list(range(2000))
    flood = [
        Batch.from_columns(
            "a", {"temp": ([BASE + s for s in seqs[i::20]], [math.nan] * 100, seqs[i::20])}
        )
        for i in range(20)
    ]
    with caplog.at_level(logging.WARNING, logger="iotdata.stream"):
        stats = run(Pipeline().to(NoNanWriter(Store()), bad_rows="skip"), flood)
    assert stats.skipped == 2000
    lines = [r for r in caplog.records if r.name == "iotdata.stream"]
    assert 1 <= len(lines) <= 20, len(lines)


def test_the_route_options_are_checked_where_they_are_given(tmp_path: Path) -> None:
    sink = SqliteSink(path=tmp_path / "x.db")
    with pytest.raises(ValueError, match="bad_rows"):
        Pipeline().to(sink, bad_rows="drop")
    with pytest.raises(ValueError, match="dead_letters"):
        Pipeline().to(sink, bad_rows="skip", dead_letters=sink)
    with pytest.raises(ValueError, match="dead_letters"):
        Pipeline().to(sink, dead_letters=42)


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture
def prefix(postgres_dsn: str, unique_name: str) -> Iterator[str]:
    name = f"{unique_name}_"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for kind in ("readings", "aggregates", "alerts", "dead_letters"):
            conn.execute(f'DROP TABLE IF EXISTS "{name}{kind}"')


@pytest.mark.postgres
def test_postgres_refusals_are_dead_lettered_in_its_database(
    postgres_dsn: str, prefix: str
) -> None:
    ancient = BASE - 10**18  # about 29,700 BC: before timestamptz begins
    items = [
        Batch.from_columns(
            "a",
            {
                "status": ([BASE, BASE + S, BASE + 2 * S], ["ok", "bad\x00nul", "fine"], [0, 1, 2]),
                "temp": ([BASE, ancient, BASE + 2 * S], [math.nan, 1.0, 2.0], [3, 4, 5]),
            },
        )
    ]
    sink = PostgresSink(dsn=postgres_dsn, table_prefix=prefix, create_tables=True)
    stats = run(Pipeline().to(sink), items)
    assert stats.bad_rows == {"nul": 1, "time-range": 1}
    again = run(Pipeline().to(sink), items)
    assert again.dead_lettered == 2
    with psycopg.connect(postgres_dsn) as conn:
        stored = conn.execute(f'SELECT seq FROM "{prefix}readings" ORDER BY seq').fetchall()
        letters = conn.execute(
            f'SELECT sink, kind, key, reason, record FROM "{prefix}dead_letters" ORDER BY key'
        ).fetchall()
    assert [s for (s,) in stored] == [0, 2, 3, 5]  # NaN is fine in PostgreSQL
    assert [row[:4] for row in letters] == [
        ("PostgresSink", "reading", "a/1", "nul"),
        ("PostgresSink", "reading", "a/4", "time-range"),
    ]
    assert json.loads(letters[0][4])["value"] == "bad\x00nul"
    assert json.loads(letters[1][4])["ts"] == ancient
