"""The table layout the SQL sinks share, as column lists (the DDL lives with each sink).

readings    device_id, seq, ts, metric, value, value_int, value_bool, value_text
            key (device_id, seq); a value sits in the column of its type, all four NULL
            for a missing value
aggregates  device_id, metric, window_start, window_end, count, min, max, sum, revision, extra
            key (device_id, metric, window_start); the highest revision wins; extra is a JSON
            object of the further statistics (non-finite floats as "NaN", "Infinity", ...)
alerts      device_id, detector, ts, metric, value, score, severity, message
            key (device_id, detector, ts); the first one stays
dead_letters sink, kind, key, device_id, reason, detail, record, topic, partition, offset
            key (sink, kind, key); the first one stays; record is the refused record as
            ASCII strict JSON (see :func:`iotdata.sinks._json.dead_letter_fields`), topic,
            partition and offset the source record that carried it (NULL when none did)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from iotdata.errors import InvalidInputError
from iotdata.model import Value
from iotdata.sinks._json import encode_extra, record_json
from iotdata.sinks._records import Alert, DeadLetter, ReadingColumn, ValueKind, WindowAggregate

__all__ = [
    "AGGREGATE_COLUMNS",
    "AGGREGATE_EXTRA",
    "AGGREGATE_KEY",
    "ALERT_COLUMNS",
    "ALERT_KEY",
    "DEAD_LETTER_COLUMNS",
    "DEAD_LETTER_KEY",
    "READING_COLUMNS",
    "READING_KEY",
    "VALUE_COLUMN",
    "aggregate_rows",
    "alert_rows",
    "check_prefix",
    "dead_letter_rows",
    "reading_rows",
    "split_values",
]

READING_COLUMNS = (
    "device_id",
    "seq",
    "ts",
    "metric",
    "value",
    "value_int",
    "value_bool",
    "value_text",
)
READING_KEY = ("device_id", "seq")
AGGREGATE_COLUMNS = (
    "device_id",
    "metric",
    "window_start",
    "window_end",
    "count",
    "min",
    "max",
    "sum",
    "revision",
    "extra",
)
AGGREGATE_KEY = ("device_id", "metric", "window_start")
#: The aggregates column added last: tables made by an earlier iotdata lack it until migrated.
AGGREGATE_EXTRA = "extra"
ALERT_COLUMNS = ("device_id", "detector", "ts", "metric", "value", "score", "severity", "message")
ALERT_KEY = ("device_id", "detector", "ts")
DEAD_LETTER_COLUMNS = (
    "sink",
    "kind",
    "key",
    "device_id",
    "reason",
    "detail",
    "record",
    "topic",
    "partition",
    "offset",
)
DEAD_LETTER_KEY = ("sink", "kind", "key")

#: The value column of each single-type kind of column (``null`` columns have none).
VALUE_COLUMN: dict[ValueKind, str] = {
    "float": "value",
    "int": "value_int",
    "bool": "value_bool",
    "str": "value_text",
}

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it makes plain SQL table names (``iotdata_``), else InvalidInputError."""
    if type(prefix) is not str or (prefix and not _PREFIX.match(prefix)):
        raise InvalidInputError(f"table_prefix must be letters, digits and _, not {prefix!r:.60}")
    return prefix


def split_values(values: Sequence[Value]) -> Iterator[tuple[Value, Value, Value, Value]]:
    """``(value, value_int, value_bool, value_text)`` per value of a mixed column."""
    for v in values:
        kind = type(v)
        if kind is float:
            yield (v, None, None, None)
        elif kind is int:
            yield (None, v, None, None)
        elif kind is bool:
            yield (None, None, v, None)
        elif kind is str:
            yield (None, None, None, v)
        else:
            yield (None, None, None, None)


def reading_rows(column: ReadingColumn) -> Iterator[tuple[object, ...]]:
    """The full rows (every reading column, in order) of a column of any kind."""
    col = column.column
    device, metric = column.device_id, col.metric
    for seq, ts, typed in zip(col.seq, col.ts, split_values(col.values), strict=False):
        yield (device, seq, ts, metric, *typed)


def aggregate_rows(aggregates: Iterable[WindowAggregate]) -> Iterator[tuple[object, ...]]:
    for a in aggregates:
        yield (
            a.device_id,
            a.metric,
            a.window_start,
            a.window_end,
            a.count,
            _float(a.min),
            _float(a.max),
            _float(a.sum),
            a.revision,
            encode_extra(a.extra),
        )


def alert_rows(alerts: Iterable[Alert]) -> Iterator[tuple[object, ...]]:
    for a in alerts:
        yield (
            a.device_id,
            a.detector,
            a.ts,
            a.metric,
            _float(a.value),
            _float(a.score),
            a.severity,
            a.message,
        )


def dead_letter_rows(letters: Iterable[DeadLetter]) -> Iterator[tuple[object, ...]]:
    for d in letters:
        at = d.position
        yield (
            d.sink,
            d.kind,
            d.key,
            d.device_id,
            d.reason,
            d.detail,
            record_json(d),
            None if at is None else at.topic,
            None if at is None else at.partition,
            None if at is None else at.offset,
        )


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)
