"""PostgreSQL binary COPY, written straight from batch columns (no per-reading objects).

A column whose values are all of one type (the usual case: all floats) has rows of one fixed
width: the rows are made as one repeated template, and each varying field (seq, ts, value) is
packed once for the whole column and spread into the template with strided slice assignments,
so the work per reading stays in C. Other columns (text, missing or mixed values) go row by row.

Row layouts follow ``_sql.READING_COLUMNS``, ``AGGREGATE_COLUMNS`` and ``ALERT_COLUMNS``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import sub

from iotdata.model import Value
from iotdata.sinks._json import encode_extra
from iotdata.sinks._records import Alert, ReadingColumn, WindowAggregate

__all__ = ["HEADER", "TRAILER", "encode_aggregates", "encode_alerts", "encode_column"]

#: Signature, flags and header extension length of the binary COPY format.
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
#: The field count -1 that ends the data.
TRAILER = b"\xff\xff"
#: Microseconds from 1970-01-01 (our ts) to 2000-01-01 (PostgreSQL's timestamp epoch).
PG_EPOCH_US = 946_684_800_000_000

NULL = b"\xff\xff\xff\xff"
_INT8 = struct.pack(">i", 8)
_BOOL = struct.pack(">i", 1)
_pack_count = struct.Struct(">h").pack
_pack_len = struct.Struct(">i").pack
_pack_int8 = struct.Struct(">iq").pack
_pack_float8 = struct.Struct(">id").pack
_pack_bool = struct.Struct(">i?").pack
_pack_seq_ts = struct.Struct(">iqiq").pack

_READING_FIELDS = _pack_count(8)
_AGGREGATE_FIELDS = _pack_count(10)
#: The version byte that starts a jsonb value in binary format.
_JSONB_VERSION = b"\x01"
_ALERT_FIELDS = _pack_count(8)

# The value fields (value, value_int, value_bool, value_text) around a single-type value:
# (bytes before the value, struct code of the value, bytes after it).
_FIXED = {
    "float": (_INT8, "d", NULL * 3),
    "int": (NULL + _INT8, "q", NULL * 2),
    "bool": (NULL * 2 + _BOOL, "?", NULL),
}


def text(value: str) -> bytes:
    """A text field: length and UTF-8 bytes."""
    data = value.encode("utf-8")
    return _pack_len(len(data)) + data


def jsonb(document: str) -> bytes:
    """A jsonb field: length, version 1, and the JSON text in UTF-8."""
    data = _JSONB_VERSION + document.encode("utf-8")
    return _pack_len(len(data)) + data


def encode_column(column: ReadingColumn) -> bytes:
    """The COPY rows of one reading column."""
    kind = column.kind
    col = column.column
    head = _READING_FIELDS + text(column.device_id)
    metric = text(col.metric)
    ts = map(sub, col.ts, repeat(PG_EPOCH_US))
    if kind == "null":
        return _fixed_rows(
            len(col), [head + _INT8, "q", _INT8, "q", metric + NULL * 4], [col.seq, ts]
        )
    if kind in _FIXED:
        before, code, after = _FIXED[kind]
        segments: list[bytes | str] = [head + _INT8, "q", _INT8, "q", metric + before, code, after]
        return _fixed_rows(len(col), segments, [col.seq, ts, col.values])
    return b"".join(
        b"".join((head, _pack_seq_ts(8, seq, 8, t), metric, _value_fields(value)))
        for seq, t, value in zip(col.seq, ts, col.values, strict=True)
    )


def _fixed_rows(
    count: int, segments: Sequence[bytes | str], columns: Sequence[Iterable[object]]
) -> bytes:
    """``count`` rows of one width: ``segments`` alternate constant bytes and struct codes, and
    the i-th code takes its values from ``columns[i]``."""
    template = bytearray()
    fields: list[tuple[int, str]] = []
    for segment in segments:
        if isinstance(segment, bytes):
            template += segment
        else:
            fields.append((len(template), segment))
            template += bytes(struct.calcsize(segment))
    width = len(template)
    rows = bytearray(template * count)
    for (offset, code), values in zip(fields, columns, strict=True):
        packed = struct.pack(f">{count}{code}", *values)
        size = struct.calcsize(code)
        for byte in range(size):
            rows[offset + byte :: width] = packed[byte::size]
    return bytes(rows)


def _value_fields(value: Value) -> bytes:
    kind = type(value)
    if kind is float:
        return _pack_float8(8, value) + NULL * 3
    if kind is int:
        return NULL + _pack_int8(8, value) + NULL * 2
    if kind is bool:
        return NULL * 2 + _pack_bool(1, value) + NULL
    if kind is str:
        return NULL * 3 + text(value)  # type: ignore[arg-type]
    return NULL * 4


def _float_field(value: float | None) -> bytes:
    return NULL if value is None else _pack_float8(8, float(value))


def _ts_field(ts: int) -> bytes:
    return _pack_int8(8, ts - PG_EPOCH_US)


def encode_aggregates(aggregates: Iterable[WindowAggregate]) -> bytes:
    """The COPY rows of window aggregates."""
    return b"".join(
        b"".join(
            (
                _AGGREGATE_FIELDS,
                text(a.device_id),
                text(a.metric),
                _ts_field(a.window_start),
                _ts_field(a.window_end),
                _pack_int8(8, a.count),
                _float_field(a.min),
                _float_field(a.max),
                _float_field(a.sum),
                _pack_int8(8, a.revision),
                jsonb(encode_extra(a.extra)),
            )
        )
        for a in aggregates
    )


def encode_alerts(alerts: Iterable[Alert]) -> bytes:
    """The COPY rows of alerts."""
    return b"".join(
        b"".join(
            (
                _ALERT_FIELDS,
                text(a.device_id),
                text(a.detector),
                _ts_field(a.ts),
                NULL if a.metric is None else text(a.metric),
                _float_field(a.value),
                _float_field(a.score),
                text(a.severity),
                text(a.message),
            )
        )
        for a in alerts
    )
