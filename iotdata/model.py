"""Readings and columnar batches: the data model every layer shares.

A **reading** is one measurement: ``(device_id, metric, ts, value, seq)``.

* ``ts`` is an integer: **microseconds since the Unix epoch, UTC** (the unit of PostgreSQL
  ``timestamptz`` and Parquet ``TIMESTAMP(us)``). :func:`ts_from_datetime` and
  :func:`ts_to_datetime` convert.
* ``value`` is a ``float`` (kept bit-exact, NaN payloads, infinities and ``-0.0`` included), an
  ``int`` from -2**63 to 2**64-1, a ``bool``, a short ``str`` (status metrics) or ``None``
  (a missing value).
* ``seq`` is the per-device sequence number assigned by the device client. ``(device_id, seq)``
  identifies a reading for ever: it is the idempotency key of the whole pipeline.

A **batch** holds readings of one device, grouped in one :class:`Column` per metric. It is the
unit on the wire and inside the stream runtime; :class:`Reading` objects are made only when you
iterate over a batch.
"""

from __future__ import annotations

import datetime as _dt
import operator
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Union

import attrs

from iotdata.errors import InvalidInputError, NotFoundError

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_STRING_LENGTH",
    "Batch",
    "Column",
    "Reading",
    "Value",
    "ts_from_datetime",
    "ts_to_datetime",
    "validate_device_id",
]

#: A reading's value. ``None`` is a missing value.
Value = Union[float, int, bool, str, None]  # noqa: UP007 (a runtime alias, Python 3.10 compatible)

#: Longest device id or metric name, in characters.
MAX_NAME_LENGTH = 128
#: Longest string value, in characters.
MAX_STRING_LENGTH = 1024

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_TS_MIN = -(2**63)
_TS_MAX = 2**63 - 1
_VALUE_TYPES = frozenset({float, int, bool, str, type(None)})
_FORBIDDEN_IN_ID = frozenset("+#/")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_pack_double = struct.Struct("<d").pack


def validate_device_id(device_id: object) -> str:
    """Return ``device_id`` if it can name a device in MQTT topics and Kafka keys.

    Raises:
        InvalidInputError: empty, longer than :data:`MAX_NAME_LENGTH`, not printable (control
            characters) or containing ``+``, ``#`` or ``/``.
    """
    name = _check_name("device id", device_id)
    if not _FORBIDDEN_IN_ID.isdisjoint(name):
        raise InvalidInputError(f"device id {name!r} must not contain '+', '#' or '/'")
    return name


def _check_name(what: str, name: object) -> str:
    if type(name) is not str:
        raise InvalidInputError(f"{what} must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"{what} must have 1 to {MAX_NAME_LENGTH} characters: {name!r}")
    if not name.isprintable():
        raise InvalidInputError(f"{what} {name!r} contains control characters")
    return name


def ts_from_datetime(moment: _dt.datetime) -> int:
    """Microseconds since the epoch for an aware datetime (naive datetimes are taken as UTC).

    Raises:
        InvalidInputError: ``moment`` is not a ``datetime.datetime``.
    """
    if not isinstance(moment, _dt.datetime):
        raise InvalidInputError(f"moment must be a datetime.datetime, not {type(moment).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ts_to_datetime(ts: int) -> _dt.datetime:
    """The aware UTC datetime for a timestamp in microseconds since the epoch.

    Raises:
        InvalidInputError: ``ts`` is not an int, or outside the years 1 to 9999 a datetime holds.
    """
    if type(ts) is not int:
        raise InvalidInputError(f"ts must be an int (microseconds), not {type(ts).__name__}")
    try:
        return _EPOCH + _dt.timedelta(microseconds=ts)
    except OverflowError:
        raise InvalidInputError(f"ts {ts} lies outside the years a datetime holds") from None


@attrs.frozen
class Reading:
    """One measurement. ``ts`` is in microseconds since the Unix epoch, UTC."""

    device_id: str
    metric: str
    ts: int
    value: Value
    seq: int


def _normalize_value(value: object) -> Value:
    """Map look-alikes (numpy scalars, IntEnum, str subclasses) onto the plain value types."""
    if value is None or type(value) in _VALUE_TYPES:
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return str(value)
    if hasattr(value, "__index__"):  # int subclasses, numpy integers
        return operator.index(value)
    if hasattr(value, "__float__"):  # float subclasses, numpy floats
        return float(value)
    raise InvalidInputError(
        f"unsupported value {value!r} of type {type(value).__name__}: "
        "use float, int, bool, str or None"
    )


def _check_ints(what: str, values: Sequence[int], low: int, high: int) -> None:
    if set(map(type, values)) - {int}:
        bad = next(v for v in values if type(v) is not int)
        raise InvalidInputError(f"{what} must be ints, got {bad!r}")
    if values and (min(values) < low or max(values) > high):
        raise InvalidInputError(f"{what} out of range [{low}, {high}]")


def _tupled(values: Iterable[object]) -> tuple[object, ...]:
    if type(values) is tuple:
        return values
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise InvalidInputError(
            f"a column takes sequences of ts, values and seq, not {values!r:.60}"
        )
    return tuple(values)


def _exact(values: tuple[Value, ...]) -> tuple[object, ...]:
    """Comparison key: floats by their bits (NaN == NaN, -0.0 != 0.0), and 1 != 1.0 != True."""
    return tuple((float, _pack_double(v)) if type(v) is float else (type(v), v) for v in values)


@attrs.frozen
class Column:
    """The readings of one metric in a batch: three aligned sequences of the same length.

    ``ts`` are microseconds since the epoch, ``values`` the values, ``seq`` the per-device
    sequence numbers. Sequences are stored as tuples. Values of numpy or enum subclasses are
    converted to the plain Python types; anything else raises :class:`InvalidInputError`.
    Columns compare values exactly: floats bit for bit, and ``1``, ``1.0`` and ``True`` differ.
    """

    metric: str
    ts: tuple[int, ...] = attrs.field(converter=_tupled)
    values: tuple[Value, ...] = attrs.field(converter=_tupled, eq=_exact)
    seq: tuple[int, ...] = attrs.field(converter=_tupled)

    def __attrs_post_init__(self) -> None:
        _check_name("metric name", self.metric)
        size = len(self.ts)
        if len(self.values) != size or len(self.seq) != size:
            raise InvalidInputError(
                f"column {self.metric!r}: ts, values and seq must have the same length "
                f"({size}, {len(self.values)}, {len(self.seq)})"
            )
        _check_ints(f"column {self.metric!r} timestamps", self.ts, _TS_MIN, _TS_MAX)
        _check_ints(f"column {self.metric!r} seq", self.seq, 0, _TS_MAX)
        self._check_values()

    def _check_values(self) -> None:
        kinds = set(map(type, self.values))
        if not kinds <= _VALUE_TYPES:
            object.__setattr__(self, "values", tuple(map(_normalize_value, self.values)))
            kinds = set(map(type, self.values))
        if int in kinds:
            ints = [v for v in self.values if type(v) is int]
            if min(ints) < INT_MIN or max(ints) > INT_MAX:
                raise InvalidInputError(
                    f"column {self.metric!r}: int values must lie in [-2**63, 2**64-1]"
                )
        if str in kinds:
            strings = [v for v in self.values if type(v) is str]
            longest = max(map(len, strings))
            if longest > MAX_STRING_LENGTH:
                raise InvalidInputError(
                    f"column {self.metric!r}: string values are limited to "
                    f"{MAX_STRING_LENGTH} characters, got {longest}"
                )
            for text in strings:
                if not text.isascii():
                    _check_utf8(self.metric, text)

    @classmethod
    def _trusted(
        cls, metric: str, ts: tuple[int, ...], values: tuple[Value, ...], seq: tuple[int, ...]
    ) -> Column:
        """Build a column from parts already checked (by the decoder), skipping validation."""
        column = object.__new__(cls)
        object.__setattr__(column, "metric", metric)
        object.__setattr__(column, "ts", ts)
        object.__setattr__(column, "values", values)
        object.__setattr__(column, "seq", seq)
        return column

    def __len__(self) -> int:
        return len(self.ts)


def _check_utf8(metric: str, text: str) -> None:
    """Strings travel as UTF-8: one with a lone surrogate cannot be encoded."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"column {metric!r}: string values must be valid Unicode (no lone surrogates): {text!r}"
        ) from None


def _columns(columns: Iterable[Column]) -> tuple[Column, ...]:
    if type(columns) is tuple:
        return columns
    if isinstance(columns, (str, bytes, bytearray, Mapping)) or not isinstance(columns, Iterable):
        raise InvalidInputError(f"batch columns must be a sequence of Column, not {columns!r:.60}")
    return tuple(columns)


@attrs.frozen
class Batch:
    """Readings of one device, one :class:`Column` per metric.

    ``len(batch)`` is the number of readings; iterating yields :class:`Reading` objects, column
    by column in the order of the columns.
    """

    device_id: str = attrs.field()
    columns: tuple[Column, ...] = attrs.field(converter=_columns)

    def __attrs_post_init__(self) -> None:
        validate_device_id(self.device_id)
        if not all(type(c) is Column for c in self.columns):
            raise InvalidInputError("batch columns must be Column objects")
        metrics = [c.metric for c in self.columns]
        if len(set(metrics)) != len(metrics):
            raise InvalidInputError(f"batch for {self.device_id!r} repeats a metric: {metrics}")

    @classmethod
    def from_columns(
        cls,
        device_id: str,
        columns: Mapping[str, tuple[Sequence[int], Sequence[Value], Sequence[int]]],
    ) -> Batch:
        """Build a batch from ``{metric: (ts, values, seq)}``.

        Raises:
            InvalidInputError: ``columns`` is no such mapping, or a column is invalid.
        """
        if not isinstance(columns, Mapping):
            raise InvalidInputError(
                f"columns must map metric names to (ts, values, seq): {columns!r:.60}"
            )
        built = []
        for metric, parts in columns.items():
            if not isinstance(parts, (tuple, list)) or len(parts) != 3:
                raise InvalidInputError(
                    f"column {metric!r:.60} must be (ts, values, seq): {parts!r:.60}"
                )
            built.append(Column(metric, *parts))
        return cls(device_id, built)

    @classmethod
    def from_readings(cls, readings: Iterable[Reading]) -> Batch:
        """Group readings of one device into columns, keeping their order within each metric.

        Raises:
            InvalidInputError: ``readings`` is not an iterable of :class:`Reading`, is empty,
                holds several devices, or a reading is invalid.
        """
        if isinstance(readings, (str, bytes, bytearray, Mapping)) or not isinstance(
            readings, Iterable
        ):
            raise InvalidInputError(f"readings must be an iterable of Reading: {readings!r:.60}")
        device_id: str | None = None
        grouped: dict[str, tuple[list[int], list[Value], list[int]]] = {}
        for reading in readings:
            if type(reading) is not Reading:
                raise InvalidInputError(f"expected a Reading, got {type(reading).__name__}")
            if device_id is None:
                device_id = reading.device_id
            elif reading.device_id != device_id:
                raise InvalidInputError(
                    f"a batch holds one device: got {device_id!r} and {reading.device_id!r}"
                )
            ts, values, seq = grouped.setdefault(reading.metric, ([], [], []))
            ts.append(reading.ts)
            values.append(reading.value)
            seq.append(reading.seq)
        if device_id is None:
            raise InvalidInputError("from_readings needs at least one reading")
        return cls.from_columns(device_id, grouped)

    @classmethod
    def _trusted(cls, device_id: str, columns: tuple[Column, ...]) -> Batch:
        batch = object.__new__(cls)
        object.__setattr__(batch, "device_id", device_id)
        object.__setattr__(batch, "columns", columns)
        return batch

    def __len__(self) -> int:
        return sum(len(c.ts) for c in self.columns)

    def __iter__(self) -> Iterator[Reading]:
        device_id = self.device_id
        for column in self.columns:
            metric = column.metric
            for ts, value, seq in zip(column.ts, column.values, column.seq, strict=True):
                yield Reading(device_id, metric, ts, value, seq)

    def column(self, metric: str) -> Column:
        """The column of ``metric``; raises :class:`~iotdata.errors.NotFoundError` (a
        ``KeyError``) when the batch has none."""
        for column in self.columns:
            if column.metric == metric:
                return column
        raise NotFoundError(f"batch of {self.device_id!r} has no metric {metric!r:.60}")
