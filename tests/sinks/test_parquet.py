"""The Parquet sink: conformance, layout, replays that overwrite, temporary files, zstd."""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import sys
from pathlib import Path

import pytest
import tenacity

from iotdata.model import Batch, ts_from_datetime
from iotdata.sinks import (
    MissingDependencyError,
    ParquetSink,
    RetryPolicy,
    SinkFatalError,
    SinkRetriableError,
    SourcePosition,
    WindowAggregate,
)
from iotdata.testing import check_sink
from tests.sinks._readers import parquet_contents

pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")

pytestmark = pytest.mark.timeout(120)

MIDNIGHT = ts_from_datetime(_dt.datetime(2024, 5, 1, tzinfo=_dt.timezone.utc))
MINUTE = 60_000_000


def batch(device: str, first_seq: int, count: int, start: int = MIDNIGHT) -> Batch:
    seqs = range(first_seq, first_seq + count)
    return Batch.from_columns(
        device, {"temperature": ([start + s * MINUTE for s in seqs], [s / 10 for s in seqs], seqs)}
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def data_files(root: Path) -> list[str]:
    return [f for f in files(root) if f.endswith(".parquet")]


def keys(root: Path) -> list[tuple[str, int]]:
    return sorted((r.device_id, r.seq) for r in parquet_contents(root).readings)


async def write_flushes(sink: ParquetSink, flushes: list[list[tuple[int, Batch]]]) -> None:
    """Each flush: (offset, batch) writes from partition 0 of topic "telemetry"."""
    async with sink.open() as writer:
        for flush in flushes:
            for offset, records in flush:
                await writer.write(records, position=SourcePosition("telemetry", 0, offset))
            await writer.flush()


def test_parquet_sink_passes_the_conformance_check(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = ParquetSink(root=root, buckets=4)
    asyncio.run(check_sink(sink.open, read_back=lambda: parquet_contents(root)))


def test_files_are_partitioned_by_date_and_device_bucket_and_named_by_position(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lake"
    sink = ParquetSink(root=root, buckets=16, row_group_rows=100)
    # 23:00 plus 250 minutes crosses midnight: two dates.
    evening = MIDNIGHT - 60 * MINUTE
    flushes = [[(7, batch("dev-a", 0, 250, evening)), (8, batch("dev-b", 0, 250, evening))]]
    asyncio.run(write_flushes(sink, flushes))
    names = data_files(root)
    assert {Path(n).name for n in names} == {"telemetry-p0-o00000000000000000007.parquet"}
    assert {n.split("/")[1] for n in names} == {"date=2024-04-30", "date=2024-05-01"}
    assert all(n.split("/")[2].startswith("bucket=") for n in names)
    assert not [f for f in files(root) if "tmp" in f]
    metadata = pq.ParquetFile(root / names[0]).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert max(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)) <= 100
    dataset = ds.dataset(root / "readings", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 500
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"


def test_a_replay_from_the_same_offset_overwrites_the_same_files(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = ParquetSink(root=root)
    flushes = [
        [(0, batch("dev-a", 0, 100)), (1, batch("dev-b", 0, 100))],
        [(2, batch("dev-a", 100, 50))],
    ]
    asyncio.run(write_flushes(sink, flushes))
    before = data_files(root)
    asyncio.run(write_flushes(sink, flushes))  # a worker restarted from offset 0
    assert data_files(root) == before
    assert keys(root) == sorted(
        [("dev-a", s) for s in range(150)] + [("dev-b", s) for s in range(100)]
    )


def test_a_replay_with_other_flush_boundaries_removes_what_it_supersedes(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = ParquetSink(root=root)
    late = MIDNIGHT + 24 * 60 * MINUTE  # the next day: other folders
    first_run = [
        [(0, batch("dev-a", 0, 10))],
        [(5, batch("dev-a", 10, 10)), (6, batch("dev-b", 0, 10, late))],
    ]
    asyncio.run(write_flushes(sink, first_run))
    # Offsets 5 and 6 were flushed but not committed: the next worker replays from 5, flushing
    # after each record. Offset 6 lands in a file of its own; the file of offset 5 in the
    # other date's folder must go.
    replay = [[(5, batch("dev-a", 10, 10))], [(6, batch("dev-b", 0, 10, late))]]
    asyncio.run(write_flushes(sink, replay))
    assert [Path(f).name[-12:-8] for f in data_files(root)] == ["0000", "0005", "0006"]
    expected = [("dev-a", s) for s in range(20)] + [("dev-b", s) for s in range(10)]
    assert keys(root) == sorted(expected)


def test_records_without_a_position_are_named_by_their_keys(tmp_path: Path) -> None:
    root = tmp_path / "lake"

    async def scenario() -> None:
        for _ in range(2):
            async with ParquetSink(root=root).open() as writer:
                await writer.write([batch("dev-a", 0, 10), batch("dev-a", 0, 10)])

    asyncio.run(scenario())
    names = data_files(root)
    assert len(names) == 1 and Path(names[0]).name.startswith("keys-")
    assert keys(root) == [("dev-a", s) for s in range(10)]


def test_aggregates_keep_every_revision_for_readers_to_pick_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    window = ("dev-a", "t", MIDNIGHT, MIDNIGHT + MINUTE)
    old = WindowAggregate(*window, 3, 1.0, 2.0, 4.0, 0, {"p99": 1.5, "stddev": 0.25})
    new = WindowAggregate(*window, 4, 1.0, 3.0, 7.0, 1, {"p99": 2.5, "last": None})
    asyncio.run(write_flushes(ParquetSink(root=root), [[(0, [old])], [(1, [new])]]))
    assert parquet_contents(root).aggregates == [new]
    table = ds.dataset(root / "aggregates", partitioning="hive").to_table()
    assert len(table) == 2
    extra_type = table.schema.field("extra").type
    assert (str(extra_type.key_type), str(extra_type.item_type)) == ("string", "double")
    assert sorted(map(dict, table.column("extra").to_pylist()), key=lambda e: e["p99"]) == [
        {"p99": 1.5, "stddev": 0.25},
        {"p99": 2.5, "last": None},
    ]


def test_s3_style_uris_and_filesystems_are_accepted(tmp_path: Path) -> None:
    fs = pytest.importorskip("pyarrow.fs")
    root = tmp_path / "viafs"
    sink = ParquetSink(root=str(root), filesystem=fs.LocalFileSystem())
    asyncio.run(write_flushes(sink, [[(0, batch("dev-a", 0, 5))]]))
    asyncio.run(
        write_flushes(ParquetSink(root=f"file://{tmp_path}/viauri"), [[(0, batch("dev-a", 0, 5))]])
    )
    assert keys(root) == keys(tmp_path / "viauri") == [("dev-a", s) for s in range(5)]


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    async def scenario() -> None:
        await ParquetSink(root=tmp_path).open()

    with pytest.raises(MissingDependencyError, match=r"pip install 'iotdata\[parquet\]'"):
        asyncio.run(scenario())


class CountingSleep:
    """A retry sleep that counts the waits instead of sleeping: a retried open shows here."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def patient(sleep: CountingSleep) -> RetryPolicy:
    return RetryPolicy(stop=tenacity.stop_after_attempt(50), sleep=sleep)


async def open_and_close(sink: ParquetSink) -> None:
    writer = await sink.open()
    await writer.close()


@pytest.mark.parametrize("where", ["root", "parent"])
def test_a_root_that_is_a_file_fails_at_once(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" if where == "root" else tmp_path / "file" / "lake"
    sleep = CountingSleep()
    with pytest.raises(SinkFatalError, match="not a folder"):
        asyncio.run(open_and_close(ParquetSink(root=root, retry=patient(sleep))))
    assert sleep.waits == []  # not retried: a configuration error


def test_a_root_replaced_by_a_file_fails_the_flush_at_once(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sleep = CountingSleep()

    async def scenario() -> None:
        writer = await ParquetSink(root=root, retry=patient(sleep)).open()
        root.rmdir()
        root.write_text("someone put a file here")
        await writer.write(batch("dev-a", 0, 5), position=SourcePosition("t", 0, 0))
        with pytest.raises(SinkFatalError, match="not a folder"):
            await writer.flush()
        assert writer.statistics().buffered == 5  # kept for a flush after the fix
        await writer.close()

    asyncio.run(scenario())
    assert sleep.waits == []


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        (errno.EROFS, True),
        (errno.EACCES, True),
        (errno.ENOTDIR, True),
        (errno.EEXIST, True),
        (errno.EISDIR, True),
        (errno.ENAMETOOLONG, True),
        (errno.ENOSPC, False),
        (errno.EIO, False),
        (None, False),  # an object store's error without an errno (throttling, the network)
    ],
)
def test_file_system_errors_are_fatal_when_retrying_cannot_help(
    code: int | None, fatal: bool
) -> None:
    from iotdata.sinks._parquet import translate_os_error  # noqa: PLC0415

    error = OSError(code, "failed") if code is not None else OSError("AWS Error SLOW_DOWN")
    translated = translate_os_error(error)
    assert isinstance(translated, SinkFatalError if fatal else SinkRetriableError)
