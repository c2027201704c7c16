"""Sink benchmark: rows per second through the built-in sinks, side by side in one run.

What is measured
----------------
The input is ``--rows`` readings in batches of ``--batch-size`` (one device and one float metric
``temperature`` per batch, ``--devices`` devices, seq counting up per device). One timed run is
``write`` of every batch (each with its source position, one offset per batch, as the stream
runtime writes them), then ``flush``, on an open writer (opening and connecting are not
timed); the figure is the best of ``--repeats`` runs, each on a fresh table, file or folder.

* ``postgres``: ``PostgresSink`` with its defaults (the idempotent path: binary COPY into a temp
  staging table, then ``INSERT ... SELECT``, which first tries a plain insert in a savepoint and
  falls back to ``ON CONFLICT DO NOTHING``; a commit per 100k rows), impl ``iotdata``; against
  impl ``copy``: a raw binary COPY of the same rows straight into the same keyed table, one
  transaction, no staging, no conflict handling. The raw COPY uses the sink's own row encoder,
  so the two differ only by the idempotent path. ``postgres_vs_copy`` (impl ``ratio``) is
  iotdata over copy.
* ``postgres_on_conflict``: the sink with ``optimistic_insert=False`` (always ``ON CONFLICT``).
* ``postgres_replay``: the sink writing the same rows again into the filled table (every key
  conflicts: the fallback path, nothing is inserted).
* ``sqlite``: ``SqliteSink`` into a fresh file (WAL, ``synchronous=normal``,
  ``INSERT ... ON CONFLICT DO NOTHING``); ``sqlite_replay``: the same rows again.
* ``parquet``: ``ParquetSink`` into a fresh folder (zstd, fsync on).

Targets are printed as PASS/FAIL and do not change the exit status; a sink that fails does
(exit 1). ``--json PATH`` writes ``[{"case", "impl", "metric", "value"}, ...]`` with metric
``rows_per_s``.

Run
---
From the repository root, with PostgreSQL up (``scripts/services.sh up``)::

    python benchmarks/sinks.py                          # 200k rows, about a minute
    python benchmarks/sinks.py --quick --json /tmp/sinks.json   # smoke test, a few seconds
    python benchmarks/sinks.py --no-postgres            # SQLite and Parquet only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import _common

_common.ensure_repo_importable()

from _common import format_rate  # noqa: E402

from iotdata.model import Batch  # noqa: E402
from iotdata.sinks import (  # noqa: E402
    ParquetSink,
    PostgresSink,
    ReadingColumn,
    SourcePosition,
    SqliteSink,
)
from iotdata.sinks._pgcopy import HEADER, TRAILER, encode_column  # noqa: E402

DEFAULT_DSN = "postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test"
BASE_TS = 1_714_521_600_000_000  # 2024-05-01 00:00 UTC
COPY_CHUNK = 1 << 20


class Result(NamedTuple):
    case: str
    impl: str
    rows_per_s: float | None  # None: failed
    note: str = ""


def make_batches(rows: int, batch_size: int, devices: int) -> list[Batch]:
    batches = []
    next_seq = [0] * devices
    for index in range(rows // batch_size):
        device = index % devices
        first = next_seq[device]
        next_seq[device] += batch_size
        seqs = range(first, first + batch_size)
        ts = [BASE_TS + s * 1_000_000 + device for s in seqs]
        values = [20.0 + (s % 500) / 100 for s in seqs]
        batches.append(
            Batch.from_columns(f"device-{device:05d}", {"temperature": (ts, values, seqs)})
        )
    return batches


async def best_rate(
    setup: Callable[[], Awaitable[Any]],
    run: Callable[[Any], Awaitable[None]],
    rows: int,
    repeats: int,
) -> float:
    """Rows per second of the fastest ``run(setup())``; only ``run`` is timed, GC off."""
    best = float("inf")
    for _ in range(repeats):
        state = await setup()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            await run(state)
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return rows / best


async def write_all(writer: Any, batches: Sequence[Batch]) -> None:
    """Each batch as one record of partition 0 of a topic, as the stream runtime writes them."""
    for offset, batch in enumerate(batches):
        await writer.write(batch, position=SourcePosition("bench", 0, offset))
    await writer.flush()


# ------------------------------------------------------------------------------ PostgreSQL


async def postgres_results(dsn: str, batches: list[Batch], repeats: int) -> list[Result]:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    rows = sum(map(len, batches))
    prefix = f"bench_{uuid.uuid4().hex[:8]}_"
    table = sql.Identifier(f"{prefix}readings")
    sink = PostgresSink(dsn=dsn, table_prefix=prefix, create_tables=True)
    conflict_sink = PostgresSink(dsn=dsn, table_prefix=prefix, optimistic_insert=False)
    admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    writer = await sink.open()
    conflict_writer = await conflict_sink.open()
    try:

        async def empty_table() -> None:
            await admin.execute(sql.SQL("TRUNCATE {}").format(table))
            await admin.execute(sql.SQL("VACUUM ANALYZE {}").format(table))

        async def filled_table() -> None:
            await empty_table()
            await write_all(writer, batches)

        async def raw_copy(_: object) -> None:
            statement = sql.SQL(
                "COPY {} (device_id, seq, ts, metric, value, value_int, value_bool, value_text) "
                "FROM STDIN (FORMAT BINARY)"
            ).format(table)
            async with (
                admin.transaction(),
                admin.cursor() as cursor,
                cursor.copy(statement) as copy,
            ):
                held, size = [HEADER], len(HEADER)
                for batch in batches:
                    for column in batch.columns:
                        data = encode_column(ReadingColumn(batch.device_id, column, "float"))
                        held.append(data)
                        size += len(data)
                        if size >= COPY_CHUNK:
                            await copy.write(b"".join(held))
                            held, size = [], 0
                held.append(TRAILER)
                await copy.write(b"".join(held))

        results = []
        # Interleave the two sides of the ratio so that a slow moment hurts both alike.
        sink_best = copy_best = 0.0
        for _ in range(repeats):
            sink_best = max(
                sink_best,
                await best_rate(empty_table, lambda _: write_all(writer, batches), rows, 1),
            )
            copy_best = max(copy_best, await best_rate(empty_table, raw_copy, rows, 1))
        results += [Result("postgres", "iotdata", sink_best), Result("postgres", "copy", copy_best)]
        results.append(
            Result(
                "postgres_on_conflict",
                "iotdata",
                await best_rate(
                    empty_table, lambda _: write_all(conflict_writer, batches), rows, repeats
                ),
            )
        )
        results.append(
            Result(
                "postgres_replay",
                "iotdata",
                await best_rate(filled_table, lambda _: write_all(writer, batches), rows, repeats),
            )
        )
        return results
    finally:
        await writer.close()
        await conflict_writer.close()
        for kind in ("readings", "aggregates", "alerts", "dead_letters"):
            await admin.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(prefix + kind))
            )
        await admin.close()


# ------------------------------------------------------------------------------ SQLite, Parquet


async def sqlite_results(folder: Path, batches: list[Batch], repeats: int) -> list[Result]:
    rows = sum(map(len, batches))
    writers: list[Any] = []

    async def fresh() -> Any:
        path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
        writer = await SqliteSink(path=path).open()
        writers.append(writer)
        return writer

    async def filled() -> Any:
        writer = await fresh()
        await write_all(writer, batches)
        return writer

    async def run(writer: Any) -> None:
        await write_all(writer, batches)

    try:
        return [
            Result("sqlite", "iotdata", await best_rate(fresh, run, rows, repeats)),
            Result("sqlite_replay", "iotdata", await best_rate(filled, run, rows, repeats)),
        ]
    finally:
        for writer in writers:
            await writer.close()


async def parquet_results(folder: Path, batches: list[Batch], repeats: int) -> list[Result]:
    rows = sum(map(len, batches))
    writers: list[Any] = []

    async def fresh() -> Any:
        root = folder / f"lake-{uuid.uuid4().hex[:8]}"
        writer = await ParquetSink(root=root).open()
        writers.append(writer)
        return writer

    async def run(writer: Any) -> None:
        await write_all(writer, batches)

    try:
        return [Result("parquet", "iotdata", await best_rate(fresh, run, rows, repeats))]
    finally:
        for writer in writers:
            await writer.close()


# ------------------------------------------------------------------------------ report


class Target(NamedTuple):
    text: str
    passed: bool | None


def targets(rates: dict[tuple[str, str], float]) -> list[Target]:
    def check(text: str, value: float | None, floor: float, show: Callable[[float], str]) -> Target:
        if value is None:
            return Target(f"{text} (not run)", None)
        return Target(f"{text} ({show(value)})", value >= floor)

    sink, copy = rates.get(("postgres", "iotdata")), rates.get(("postgres", "copy"))
    ratio = sink / copy if sink and copy else None
    per_s = lambda v: f"{format_rate(v)} rows/s"  # noqa: E731
    return [
        check("PostgreSQL sink >= 0.6x raw binary COPY", ratio, 0.6, lambda v: f"{v:.2f}x"),
        check("PostgreSQL sink >= 100k rows/s", sink, 100e3, per_s),
        check("SQLite sink >= 70k rows/s", rates.get(("sqlite", "iotdata")), 70e3, per_s),
        check("Parquet sink >= 1M rows/s", rates.get(("parquet", "iotdata")), 1e6, per_s),
    ]


def report(results: list[Result], rows: int, batch_size: int) -> list[Target]:
    print(
        f"\nRows per second, write + flush of {rows} readings in batches of {batch_size} (best run)"
    )
    print(f"  {'case':<22}{'impl':<10}{'rows/s':>10}")
    for result in results:
        shown = "FAIL" if result.rows_per_s is None else format_rate(result.rows_per_s)
        print(f"  {result.case:<22}{result.impl:<10}{shown:>10}  {result.note}")
    rates = {(r.case, r.impl): r.rows_per_s for r in results if r.rows_per_s is not None}
    found = targets(rates)
    print("\nTargets (a slow, shared machine gives noisy figures)")
    label = {True: "PASS", False: "FAIL", None: "N/A "}
    for target in found:
        print(f"  {label[target.passed]}  {target.text}")
    return found


def json_rows(results: list[Result]) -> list[dict[str, Any]]:
    rows = [
        {"case": r.case, "impl": r.impl, "metric": "rows_per_s", "value": r.rows_per_s}
        for r in results
        if r.rows_per_s is not None
    ]
    rates = {(r.case, r.impl): r.rows_per_s for r in results}
    sink, copy = rates.get(("postgres", "iotdata")), rates.get(("postgres", "copy"))
    if sink and copy:
        rows.append(
            {
                "case": "postgres_vs_copy",
                "impl": "ratio",
                "metric": "rows_per_s",
                "value": sink / copy,
            }
        )
    return rows


async def measure(name: str, run: Awaitable[list[Result]]) -> list[Result]:
    print(f"[sinks] {name}", file=sys.stderr, flush=True)
    try:
        return await run
    except Exception as exc:
        return [Result(name, "iotdata", None, f"{type(exc).__name__}: {exc}")]


async def main_async(args: argparse.Namespace) -> int:
    batches = make_batches(args.rows, args.batch_size, args.devices)
    rows = sum(map(len, batches))
    folder = Path(tempfile.mkdtemp(prefix="iotdata-bench-sinks-", dir=args.tmp))
    results: list[Result] = []
    try:
        if not args.no_postgres:
            results += await measure(
                "postgres", postgres_results(args.postgres, batches, args.repeats)
            )
        results += await measure("sqlite", sqlite_results(folder, batches, args.repeats))
        results += await measure("parquet", parquet_results(folder, batches, args.repeats))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results, rows, args.batch_size)
    failed = [r for r in results if r.rows_per_s is None]
    for result in failed:
        print(f"FAILED {result.case}: {result.note}")
    if args.json:
        Path(args.json).write_text(json.dumps(json_rows(results), indent=1) + "\n")
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="readings per run")
    parser.add_argument("--batch-size", type=int, default=1_000, help="readings per batch")
    parser.add_argument("--devices", type=int, default=100, help="distinct device ids")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (best kept)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("IOTDATA_POSTGRES_DSN") or DEFAULT_DSN,
        help="PostgreSQL DSN (default: IOTDATA_POSTGRES_DSN or the local test database)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL cases")
    parser.add_argument("--tmp", default=None, help="folder for the SQLite and Parquet files")
    parser.add_argument("--quick", action="store_true", help="20k rows, one run: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON records")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = min(args.rows, 20_000), 1
    if args.rows < args.batch_size:
        parser.error("--rows must be at least --batch-size")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
