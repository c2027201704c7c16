"""The files of a durable log: append-only segments per partition and a small state file.

Layout of the folder::

    state.json                    topics and committed offsets, replaced atomically (tmp + rename)
    .lock                         locked (flock) while a log has the folder open
    topics/<topic>/<partition>/<base offset, 20 digits>.seg

A segment holds frames, one record each: body length (u32 LE), CRC32 of the body (u32 LE),
body; the body is the msgpack list ``[offset, timestamp_ms, key, value, [[name, value], ...]]``.
Reading stops at the first frame that is incomplete, fails its CRC or does not hold the next
offset: in the last segment that is a torn tail (a write cut short by a crash), truncated on
open; anywhere else the folder is corrupt (:class:`LogStorageError`).

``durability`` is when bytes reach the disk: ``"none"`` leaves them in Python's buffer until a
flush, a segment roll or close (a process crash can lose the latest records); ``"flush"`` hands
every record to the operating system at once (survives a crash of the process, not of the
machine); ``"fsync"`` also fsyncs every record, the state file and the folder (survives power
loss; slow).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import attrs
import msgpack

from iotdata.local._errors import LogStorageError
from iotdata.local._records import LogRecord, TopicPartition

__all__ = ["DURABILITIES", "DiskStore", "Durability", "decode_segment", "encode_record"]

log = logging.getLogger("iotdata.local")

Durability = Literal["none", "flush", "fsync"]
DURABILITIES = ("none", "flush", "fsync")
STATE_FORMAT = 1
_FRAME = struct.Struct("<II")


def encode_record(record: LogRecord) -> bytes:
    """One frame: the record as a segment stores it."""
    headers = [[name, data] for name, data in record.headers]
    fields = [record.offset, record.timestamp_ms, record.key, record.value, headers]
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes, topic: str, partition: int, offset: int) -> LogRecord | None:
    try:
        found, timestamp_ms, key, value, headers = msgpack.unpackb(body, raw=False)
        pairs = tuple((name, data) for name, data in headers)
    except Exception:  # any malformed body is a torn or corrupt frame
        return None
    if found != offset or type(timestamp_ms) is not int or type(key) is not bytes:
        return None
    if type(value) is not bytes or not all(
        type(name) is str and type(data) is bytes for name, data in pairs
    ):
        return None
    return LogRecord(topic, partition, offset, key, value, pairs, timestamp_ms)


def decode_segment(
    data: bytes, topic: str, partition: int, base: int
) -> tuple[list[LogRecord], int]:
    """The records of a segment starting at offset ``base``, and the bytes they fill: decoding
    stops at the first frame that is incomplete, corrupt or out of sequence."""
    records: list[LogRecord] = []
    view = memoryview(data)
    position = 0
    while position + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, position)
        start = position + _FRAME.size
        body = bytes(view[start : start + length])
        if len(body) < length or zlib.crc32(body) != crc:
            break
        record = _decode_body(body, topic, partition, base + len(records))
        if record is None:
            break
        records.append(record)
        position = start + length
    return records, position


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(path: Path) -> BinaryIO:
    handle = path.open("ab")
    try:
        import fcntl  # noqa: PLC0415 (POSIX only; elsewhere the folder is not locked)
    except ImportError:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise LogStorageError(f"{path.parent} is in use by another LocalLog") from exc
    return handle


@attrs.define(eq=False)
class _Segments:
    """The segment files of one partition; only the last is written."""

    folder: Path
    bases: list[int]
    size: int = 0  # bytes in the last segment
    file: BinaryIO | None = None

    def path(self, base: int) -> Path:
        return self.folder / f"{base:020d}.seg"


@attrs.define(eq=False)
class DiskStore:
    """The folder of a durable log. Build it with :meth:`open`; used under the log's lock."""

    folder: Path
    durability: Durability
    segment_bytes: int
    _lock_file: BinaryIO
    _partitions: dict[TopicPartition, _Segments] = attrs.Factory(dict)
    _failure: OSError | None = None
    truncated_bytes: int = 0

    @classmethod
    def open(cls, folder: Path, durability: Durability, segment_bytes: int) -> DiskStore:
        try:
            (folder / "topics").mkdir(parents=True, exist_ok=True)
            lock = _lock(folder / ".lock")
        except OSError as exc:
            raise LogStorageError(f"cannot use {folder} for a log: {exc}") from exc
        return cls(folder, durability, segment_bytes, lock)

    # ------------------------------------------------------------------ state file

    def load_state(self) -> dict[str, Any]:
        path = self.folder / "state.json"
        try:
            state: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {"format": STATE_FORMAT, "topics": {}, "offsets": {}}
        except (OSError, ValueError) as exc:
            raise LogStorageError(f"cannot read {path}: {exc}") from exc
        if type(state) is not dict or state.get("format") != STATE_FORMAT:
            raise LogStorageError(f"{path} is not a state file of this version of iotdata")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        path = self.folder / "state.json"
        temporary = path.with_name("state.json.tmp")
        data = json.dumps(state, sort_keys=True).encode()
        try:
            with temporary.open("wb") as handle:
                handle.write(data)
                if self.durability == "fsync":
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            raise LogStorageError(f"cannot write {path}: {exc}") from exc
        if self.durability == "fsync":
            _fsync_folder(self.folder)

    # ------------------------------------------------------------------ recovery

    def replay(self, tp: TopicPartition) -> tuple[int, Iterator[LogRecord]]:
        """The first offset on disk and the records from there, segment by segment (a torn
        tail of the last segment is truncated once the iterator reaches it)."""
        folder = self.folder / "topics" / tp.topic / str(tp.partition)
        try:
            names = [p.stem for p in folder.glob("*.seg")] if folder.is_dir() else []
        except OSError as exc:
            raise LogStorageError(f"cannot list {folder}: {exc}") from exc
        segments = _Segments(folder, sorted(int(name) for name in names if name.isdigit()))
        self._partitions[tp] = segments
        return (segments.bases[0] if segments.bases else 0), self._read(tp, segments)

    def _read(self, tp: TopicPartition, segments: _Segments) -> Iterator[LogRecord]:
        expected = segments.bases[0] if segments.bases else 0
        for index, base in enumerate(segments.bases):
            path = segments.path(base)
            if base != expected:
                raise LogStorageError(f"{path}: a segment starting at offset {expected} is missing")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise LogStorageError(f"cannot read {path}: {exc}") from exc
            records, good = decode_segment(data, tp.topic, tp.partition, base)
            if good < len(data):
                if index < len(segments.bases) - 1:
                    raise LogStorageError(f"{path} is corrupt at byte {good}, before its tail")
                self._truncate(path, good, len(data))
            segments.size = good
            expected = base + len(records)
            yield from records

    def _truncate(self, path: Path, good: int, size: int) -> None:
        log.warning("%s: cut a torn tail of %d bytes after byte %d", path, size - good, good)
        try:
            os.truncate(path, good)
        except OSError as exc:
            raise LogStorageError(f"cannot truncate the torn tail of {path}: {exc}") from exc
        self.truncated_bytes += size - good

    # ------------------------------------------------------------------ writing

    def write(self, record: LogRecord) -> None:
        """Append ``record`` to its partition's last segment (rolling to a new one when full).

        After a failed write the store refuses every later one: the file may end in a partial
        frame, which only reopening the folder truncates.
        """
        if self._failure is not None:
            raise LogStorageError(f"an earlier write failed: {self._failure}; reopen the log")
        tp = TopicPartition(record.topic, record.partition)
        segments = self._partitions.get(tp)
        if segments is None:
            folder = self.folder / "topics" / tp.topic / str(tp.partition)
            segments = self._partitions[tp] = _Segments(folder, [])
        frame = encode_record(record)
        try:
            handle = self._active(segments, record.offset)
            handle.write(frame)
            segments.size += len(frame)
            if self.durability != "none":
                handle.flush()
            if self.durability == "fsync":
                os.fsync(handle.fileno())
        except OSError as exc:
            self._failure = exc
            raise LogStorageError(f"cannot write to {segments.folder}: {exc}") from exc

    def _active(self, segments: _Segments, offset: int) -> BinaryIO:
        if segments.file is not None and segments.size < self.segment_bytes:
            return segments.file
        if segments.file is None and segments.bases and segments.size < self.segment_bytes:
            segments.file = segments.path(segments.bases[-1]).open("ab")
            return segments.file
        if segments.file is not None:
            self._sync(segments.file)
            segments.file.close()
        segments.folder.mkdir(parents=True, exist_ok=True)
        segments.file = segments.path(offset).open("ab")
        segments.bases.append(offset)
        segments.size = 0
        if self.durability == "fsync":
            _fsync_folder(segments.folder)
        return segments.file

    def trim(self, tp: TopicPartition, start: int) -> None:
        """Delete the segments that hold only offsets below ``start`` (never the last one)."""
        segments = self._partitions.get(tp)
        while segments is not None and len(segments.bases) > 1 and segments.bases[1] <= start:
            path = segments.path(segments.bases.pop(0))
            try:
                path.unlink()
            except OSError as exc:
                log.warning("cannot delete %s (retention): %s", path, exc)

    def _sync(self, handle: BinaryIO) -> None:
        handle.flush()
        if self.durability == "fsync":
            os.fsync(handle.fileno())

    def flush(self) -> None:
        """Hand every buffered byte to the operating system (and fsync under ``"fsync"``)."""
        try:
            for segments in self._partitions.values():
                if segments.file is not None:
                    self._sync(segments.file)
        except OSError as exc:
            raise LogStorageError(f"cannot flush {self.folder}: {exc}") from exc

    def close(self) -> None:
        """Flush and release the folder (also when the flush fails, which then raises);
        after a failed write, nothing more is written."""
        try:
            if self._failure is None:
                self.flush()
        finally:
            for segments in self._partitions.values():
                if segments.file is not None:
                    with contextlib.suppress(OSError):
                        segments.file.close()
                    segments.file = None
            self._lock_file.close()
