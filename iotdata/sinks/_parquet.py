"""The Parquet sink: the cold path, files on a local disk or any pyarrow filesystem (S3, GCS...).

Layout under ``root``::

    readings/date=2024-05-01/bucket=03/telemetry-p3-o00000000000000001200.parquet
    aggregates/date=.../bucket=.../...
    alerts/date=.../bucket=.../...
    dead_letters/telemetry-p3-o00000000000000001200.parquet
    _iotdata/journal/telemetry/3.json

Rows go to the date (UTC) of their time and to a bucket of their device (crc32 of the id modulo
``buckets``); dead letters (records the sink refused, whose time may be what is wrong) to one
folder. A file is named after the source position of the first record flushed into it:
topic, partition and offset. A replay from that offset writes the same names, so it overwrites
instead of duplicating; the journal lists what each flush wrote, so that a replay whose flushes
end elsewhere also removes the files it supersedes. Records written without a position go to
files named after a digest of their keys. Files are written under a temporary name (starting
with ``.``, which dataset readers skip) and renamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import attrs

from iotdata._checks import check_int, check_path
from iotdata.errors import InvalidInputError
from iotdata.sinks import _settings as valid
from iotdata.sinks._arrow import Arrow, Piece, load_arrow, unique_pieces
from iotdata.sinks._errors import SinkError, SinkFatalError, SinkRetriableError
from iotdata.sinks._records import (
    Alert,
    PendingRecords,
    ReadingColumn,
    SourcePosition,
    WindowAggregate,
)
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._validate import RowLimits
from iotdata.sinks._writer import BufferedWriter, Opening

__all__ = ["ParquetSink", "ParquetWriter", "translate_os_error"]

log = logging.getLogger("iotdata.sinks")
T = TypeVar("T")

_DAY_US = 86_400_000_000
_EPOCH = _dt.date(1970, 1, 1)
#: Dates in folder names are years 1 to 9999.
PARQUET_LIMITS = RowLimits(ts_min=-62_135_596_800_000_000, ts_max=253_402_300_799_999_999)
#: Flushes remembered per source partition (a replay may go back this many flushes).
JOURNAL_ENTRIES = 64
_DICTIONARY_COLUMNS = {
    "readings": ["device_id", "metric", "value_text"],
    "aggregates": ["device_id", "metric"],
    "alerts": ["device_id", "detector", "metric", "severity"],
    "dead_letters": ["sink", "kind", "reason", "topic"],
}


def _positive(_self: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_int(attribute.name, value, minimum=1)


def _root(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_path("root", value)


def _filesystem(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(getattr(value, "create_dir", None)):
        raise InvalidInputError(
            f"filesystem must be a pyarrow.fs.FileSystem or None: {value!r:.60}"
        )


def _level(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_int("compression_level", value, minimum=-(2**17), maximum=22)


@attrs.frozen(kw_only=True)
class ParquetSink:
    """Parquet files under ``root``: a local folder, or a URI pyarrow knows (``s3://bucket/x``).

    ``filesystem`` is a ``pyarrow.fs.FileSystem`` to use instead (``root`` is then a path in
    it). ``buckets`` is the number of device buckets per date; ``row_group_rows`` the largest
    row group; ``compression_level`` the zstd level (None: pyarrow's default). ``durable``
    fsyncs local files and folders before a flush returns. ``flush_rows`` bounds the buffer and
    so the size of the files: the cold path wants large ones.
    """

    root: str | os.PathLike[str] = attrs.field(validator=_root)
    filesystem: Any = attrs.field(default=None, validator=_filesystem)
    buckets: int = attrs.field(default=8, validator=_positive)
    row_group_rows: int = attrs.field(default=262_144, validator=_positive)
    compression_level: int | None = attrs.field(default=None, validator=_level)
    durable: bool = attrs.field(default=True, validator=valid.flag)
    flush_rows: int = attrs.field(default=500_000, validator=valid.flush_rows)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=valid.retry)

    def open(self) -> Opening[ParquetWriter]:
        """Load pyarrow and make the root folder; await the result, or use ``async with``."""
        return Opening(self._open)

    async def _open(self) -> ParquetWriter:
        arrow = load_arrow()
        executor = ThreadPoolExecutor(1, thread_name_prefix="iotdata-parquet")
        loop = asyncio.get_running_loop()
        try:
            filesystem, base = await self.retry.call(
                lambda: loop.run_in_executor(executor, _opening, lambda: self._resolve(arrow)),
                what=f"opening {os.fspath(self.root)!r}",
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return ParquetWriter(self, arrow, filesystem, base, executor)

    def _resolve(self, arrow: Arrow) -> tuple[Any, str]:
        root = os.fspath(self.root)
        if self.filesystem is not None:
            filesystem, base = self.filesystem, root
        elif "://" in root:
            filesystem, base = arrow.fs.FileSystem.from_uri(root)
        else:
            filesystem, base = arrow.fs.LocalFileSystem(), os.path.abspath(root)
        base = base.rstrip("/")
        filesystem.create_dir(base, recursive=True)
        if isinstance(filesystem, arrow.fs.LocalFileSystem):
            _probe(base)
        return filesystem, base


def _probe(folder: str) -> None:
    """Create and remove a file in ``folder``: a folder we may not write to (permissions, a
    read-only mount) fails the open, not the first flush."""
    probe = os.path.join(folder, f".iotdata-probe-{uuid.uuid4().hex}")
    with open(probe, "xb"):
        pass
    os.remove(probe)


class ParquetWriter(BufferedWriter):
    """The writer of a :class:`ParquetSink`; made by ``ParquetSink.open()``."""

    stores_dead_letters = True

    def __init__(
        self,
        sink: ParquetSink,
        arrow: Arrow,
        filesystem: Any,
        base: str,
        executor: ThreadPoolExecutor,
    ) -> None:
        super().__init__(
            name=f"ParquetSink({os.fspath(sink.root)!r})",
            flush_rows=sink.flush_rows,
            retry=sink.retry,
            limits=PARQUET_LIMITS,
        )
        self._sink = sink
        self._arrow = arrow
        self._fs = filesystem
        self._base = base
        self._executor = executor
        self._local = isinstance(filesystem, arrow.fs.LocalFileSystem)
        self._buckets: dict[str, int] = {}
        self._journals: dict[tuple[str, int], list[tuple[int, list[str]]]] = {}

    async def persist(self, pending: PendingRecords) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _translated, lambda: self._persist(pending))

    async def release(self) -> None:
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ on the writer's thread

    def _persist(self, pending: PendingRecords) -> None:
        for position, group in pending.by_source():
            name = _file_name(position, group)
            files = self._write_readings(name, group.columns())
            files += self._write_rows("aggregates", name, group.aggregates(), _window_day)
            files += self._write_rows("alerts", name, group.alerts(), _alert_day)
            letters = group.dead_letters()
            if letters:
                table = self._arrow.dead_letters(letters)
                files.append(self._write_file("dead_letters", "dead_letters", name, table))
            if position is not None:
                self._record(position, files)

    def _write_readings(self, name: str, columns: Iterable[ReadingColumn]) -> list[str]:
        groups: dict[tuple[int, int], list[Piece]] = {}
        for column in columns:
            bucket = self._bucket(column.device_id)
            for day, piece in _pieces(column):
                groups.setdefault((day, bucket), []).append(piece)
        return [
            self._write_table("readings", day, bucket, name, self._arrow.readings(unique_pieces(p)))
            for (day, bucket), p in sorted(groups.items())
        ]

    def _write_rows(
        self,
        kind: str,
        name: str,
        rows: Sequence[WindowAggregate] | Sequence[Alert],
        day_of: Callable[[Any], int],
    ) -> list[str]:
        groups: dict[tuple[int, int], list[Any]] = {}
        for row in rows:
            groups.setdefault((day_of(row), self._bucket(row.device_id)), []).append(row)
        build = self._arrow.aggregates if kind == "aggregates" else self._arrow.alerts
        return [
            self._write_table(kind, day, bucket, name, build(group))
            for (day, bucket), group in sorted(groups.items())
        ]

    def _bucket(self, device_id: str) -> int:
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = zlib.crc32(device_id.encode("utf-8")) % self._sink.buckets
            self._buckets[device_id] = bucket
        return bucket

    def _write_table(self, kind: str, day: int, bucket: int, name: str, table: Any) -> str:
        width = len(str(self._sink.buckets - 1))
        folder = f"{kind}/date={(_EPOCH + _dt.timedelta(days=day)).isoformat()}"
        folder += f"/bucket={bucket:0{width}d}"
        return self._write_file(kind, folder, name, table)

    def _write_file(self, kind: str, folder: str, name: str, table: Any) -> str:
        """``table`` as ``{folder}/{name}.parquet`` (under a temporary name, then renamed)."""
        relative = f"{folder}/{name}.parquet"
        directory = f"{self._base}/{folder}"
        self._fs.create_dir(directory, recursive=True)
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            with self._fs.open_output_stream(temporary) as out:
                self._arrow.pq.write_table(
                    table,
                    out,
                    row_group_size=self._sink.row_group_rows,
                    compression="zstd",
                    compression_level=self._sink.compression_level,
                    use_dictionary=_DICTIONARY_COLUMNS[kind],
                )
            self._replace(temporary, f"{self._base}/{relative}")
        except BaseException:
            self._delete(temporary)
            raise
        return relative

    def _replace(self, temporary: str, final: str) -> None:
        if self._local and self._sink.durable:
            _fsync(temporary)
        self._fs.move(temporary, final)
        if self._local and self._sink.durable:
            _fsync(os.path.dirname(final))

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(path)

    # ------------------------------------------------------------------ the journal

    def _record(self, position: SourcePosition, files: list[str]) -> None:
        """Remove what earlier flushes from this offset on wrote and this one did not, then
        remember this flush."""
        key = (position.topic, position.partition)
        entries = self._journals.pop(key, None)
        if entries is None:
            entries = self._load_journal(key)
        first = position.offset
        stale = {f for offset, paths in entries if offset >= first for f in paths} - set(files)
        for relative in sorted(stale):
            log.info("%s: removing %s, superseded by a replay", self.name, relative)
            self._delete(f"{self._base}/{relative}")
        entries = [e for e in entries if e[0] < first] + [(first, files)]
        entries = entries[-JOURNAL_ENTRIES:]
        self._save_journal(key, entries)
        self._journals[key] = entries

    def _journal_path(self, key: tuple[str, int]) -> str:
        return f"{self._base}/_iotdata/journal/{quote(key[0], safe='')}/{key[1]}.json"

    def _load_journal(self, key: tuple[str, int]) -> list[tuple[int, list[str]]]:
        try:
            with self._fs.open_input_stream(self._journal_path(key)) as stream:
                document = json.loads(stream.read())
        except FileNotFoundError:
            return []
        return [(int(offset), list(files)) for offset, files in document["flushes"]]

    def _save_journal(self, key: tuple[str, int], entries: list[tuple[int, list[str]]]) -> None:
        path = self._journal_path(key)
        self._fs.create_dir(os.path.dirname(path), recursive=True)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        data = json.dumps({"flushes": entries}, separators=(",", ":")).encode()
        try:
            with self._fs.open_output_stream(temporary) as out:
                out.write(data)
            self._replace(temporary, path)
        except BaseException:
            self._delete(temporary)
            raise


def _pieces(column: ReadingColumn) -> Iterable[tuple[int, Piece]]:
    """The column cut by UTC date (one piece unless it crosses midnight)."""
    col = column.column
    if not len(col):
        return []
    first, last = min(col.ts) // _DAY_US, max(col.ts) // _DAY_US
    if first == last:
        return [
            (first, Piece(column.device_id, col.metric, col.seq, col.ts, col.values, column.kind))
        ]
    by_day: dict[int, list[int]] = {}
    for i, ts in enumerate(col.ts):
        by_day.setdefault(ts // _DAY_US, []).append(i)
    return [
        (
            day,
            Piece(
                column.device_id,
                col.metric,
                [col.seq[i] for i in rows],
                [col.ts[i] for i in rows],
                [col.values[i] for i in rows],
                column.kind,
            ),
        )
        for day, rows in by_day.items()
    ]


def _window_day(row: WindowAggregate) -> int:
    return row.window_start // _DAY_US


def _alert_day(row: Alert) -> int:
    return row.ts // _DAY_US


def _file_name(position: SourcePosition | None, group: PendingRecords) -> str:
    """``topic-p<partition>-o<offset>``, or ``keys-<digest>`` for records without a position."""
    if position is not None:
        return f"{quote(position.topic, safe='')}-p{position.partition}-o{position.offset:020d}"
    digest = hashlib.blake2b(digest_size=12)
    for column in group.columns():
        col = column.column
        digest.update(f"{column.device_id}\0{col.metric}\0".encode())
        digest.update(struct.pack(f"<{len(col)}q", *col.seq))
    for aggregate in group.aggregates():
        digest.update(repr((aggregate.key, aggregate.revision)).encode())
    for alert in group.alerts():
        digest.update(repr(alert.key).encode())
    for letter in group.dead_letters():
        digest.update(repr(letter.identity).encode())
    return f"keys-{digest.hexdigest()}"


def _fsync(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on some systems; nothing more to do there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _translated(operation: Callable[[], T]) -> T:
    """Run ``operation``, turning file system errors into sink errors."""
    try:
        return operation()
    except SinkError:
        raise
    except OSError as exc:
        raise translate_os_error(exc) from exc
    except (TypeError, ValueError) as exc:
        raise SinkFatalError(f"pyarrow refused the rows: {exc}") from exc


def _opening(operation: Callable[[], T]) -> T:
    """:func:`_translated` for the open: a root that cannot be made is a configuration error."""
    try:
        return _translated(operation)
    except SinkRetriableError as exc:
        if getattr(exc.__cause__, "errno", None) == errno.ENOENT:
            raise SinkFatalError(f"cannot make the Parquet root folder: {exc.__cause__}") from exc
        raise


#: File system errors that retrying will not cure: someone must change the configuration (a
#: root that is a file, a read-only mount, permissions, a name the file system cannot hold).
_FATAL_ERRNOS = {
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
    errno.EROFS: "a read-only file system",
    errno.ENOTDIR: "a path through something that is not a folder",
    errno.EEXIST: "something that is not a folder is in the way",
    errno.EISDIR: "a folder is in the way of a file",
    errno.ENAMETOOLONG: "a name too long for the file system",
    errno.ELOOP: "a loop of symbolic links",
    errno.EINVAL: "a name the file system refuses",
}


def translate_os_error(exc: OSError) -> SinkError:
    """The sink error for a file system error: fatal when retrying cannot help (see
    ``_FATAL_ERRNOS``), retriable otherwise (a full disk, an I/O or network error, an object
    store's throttling)."""
    why = _FATAL_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if why is None and isinstance(exc, PermissionError):
        why = "no permission"
    if why is None:
        return SinkRetriableError(f"writing Parquet files failed: {exc}")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        why += " (the root, or a folder under it, is not a folder)"
    return SinkFatalError(f"cannot write Parquet files, {why}: {exc}")
