"""Checking records before a writer buffers them: the whole ``write`` call, or nothing.

A record a sink cannot store raises :class:`BadRowError` naming it, before anything of the call
is kept, so a bad row never leads to a partial or silent write. The checks are columnar where
the data is: a float column costs one ``set(map(type, ...))`` and, where NaN is refused, one
``sum``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import attrs

from iotdata._checks import check_bool, check_int
from iotdata.errors import InvalidInputError
from iotdata.model import MAX_NAME_LENGTH, Batch, Column, Reading, validate_device_id
from iotdata.sinks._errors import BadRowError
from iotdata.sinks._records import (
    Alert,
    Chunk,
    DeadLetter,
    ReadingColumn,
    RecordKind,
    SourcePosition,
    ValueKind,
    WindowAggregate,
)

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_EXTRA",
    "MAX_MESSAGE_LENGTH",
    "RowLimits",
    "make_chunk",
    "sort_out",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Longest alert message, in characters.
MAX_MESSAGE_LENGTH = 4096
#: Most statistics in the ``extra`` of one aggregate.
MAX_EXTRA = 256

_KINDS: dict[type, ValueKind] = {
    float: "float",
    int: "int",
    bool: "bool",
    str: "str",
    type(None): "null",
}
_RECORD_TYPES = (Batch, Reading, WindowAggregate, Alert, DeadLetter)


def _ts(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    check_int(attribute.name, value, minimum=INT64_MIN, maximum=INT64_MAX)


def _flag(_: object, attribute: attrs.Attribute[bool], value: object) -> None:
    check_bool(attribute.name, value)


@attrs.frozen(kw_only=True)
class RowLimits:
    """What a sink's columns hold beyond the shared schema (int64 integers, UTF-8 text).

    ``ts_min``/``ts_max`` bound timestamps (microseconds since the epoch), ``allow_nan`` says
    whether float columns keep NaN, ``allow_nul`` whether text keeps the NUL character.
    """

    ts_min: int = attrs.field(default=INT64_MIN, validator=_ts)
    ts_max: int = attrs.field(default=INT64_MAX, validator=_ts)
    allow_nan: bool = attrs.field(default=True, validator=_flag)
    allow_nul: bool = attrs.field(default=True, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if self.ts_min > self.ts_max:
            raise InvalidInputError(
                f"ts_min ({self.ts_min}) must not exceed ts_max ({self.ts_max})"
            )


def make_chunk(
    records: object,
    position: SourcePosition | None,
    limits: RowLimits,
    kinds: Collection[RecordKind],
    *,
    dead_letters: bool = False,
    start: int = 0,
) -> Chunk:
    """Check the records of one ``write`` call; raise :class:`BadRowError` on the first bad one.

    ``dead_letters`` says whether the sink keeps :class:`DeadLetter` records; ``start`` is the
    index of the first record (in the messages and ``BadRowError.index``).
    """
    if position is not None and not isinstance(position, SourcePosition):
        raise BadRowError(f"position must be a SourcePosition, not {type(position).__name__}")
    columns: list[ReadingColumn] = []
    batches: list[Batch] = []
    aggregates: list[WindowAggregate] = []
    alerts: list[Alert] = []
    letters: list[DeadLetter] = []
    loose: dict[object, list[tuple[int, Reading]]] = {}
    for index, item in enumerate(_items(records), start):
        if isinstance(item, Batch):
            _check_kind(index, "readings", kinds)
            columns += _check_batch(index, item, limits)
            batches.append(item)
        elif isinstance(item, WindowAggregate):
            _check_kind(index, "aggregates", kinds)
            aggregates.append(_check_aggregate(index, item, limits))
        elif isinstance(item, Alert):
            _check_kind(index, "alerts", kinds)
            alerts.append(_check_alert(index, item, limits))
        elif isinstance(item, Reading):
            _check_kind(index, "readings", kinds)
            loose.setdefault(item.device_id, []).append((index, item))
        elif isinstance(item, DeadLetter):
            letters.append(_check_dead_letter(index, item, dead_letters))
        else:
            reason = (
                f"expected a Batch, Reading, WindowAggregate or Alert, got {type(item).__name__}"
            )
            raise BadRowError(f"record #{index}: {reason}", index=index, record=item, reason=reason)
    for group in loose.values():
        batch, checked = _check_readings(group, limits)
        columns += checked
        batches.append(batch)
    return Chunk(
        position, tuple(columns), tuple(aggregates), tuple(alerts), tuple(batches), tuple(letters)
    )


def sort_out(
    records: object,
    limits: RowLimits,
    kinds: Collection[RecordKind],
    *,
    dead_letters: bool = False,
) -> tuple[list[object], list[BadRowError]]:
    """``records`` split into those :func:`make_chunk` takes and why it refuses the others.

    A batch with bad readings is split: its good readings stay in a batch of their own (among
    the good records, in its place), and each bad one has a :class:`BadRowError` whose
    ``record`` is that reading. Every error's ``index`` is the record's index in ``records``.
    The slow path, for after a ``write`` refused: each record is checked on its own.
    """
    good: list[object] = []
    bad: list[BadRowError] = []
    for index, item in enumerate(_items(records)):
        refusal = _refusal(index, item, limits, kinds, dead_letters)
        if refusal is None:
            good.append(item)
        elif isinstance(item, Batch) and isinstance(refusal.record, Reading):
            kept, refused = _split_batch(index, item, limits)
            bad += refused
            if kept is not None:
                good.append(kept)
        else:
            bad.append(refusal)
    return good, bad


def _refusal(
    index: int, item: object, limits: RowLimits, kinds: Collection[RecordKind], dead_letters: bool
) -> BadRowError | None:
    """Why :func:`make_chunk` refuses ``item`` on its own, or None."""
    try:
        make_chunk([item], None, limits, kinds, dead_letters=dead_letters, start=index)
    except BadRowError as exc:
        return exc
    return None


def _split_batch(
    index: int, batch: Batch, limits: RowLimits
) -> tuple[Batch | None, list[BadRowError]]:
    """The good readings of ``batch`` (None when there are none), and an error per bad one."""
    kept: list[Column] = []
    bad: list[BadRowError] = []
    for column in batch.columns:
        try:
            _check_column(column, limits)
        except _ColumnProblemError:
            pass
        else:
            kept.append(column)
            continue
        keep = []
        for at in range(len(column)):
            one = Column(
                column.metric,
                column.ts[at : at + 1],
                column.values[at : at + 1],
                column.seq[at : at + 1],
            )
            try:
                _check_column(one, limits)
            except _ColumnProblemError as problem:
                reading = _reading_at(batch.device_id, column, at)
                bad.append(_bad_reading(index, reading, problem))
            else:
                keep.append(at)
        if keep:
            parts = (column.ts, column.values, column.seq)
            ts, values, seq = ([part[at] for at in keep] for part in parts)
            kept.append(Column(column.metric, ts, values, seq))
    return (Batch(batch.device_id, kept) if kept else None), bad


def _items(records: object) -> Sequence[object]:
    if isinstance(records, _RECORD_TYPES):
        return [records]
    if isinstance(records, (str, bytes, bytearray, Mapping)) or not isinstance(records, Iterable):
        raise BadRowError(
            f"write takes a record or an iterable of records, not {type(records).__name__}",
            record=records,
        )
    return list(records)


def _check_kind(index: int, kind: RecordKind, kinds: Collection[RecordKind]) -> None:
    if kind not in kinds:
        reason = f"this sink does not store {kind}"
        raise BadRowError(f"record #{index}: {reason}", index=index, problem="kind", reason=reason)


def _check_dead_letter(index: int, letter: DeadLetter, stored: bool) -> DeadLetter:
    if not stored:
        reason = "this sink does not store dead letters"
        raise BadRowError(
            f"record #{index}: {reason}", index=index, record=letter, problem="kind", reason=reason
        )
    if not isinstance(letter.record, (Reading, WindowAggregate, Alert)):
        kind = type(letter.record).__name__
        reason = f"a dead letter holds a Reading, WindowAggregate or Alert, not {kind}"
        raise BadRowError(f"record #{index}: {reason}", index=index, record=letter, reason=reason)
    if letter.position is not None and not isinstance(letter.position, SourcePosition):
        reason = "a dead letter's position must be a SourcePosition"
        raise BadRowError(f"record #{index}: {reason}", index=index, record=letter, reason=reason)
    return letter


# ---------------------------------------------------------------------------------- readings


class _ColumnProblemError(Exception):
    """A value of a column that cannot be stored: which one (``at``), what and why."""

    def __init__(self, at: int, reason: str, problem: str) -> None:
        super().__init__(reason)
        self.at = at
        self.reason = reason
        self.problem = problem


class _FieldError(InvalidInputError):
    """A field of an aggregate or alert that cannot be stored, with the problem's word."""

    def __init__(self, message: str, problem: str = "invalid") -> None:
        super().__init__(message)
        self.problem = problem


def _check_batch(index: int, batch: Batch, limits: RowLimits) -> list[ReadingColumn]:
    return _checked(batch, limits, lambda reading: index)


def _checked(
    batch: Batch, limits: RowLimits, index_of: Callable[[Reading], int]
) -> list[ReadingColumn]:
    """The columns of ``batch`` with their kinds; a bad value raises naming its record."""
    checked = []
    for column in batch.columns:
        try:
            kind = _check_column(column, limits)
        except _ColumnProblemError as problem:
            reading = _reading_at(batch.device_id, column, problem.at)
            raise _bad_reading(index_of(reading), reading, problem) from None
        checked.append(ReadingColumn(batch.device_id, column, kind))
    return checked


def _check_column(column: Column, limits: RowLimits) -> ValueKind:
    ts = column.ts
    if ts and (min(ts) < limits.ts_min or max(ts) > limits.ts_max):
        at = next(i for i, t in enumerate(ts) if not limits.ts_min <= t <= limits.ts_max)
        reason = f"ts outside [{limits.ts_min}, {limits.ts_max}]"
        raise _ColumnProblemError(at, reason, "time-range")
    values = column.values
    types = set(map(type, values))
    if not types <= _KINDS.keys():
        at = next(i for i, v in enumerate(values) if type(v) not in _KINDS)
        raise _ColumnProblemError(at, f"unsupported value {values[at]!r}", "invalid")
    kind: ValueKind = _KINDS[next(iter(types))] if len(types) == 1 else "mixed"
    if int in types:
        ints = [v for v in values if type(v) is int] if kind == "mixed" else values
        if max(ints) > INT64_MAX:  # type: ignore[operator, type-var]
            at = next(i for i, v in enumerate(values) if type(v) is int and v > INT64_MAX)
            reason = f"int value {values[at]} does not fit the int64 column"
            raise _ColumnProblemError(at, reason, "int-range")
    if float in types and not limits.allow_nan:
        floats = values if kind == "float" else [v for v in values if type(v) is float]
        if math.isnan(sum(floats)):  # type: ignore[arg-type]
            at = next((i for i, v in enumerate(values) if type(v) is float and math.isnan(v)), -1)
            if at >= 0:
                raise _ColumnProblemError(at, "this sink cannot store NaN", "nan")
    if str in types:
        for at, value in enumerate(values):
            if type(value) is str and not _storable_text(value, limits):
                raise _ColumnProblemError(at, *_text_problem(value))
    return kind


def _reading_at(device_id: str, column: Column, at: int) -> Reading:
    return Reading(device_id, column.metric, column.ts[at], column.values[at], column.seq[at])


def _bad_reading(index: int, reading: Reading, problem: _ColumnProblemError) -> BadRowError:
    return BadRowError(
        f"record #{index}, reading device_id={reading.device_id!r} metric={reading.metric!r} "
        f"seq={reading.seq} ts={reading.ts}: {problem.reason}",
        index=index,
        record=reading,
        problem=problem.problem,
        reason=problem.reason,
    )


def _check_readings(
    group: list[tuple[int, Reading]], limits: RowLimits
) -> tuple[Batch, list[ReadingColumn]]:
    """Readings of one device given one by one: grouped into a batch, then checked as one."""
    try:
        batch = Batch.from_readings(reading for _, reading in group)
    except InvalidInputError:
        for index, reading in group:
            _check_reading(index, reading)
        raise

    def index_of(bad: Reading) -> int:
        return next(i for i, r in group if (r.metric, r.seq) == (bad.metric, bad.seq))

    return batch, _checked(batch, limits, index_of)


def _check_reading(index: int, reading: Reading) -> None:
    try:
        Batch.from_readings([reading])
    except InvalidInputError as exc:
        raise BadRowError(
            f"record #{index} ({reading!r}): {exc}", index=index, record=reading, reason=str(exc)
        ) from exc


# -------------------------------------------------------------------- aggregates and alerts


def _check_aggregate(index: int, record: WindowAggregate, limits: RowLimits) -> WindowAggregate:
    try:
        validate_device_id(record.device_id)
        _check_name("metric", record.metric)
        _check_time("window_start", record.window_start, limits.ts_min, limits.ts_max)
        _check_time("window_end", record.window_end, record.window_start, limits.ts_max)
        _check_int("count", record.count, 0, INT64_MAX)
        for name in ("min", "max", "sum"):
            _check_float(name, getattr(record, name), limits)
        _check_int("revision", record.revision, INT64_MIN, INT64_MAX)
        _check_extra(record.extra, limits)
    except InvalidInputError as exc:
        raise BadRowError(
            f"record #{index}, aggregate device_id={record.device_id!r} metric={record.metric!r}"
            f" window_start={record.window_start!r}: {exc}",
            index=index,
            record=record,
            problem=getattr(exc, "problem", "invalid"),
            reason=str(exc),
        ) from None
    return record


def _check_alert(index: int, record: Alert, limits: RowLimits) -> Alert:
    try:
        validate_device_id(record.device_id)
        _check_name("detector", record.detector)
        _check_time("ts", record.ts, limits.ts_min, limits.ts_max)
        if record.metric is not None:
            _check_name("metric", record.metric)
        _check_float("value", record.value, limits)
        _check_float("score", record.score, limits)
        _check_name("severity", record.severity)
        _check_text("message", record.message, limits)
    except InvalidInputError as exc:
        raise BadRowError(
            f"record #{index}, alert device_id={record.device_id!r} "
            f"detector={record.detector!r} ts={record.ts!r}: {exc}",
            index=index,
            record=record,
            problem=getattr(exc, "problem", "invalid"),
            reason=str(exc),
        ) from None
    return record


def _check_extra(extra: object, limits: RowLimits) -> None:
    if not isinstance(extra, Mapping):
        raise InvalidInputError(
            f"extra must be a mapping of names to floats, not {type(extra).__name__}"
        )
    if len(extra) > MAX_EXTRA:
        raise InvalidInputError(f"extra has {len(extra)} statistics, more than {MAX_EXTRA}")
    for name, value in extra.items():
        _check_name("an extra name", name)
        _check_float(f"extra[{name!r}]", value, limits)


def _check_name(what: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if not 0 < len(value) <= MAX_NAME_LENGTH or not value.isprintable():
        raise InvalidInputError(
            f"{what} must have 1 to {MAX_NAME_LENGTH} printable characters: {value!r}"
        )
    if not value.isascii():
        _check_text(what, value, RowLimits())


def _check_text(what: str, value: object, limits: RowLimits) -> None:
    if type(value) is not str:
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > MAX_MESSAGE_LENGTH:
        raise InvalidInputError(f"{what} is longer than {MAX_MESSAGE_LENGTH} characters")
    if not _storable_text(value, limits):
        reason, problem = _text_problem(value)
        raise _FieldError(f"{what}: {reason}", problem)


def _check_int(what: str, value: object, low: int, high: int, problem: str = "invalid") -> None:
    if type(value) is not int:
        raise InvalidInputError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise _FieldError(f"{what}={value} outside [{low}, {high}]", problem)


def _check_time(what: str, value: object, low: int, high: int) -> None:
    _check_int(what, value, low, high, "time-range")


def _check_float(what: str, value: object, limits: RowLimits) -> None:
    if value is None:
        return
    if type(value) is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise _FieldError(f"{what}={value} is too large for a float column", "int-range")
        return
    if type(value) is not float:
        raise InvalidInputError(f"{what} must be a float or None, not {type(value).__name__}")
    if math.isnan(value) and not limits.allow_nan:
        raise _FieldError(f"{what} is NaN, which this sink cannot store", "nan")


def _storable_text(value: str, limits: RowLimits) -> bool:
    if not limits.allow_nul and "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_problem(value: str) -> tuple[str, str]:
    """Why ``value`` cannot be stored, and the problem's word."""
    if "\x00" in value:
        reason = f"text {value[:40]!r} contains a NUL character, which this sink cannot store"
        return reason, "nul"
    return f"text {value[:40]!r} is not valid Unicode (lone surrogate)", "unicode"
