"""What sinks store, and what a writer holds between ``write`` and ``flush``.

Three kinds of records, each with its idempotency key:

* readings, as :class:`~iotdata.Batch` objects (columnar, one device each): ``(device_id, seq)``;
* :class:`WindowAggregate`: ``(device_id, metric, window_start)``, the newest revision wins
  (with its ``extra`` statistics: a row is replaced whole, never merged);
* :class:`Alert`: ``(device_id, detector, ts)``, the first one written stays.

A :class:`DeadLetter` is a record a sink refused, with why; sinks that keep dead letters store
them keyed on ``(sink, kind, key)``, the first one written stays.

Everything here is plain values and pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import attrs

from iotdata.model import Batch, Column, Reading

__all__ = [
    "ALL_KINDS",
    "Alert",
    "Chunk",
    "DeadLetter",
    "PendingRecords",
    "ReadingColumn",
    "RecordKind",
    "SourcePosition",
    "ValueKind",
    "WindowAggregate",
    "joined_key",
]

RecordKind = Literal["readings", "aggregates", "alerts"]
#: Every kind of record; a sink that stores only some says so in its ``kinds``.
ALL_KINDS: frozenset[RecordKind] = frozenset({"readings", "aggregates", "alerts"})

#: What the values of a column are: all one type and none missing (``float``, ``int``,
#: ``bool``, ``str``), all missing (``null``), or anything else (``mixed``).
ValueKind = Literal["float", "int", "bool", "str", "null", "mixed"]


@attrs.frozen
class SourcePosition:
    """Where the records of a ``write`` call came from: the offset of the first of them in a
    partition of a topic (a Kafka partition, a partition of the embedded log).

    Sinks whose files are named after the data (Parquet) use it so that a replay from the same
    offset overwrites the same files; database sinks ignore it.
    """

    topic: str
    partition: int
    offset: int


class _Extra(Mapping[str, "float | None"]):
    """The ``extra`` statistics of an aggregate: a read-only, hashable mapping (equal to a dict
    with the same items)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, float | None]) -> None:
        self._items = dict(items)

    def __getitem__(self, name: str) -> float | None:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


_NO_EXTRA = _Extra({})


def _frozen_extra(value: Mapping[str, float | None]) -> Mapping[str, float | None]:
    """``value`` as a read-only mapping; anything else is left for the row check to refuse."""
    kind = type(value)
    if kind is dict:  # the common cases first: this runs for every aggregate
        return _Extra(value) if value else _NO_EXTRA
    if kind is _Extra:
        return value
    if isinstance(value, _Extra):
        return value
    if isinstance(value, Mapping):
        return _Extra(value) if value else _NO_EXTRA
    return value


@attrs.frozen
class WindowAggregate:
    """Statistics of one metric of one device over a time window ``[window_start, window_end)``.

    Times are microseconds since the epoch, UTC. ``min``, ``max`` and ``sum`` are ``None`` when
    ``count`` is 0. ``revision`` grows each time the stream layer emits the same window again
    (late data): a sink keeps the row with the highest revision, and the later write on a tie.

    ``extra`` holds further statistics by name (``{"stddev": 0.4, "p99": 31.5, "last": 29.0}``,
    at most 256): names like metric names, values floats or None. It is kept as a read-only
    mapping (equal to the dict you gave), so the aggregate stays frozen and hashable.
    """

    device_id: str
    metric: str
    window_start: int
    window_end: int
    count: int
    min: float | None
    max: float | None
    sum: float | None
    revision: int = 0
    extra: Mapping[str, float | None] = attrs.field(default=_NO_EXTRA, converter=_frozen_extra)

    @property
    def key(self) -> tuple[str, str, int]:
        """The idempotency key ``(device_id, metric, window_start)``."""
        return (self.device_id, self.metric, self.window_start)

    @property
    def mean(self) -> float | None:
        """``sum / count``, or None for an empty window."""
        if not self.count or self.sum is None:
            return None
        return self.sum / self.count


@attrs.frozen
class Alert:
    """Something a detector noticed about a device at time ``ts`` (microseconds, UTC).

    One detector raises at most one alert per device and instant; a detector that watches
    several metrics separately should carry the metric in its name (``"zscore:temperature"``).
    """

    device_id: str
    detector: str
    ts: int
    metric: str | None = None
    value: float | None = None
    score: float | None = None
    severity: str = "warning"
    message: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        """The idempotency key ``(device_id, detector, ts)``."""
        return (self.device_id, self.detector, self.ts)


def joined_key(parts: Sequence[object]) -> str:
    """``parts`` joined by ``/``, a ``%`` or ``/`` inside a part written ``%25`` or ``%2F``."""
    return "/".join(str(part).replace("%", "%25").replace("/", "%2F") for part in parts)


#: Longest dead-letter ``detail`` and ``sink``, in characters.
MAX_DETAIL = 1024


def _clean_text(value: object) -> str:
    """``value`` as text any store keeps: no NUL, no lone surrogate, at most MAX_DETAIL."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text[:MAX_DETAIL]


DeadLetterKind = Literal["reading", "aggregate", "alert"]


@attrs.frozen
class DeadLetter:
    """A record a sink refused, with why; the stream runtime writes these to a route's dead
    letters (see docs/stream.md) instead of stopping.

    ``record`` is the refused :class:`~iotdata.Reading` (one of a batch), aggregate or alert;
    ``reason`` the refusal's one-word problem (``nan``, ``nul``, ``time-range``, ... as
    :attr:`BadRowError.problem <iotdata.sinks.BadRowError.problem>`), ``detail`` its message,
    ``sink`` the name of the sink that refused it, and ``position`` the source record that
    carried it (None for records made by the clock, such as windows closed on idle).

    Its key is ``(sink, kind, key)``: ``key`` is ``device_id/seq`` for a reading,
    ``device_id/metric/window_start/revision`` for an aggregate (each revision is a record of
    its own) and ``device_id/detector/ts`` for an alert, so a replay stores it once.
    """

    record: Reading | WindowAggregate | Alert
    reason: str = attrs.field(converter=_clean_text)
    detail: str = attrs.field(converter=_clean_text)
    sink: str = attrs.field(converter=_clean_text)
    position: SourcePosition | None = None

    @property
    def kind(self) -> DeadLetterKind:
        """``reading``, ``aggregate`` or ``alert``."""
        if isinstance(self.record, WindowAggregate):
            return "aggregate"
        return "alert" if isinstance(self.record, Alert) else "reading"

    @property
    def key(self) -> str:
        """The record's key as text (see the class docstring)."""
        r = self.record
        if isinstance(r, WindowAggregate):
            return joined_key((r.device_id, r.metric, r.window_start, r.revision))
        if isinstance(r, Alert):
            return joined_key((r.device_id, r.detector, r.ts))
        return joined_key((r.device_id, r.seq))

    @property
    def device_id(self) -> str | None:
        """The record's device id (cleaned as text), None when it has no usable one."""
        device = self.record.device_id
        return _clean_text(device) if isinstance(device, str) else None

    @property
    def identity(self) -> tuple[str, str, str]:
        """``(sink, kind, key)``: what the stores key dead letters on."""
        return (self.sink, self.kind, self.key)


@attrs.frozen
class ReadingColumn:
    """One column of a batch as a sink sees it: its device, and what kind its values are."""

    device_id: str
    column: Column
    kind: ValueKind


@attrs.frozen
class Chunk:
    """The checked records of one ``write`` call.

    ``batches`` are the readings as they were given (readings given one by one grouped into a
    batch per device); ``columns`` are the same readings column by column.
    """

    position: SourcePosition | None
    columns: tuple[ReadingColumn, ...] = ()
    aggregates: tuple[WindowAggregate, ...] = ()
    alerts: tuple[Alert, ...] = ()
    batches: tuple[Batch, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()

    @property
    def rows(self) -> int:
        records = len(self.aggregates) + len(self.alerts) + len(self.dead_letters)
        return sum(len(c.column) for c in self.columns) + records


@attrs.frozen
class PendingRecords:
    """What a writer persists at a flush: the chunks of the ``write`` calls since the last one.

    Readings are handed over as they came (duplicates included: each sink's key takes care of
    them); aggregates and alerts are deduplicated here by their keys.
    """

    chunks: tuple[Chunk, ...]

    @property
    def rows(self) -> int:
        return sum(chunk.rows for chunk in self.chunks)

    def columns(self) -> Iterator[ReadingColumn]:
        """Every reading column, in write order."""
        for chunk in self.chunks:
            yield from chunk.columns

    def batches(self) -> Iterator[Batch]:
        """Every batch of readings as it was written (duplicates included), in write order."""
        for chunk in self.chunks:
            yield from chunk.batches

    def aggregates(self) -> list[WindowAggregate]:
        """One aggregate per key: the highest revision, the later one on a tie."""
        newest: dict[tuple[str, str, int], WindowAggregate] = {}
        for chunk in self.chunks:
            for aggregate in chunk.aggregates:
                key = aggregate.key
                held = newest.get(key)
                if held is None or aggregate.revision >= held.revision:
                    newest[key] = aggregate
        return list(newest.values())

    def alerts(self) -> list[Alert]:
        """One alert per key: the first one."""
        first: dict[tuple[str, str, int], Alert] = {}
        for chunk in self.chunks:
            for alert in chunk.alerts:
                first.setdefault(alert.key, alert)
        return list(first.values())

    def dead_letters(self) -> list[DeadLetter]:
        """One dead letter per ``(sink, kind, key)``: the first one."""
        first: dict[tuple[str, str, str], DeadLetter] = {}
        for chunk in self.chunks:
            for letter in chunk.dead_letters:
                first.setdefault(letter.identity, letter)
        return list(first.values())

    def by_source(self) -> list[tuple[SourcePosition | None, PendingRecords]]:
        """The chunks grouped by ``(topic, partition)``, each group with its first position
        (the smallest offset written since the last flush); chunks without one form one group."""
        groups: dict[tuple[str, int] | None, list[Chunk]] = {}
        for chunk in self.chunks:
            position = chunk.position
            key = None if position is None else (position.topic, position.partition)
            groups.setdefault(key, []).append(chunk)
        return [
            (_first_position(chunks), PendingRecords(tuple(chunks))) for chunks in groups.values()
        ]


def _first_position(chunks: Sequence[Chunk]) -> SourcePosition | None:
    positions = [chunk.position for chunk in chunks if chunk.position is not None]
    return min(positions, key=lambda p: p.offset) if positions else None
