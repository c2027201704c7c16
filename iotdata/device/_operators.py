"""Edge operators: small steps a device applies to its readings before they are queued.

An edge reading is ``EdgeReading(metric, ts, value)``, with ``ts`` in integer microseconds since
the epoch, UTC. Every operator has the same four methods:

* ``process(reading)`` returns what to pass on now (nothing, the reading, or other readings);
* ``tick(now)`` returns time-driven output (heartbeats, closed windows); ``now`` is in the same
  microseconds as ``ts``;
* ``flush()`` returns what is still held, when the client closes;
* ``statistics()`` returns a snapshot of counters: every operator counts the readings it
  ``received`` (through ``process``) and ``emitted`` (by any method), and those it ``dropped``
  for good, plus counters of its own.

Operators are pure: no I/O, no threads, no clock. Time comes only from the readings' ``ts`` and
from the ``now`` given to ``tick``. Each keeps its state per metric, and takes ``metrics=`` to act
on those metrics only and pass every other reading through untouched.

:class:`Pipeline` chains operators and is itself an operator::

    >>> edge = Pipeline(Deadband(0.5, heartbeat=300), RateLimit(10))
    >>> edge.process(EdgeReading("temp", 1_000_000, 21.0))  # the first reading passes
    [EdgeReading(metric='temp', ts=1000000, value=21.0)]
    >>> edge.process(EdgeReading("temp", 2_000_000, 21.2))  # within 0.5 of 21.0: held back
    []
    >>> edge.tick(301_000_000)  # 300 s without a pass: the held reading proves life
    [EdgeReading(metric='temp', ts=2000000, value=21.2)]
    >>> edge.statistics()["0.Deadband.suppressed"]
    1

When a step raises, the pipeline raises :class:`EdgeOperatorError` naming the step and the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import ClassVar, NamedTuple, Protocol, TypeGuard, runtime_checkable

import attrs

from iotdata._checks import check_bool, check_callable, validated
from iotdata.errors import EdgeOperatorError, InvalidInputError
from iotdata.model import Value

__all__ = [
    "AGGREGATIONS",
    "Deadband",
    "Downsample",
    "EdgeOperator",
    "EdgeReading",
    "Filter",
    "Map",
    "Pipeline",
    "RateLimit",
]

_US = 1_000_000
_FAR_PAST = -(2**64)  # before any valid ts


class EdgeReading(NamedTuple):
    """A reading on the device before it has a sequence number (``ts``: microseconds, UTC)."""

    metric: str
    ts: int
    value: Value


@runtime_checkable
class EdgeOperator(Protocol):
    """What every edge operator, :class:`Pipeline` included, provides."""

    def process(self, reading: EdgeReading) -> Sequence[EdgeReading]: ...

    def tick(self, now: int) -> Sequence[EdgeReading]: ...

    def flush(self) -> Sequence[EdgeReading]: ...

    def statistics(self) -> Mapping[str, int]: ...


# --- argument checks ------------------------------------------------------------------------


def _number(what: str, value: object, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    """``value`` as a finite float at least (or above) ``minimum``, else InvalidInputError."""
    if type(value) is bool or not isinstance(value, int | float):
        raise InvalidInputError(f"{what} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        relation = ">=" if inclusive else ">"
        raise InvalidInputError(f"{what} must be finite and {relation} {minimum}: {value!r}")
    return number


def _microseconds(what: str, seconds: object) -> int:
    """A positive duration in seconds, as a whole number of microseconds (at least 1)."""
    return max(1, round(_number(what, seconds, inclusive=False) * _US))


def _names(what: str, names: object) -> tuple[str, ...]:
    """A non-string collection of strings, as a tuple."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise InvalidInputError(f"{what} must be a collection of str such as ('a', 'b'): {names!r}")
    items = tuple(names)
    if not all(type(name) is str for name in items):
        raise InvalidInputError(f"{what} must hold str only: {names!r}")
    return items


def _metric_set(metrics: Collection[str] | None) -> frozenset[str] | None:
    return None if metrics is None else frozenset(_names("metrics", metrics))


def _show_metrics(metrics: frozenset[str] | None) -> str:
    return "None" if metrics is None else repr(tuple(sorted(metrics)))


def _is_number(value: Value) -> TypeGuard[int | float]:
    """int or float; bool, str and None are not numbers here."""
    return type(value) is float or type(value) is int


def _by_ts(readings: Iterable[EdgeReading]) -> list[EdgeReading]:
    return sorted(readings, key=attrgetter("ts"))


# --- shared plumbing ------------------------------------------------------------------------


@attrs.define(eq=False)
class _Step:
    """The metrics filter and the counters; subclasses implement ``_apply`` (and the hooks)."""

    _COUNTERS: ClassVar[tuple[str, ...]] = ("dropped",)

    metrics: frozenset[str] | None = attrs.field(
        default=None, kw_only=True, converter=_metric_set, repr=_show_metrics
    )
    _counts: dict[str, int] = attrs.field(init=False, repr=False)

    @_counts.default
    def _zero_counts(self) -> dict[str, int]:
        return dict.fromkeys(("received", "emitted", *self._COUNTERS), 0)

    def process(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        if type(reading) is not EdgeReading:
            raise InvalidInputError(f"expected an EdgeReading, got {type(reading).__name__}")
        self._counts["received"] += 1
        selected = self.metrics is None or reading.metric in self.metrics
        return self._emit(self._apply(reading) if selected else (reading,))

    def tick(self, now: int) -> Sequence[EdgeReading]:
        if type(now) is not int:
            raise InvalidInputError(f"now must be an int (microseconds), got {now!r:.60}")
        return self._emit(self._on_tick(now))

    def flush(self) -> Sequence[EdgeReading]:
        return self._emit(self._on_flush())

    def statistics(self) -> Mapping[str, int]:
        return dict(self._counts)

    def _emit(self, readings: Sequence[EdgeReading]) -> Sequence[EdgeReading]:
        self._counts["emitted"] += len(readings)
        return readings

    def _count(self, counter: str, increment: int = 1) -> None:
        self._counts[counter] += increment

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        raise NotImplementedError

    def _on_tick(self, now: int) -> Sequence[EdgeReading]:
        return ()

    def _on_flush(self) -> Sequence[EdgeReading]:
        return ()


# --- Deadband -------------------------------------------------------------------------------


def _moved(old: float, new: float, threshold: float, relative: bool) -> bool:
    """Whether a number moved by more than the threshold (NaN to or from a number moves)."""
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    if math.isinf(old) or math.isinf(new):
        return old != new
    limit = threshold * abs(old) if relative else threshold
    return abs(new - old) > limit


def _changed(old: Value, new: Value, threshold: float, relative: bool) -> bool:
    if _is_number(old) and _is_number(new):
        return _moved(old, new, threshold, relative)
    return type(old) is not type(new) or old != new


@attrs.define
class _LastPassed:
    value: Value
    ts: int
    held: EdgeReading | None = None  # the latest reading suppressed since the last pass


@attrs.define(eq=False)
class Deadband(_Step):
    """Pass a reading when its value moved by more than ``threshold`` since the last one passed.

    * The first reading of a metric passes. A number passes when ``|new - last| > threshold``
      (strictly greater; with ``relative``, ``> threshold * |last|``, so after a passed 0 any
      change passes). ``threshold=0`` passes every change and suppresses repeats.
    * NaN to a number or a number to NaN is a change, NaN to NaN is not; an infinity changes
      when the value is not the same infinity.
    * str, bool and None values (and a switch between a number and them) pass when they differ
      from the last passed value: ``True`` after ``1`` is a change.
    * ``heartbeat`` (seconds): a reading whose ts is ``heartbeat`` or more after the last pass
      passes anyway, and ``tick(now)`` passes the latest suppressed reading of a metric whose
      last pass is ``heartbeat`` or more before ``now``, with its own ts. A metric with nothing
      suppressed since its last pass gets nothing from ``tick``: no reading is invented.
    * ``flush()`` passes each metric's latest suppressed reading, so the final state is sent.

    Statistics: ``suppressed`` (not passed on arrival), ``heartbeats`` (passed only because the
    heartbeat was due), ``dropped`` (suppressed and replaced by a later one: never sent).
    """

    _COUNTERS: ClassVar[tuple[str, ...]] = ("suppressed", "heartbeats", "dropped")

    threshold: float = attrs.field()
    heartbeat: float | None = attrs.field(default=None, kw_only=True)
    relative: bool = attrs.field(default=False, kw_only=True)
    _heartbeat_us: int | None = attrs.field(init=False, repr=False, default=None)
    _last: dict[str, _LastPassed] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        _number("Deadband threshold", self.threshold)
        if self.heartbeat is not None:
            self._heartbeat_us = _microseconds("Deadband heartbeat", self.heartbeat)
        if type(self.relative) is not bool:
            raise InvalidInputError(f"Deadband relative must be a bool: {self.relative!r}")

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        last = self._last.get(reading.metric)
        if last is None or _changed(last.value, reading.value, self.threshold, self.relative):
            return self._pass(reading, last)
        if self._due(last, reading.ts):
            self._count("heartbeats")
            return self._pass(reading, last)
        self._count("suppressed")
        if last.held is not None:
            self._count("dropped")
        last.held = reading
        return ()

    def _due(self, last: _LastPassed, now: int) -> bool:
        return self._heartbeat_us is not None and now - last.ts >= self._heartbeat_us

    def _pass(self, reading: EdgeReading, last: _LastPassed | None) -> Sequence[EdgeReading]:
        if last is not None and last.held is not None:
            self._count("dropped")
        self._last[reading.metric] = _LastPassed(reading.value, reading.ts)
        return (reading,)

    def _holding(self) -> list[_LastPassed]:
        return [last for last in self._last.values() if last.held is not None]

    def _on_tick(self, now: int) -> Sequence[EdgeReading]:
        due = [last for last in self._holding() if self._due(last, now)]
        self._count("heartbeats", len(due))
        return _by_ts(map(_release, due))

    def _on_flush(self) -> Sequence[EdgeReading]:
        return _by_ts(map(_release, self._holding()))


def _release(last: _LastPassed) -> EdgeReading:
    """Pass the held reading: it becomes the last passed one."""
    reading = last.held
    assert reading is not None
    last.value, last.ts, last.held = reading.value, reading.ts, None
    return reading


# --- Downsample -----------------------------------------------------------------------------


@attrs.define
class _Window:
    """Running aggregates of one metric in one window; first and last go by ts."""

    start: int
    count: int
    total: int | float
    low: int | float
    high: int | float
    first: tuple[int, int | float]
    last: tuple[int, int | float]

    @classmethod
    def of(cls, start: int, ts: int, value: int | float) -> _Window:
        return cls(start, 1, value, value, value, (ts, value), (ts, value))

    def add(self, ts: int, value: int | float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if ts < self.first[0]:
            self.first = (ts, value)
        if ts >= self.last[0]:
            self.last = (ts, value)


def _sum(window: _Window) -> Value:
    """The sum; an int sum outside the wire's int range becomes a float."""
    total = window.total
    return total if type(total) is float or -(2**63) <= total < 2**64 else float(total)


_AGGREGATES: Mapping[str, Callable[[_Window], Value]] = {
    "min": attrgetter("low"),
    "max": attrgetter("high"),
    "mean": lambda window: window.total / window.count,
    "count": attrgetter("count"),
    "sum": _sum,
    "first": lambda window: window.first[1],
    "last": lambda window: window.last[1],
}

#: The aggregations :class:`Downsample` computes.
AGGREGATIONS = tuple(_AGGREGATES)


def _aggregation_names(names: object) -> tuple[str, ...]:
    checked = _names("Downsample aggregations", names)
    if not checked or len(set(checked)) != len(checked) or not _AGGREGATES.keys() >= set(checked):
        raise InvalidInputError(
            f"Downsample aggregations must be distinct names among {AGGREGATIONS}: {names!r}"
        )
    return checked


@attrs.define(eq=False)
class Downsample(_Step):
    """Aggregate numbers in tumbling windows of ``window`` seconds of the readings' ts.

    Windows are aligned to the epoch (a window starts at ``ts - ts % window_us``). A metric has
    one open window; it closes when a reading of that metric arrives for a later window, when
    ``tick(now)`` reaches its end plus ``grace`` seconds, or on ``flush()``. A closed window
    emits one reading per aggregation, in the order given, named ``"{metric}.{aggregation}"``
    (or just ``metric`` with ``keep_name=True``, allowed for a single aggregation), with **ts =
    window start**. Aggregations: min, max, mean, count, sum, first, last (first and last by ts).
    min, max, first and last keep the value's type, mean is a float, count an int.

    Dropped and counted: ``late`` readings (older than the metric's open window, or in a window
    that ``tick`` has closed) and ``non_numeric`` ones (str, bool, None and NaN, which is taken
    as a missing measurement). Dropped readings change no window. Statistics also count the
    closed ``windows``.
    """

    _COUNTERS: ClassVar[tuple[str, ...]] = ("dropped", "late", "non_numeric", "windows")

    window: float = attrs.field()
    aggregations: Sequence[str] = attrs.field(default=("mean",), converter=_aggregation_names)
    grace: float = attrs.field(default=0.0, kw_only=True)
    keep_name: bool = attrs.field(default=False, kw_only=True, validator=validated(check_bool))
    _window_us: int = attrs.field(init=False, repr=False, default=0)
    _aggregates: tuple[tuple[str, Callable[[_Window], Value]], ...] = attrs.field(
        init=False, repr=False, default=()
    )
    _grace_us: int = attrs.field(init=False, repr=False, default=0)
    _watermark: int = attrs.field(init=False, repr=False, default=_FAR_PAST)
    _open: dict[str, _Window] = attrs.field(init=False, repr=False, factory=dict)
    _floor: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._window_us = _microseconds("Downsample window", self.window)
        self._grace_us = round(_number("Downsample grace", self.grace) * _US)
        self._aggregates = tuple((name, _AGGREGATES[name]) for name in self.aggregations)
        if self.keep_name and len(self.aggregations) != 1:
            raise InvalidInputError("Downsample keep_name=True needs exactly one aggregation")

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        metric, ts, value = reading
        if not _is_number(value) or math.isnan(value):
            return self._drop("non_numeric")
        start = ts - ts % self._window_us
        if start < self._floor.get(metric, _FAR_PAST) or self._closed(start):
            return self._drop("late")
        window = self._open.get(metric)
        if window is not None and start == window.start:
            window.add(ts, value)
            return ()
        closed = self._close(metric, window) if window is not None else []
        self._open[metric] = _Window.of(start, ts, value)
        self._floor[metric] = start
        return closed

    def _drop(self, counter: str) -> Sequence[EdgeReading]:
        self._count(counter)
        self._count("dropped")
        return ()

    def _closed(self, start: int) -> bool:
        return start + self._window_us <= self._watermark

    def _close(self, metric: str, window: _Window) -> list[EdgeReading]:
        self._count("windows")
        del self._open[metric]
        self._floor[metric] = window.start + self._window_us
        single = self.keep_name
        return [
            EdgeReading(metric if single else f"{metric}.{name}", window.start, aggregate(window))
            for name, aggregate in self._aggregates
        ]

    def _close_where(self, closing: Callable[[_Window], bool]) -> list[EdgeReading]:
        due = sorted(
            ((m, w) for m, w in self._open.items() if closing(w)), key=lambda item: item[1].start
        )
        return [reading for metric, window in due for reading in self._close(metric, window)]

    def _on_tick(self, now: int) -> Sequence[EdgeReading]:
        self._watermark = max(self._watermark, now - self._grace_us)
        return self._close_where(lambda window: self._closed(window.start))

    def _on_flush(self) -> Sequence[EdgeReading]:
        return self._close_where(lambda window: True)


# --- RateLimit ------------------------------------------------------------------------------


@attrs.define(eq=False)
class RateLimit(_Step):
    """At most ``max_per_second`` readings per metric on average, ``burst`` at once (ts time).

    A token bucket per metric holding ``burst`` tokens (default: one second's worth, at least
    1) and refilled at ``max_per_second`` on the readings' ts, computed in whole microseconds
    (the virtual-scheduling form of the bucket, with the interval between tokens rounded up
    to a microsecond, so the limit is never exceeded). Readings over the limit are dropped and
    counted. A rate above one per microsecond is refused.
    """

    max_per_second: float = attrs.field()
    burst: int | None = attrs.field(default=None, kw_only=True)
    _interval_us: int = attrs.field(init=False, repr=False, default=0)
    _tolerance_us: int = attrs.field(init=False, repr=False, default=0)
    _due: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        rate = _number("RateLimit max_per_second", self.max_per_second, inclusive=False)
        if rate > _US:
            raise InvalidInputError(f"RateLimit max_per_second must be <= {_US}: {rate!r}")
        burst = max(1, math.ceil(rate)) if self.burst is None else self.burst
        if type(burst) is not int or burst < 1:
            raise InvalidInputError(f"RateLimit burst must be an int >= 1: {self.burst!r}")
        from fractions import Fraction  # noqa: PLC0415 (exact, and rarely needed)

        self._interval_us = math.ceil(Fraction(_US) / Fraction(rate))
        self._tolerance_us = (burst - 1) * self._interval_us

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        due = self._due.get(reading.metric, _FAR_PAST)
        if reading.ts < due - self._tolerance_us:
            self._count("dropped")
            return ()
        self._due[reading.metric] = max(due, reading.ts) + self._interval_us
        return (reading,)


# --- building blocks ------------------------------------------------------------------------


@attrs.define(eq=False)
class Filter(_Step):
    """Pass the readings for which ``predicate(reading)`` is true; count the others as dropped."""

    predicate: Callable[[EdgeReading], bool] = attrs.field(validator=validated(check_callable))

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        if self.predicate(reading):
            return (reading,)
        self._count("dropped")
        return ()


@attrs.define(eq=False)
class Map(_Step):
    """Replace each reading by ``function(reading)`` (which must return an :class:`EdgeReading`)."""

    _COUNTERS: ClassVar[tuple[str, ...]] = ()

    function: Callable[[EdgeReading], EdgeReading] = attrs.field(
        validator=validated(check_callable)
    )

    def _apply(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        return (self.function(reading),)


# --- Pipeline -------------------------------------------------------------------------------


def _step_error(index: int, step: EdgeOperator, call: str, exc: Exception) -> EdgeOperatorError:
    return EdgeOperatorError(
        f"edge step {index} {step!r} failed in {call}: {type(exc).__name__}: {exc}"
    )


class Pipeline:
    """Operators in a chain: the output of each is the input of the next.

    ``process`` runs a reading through every step. ``tick`` and ``flush`` go step by step: the
    output of step *i* (whatever it received from earlier steps' ticks, then its own tick or
    flush output) goes through steps *i+1* onwards. ``statistics()`` holds the pipeline's own
    ``received`` and ``emitted`` and every step's counters as ``"{index}.{Class}.{counter}"``.
    An exception in a step is raised as :class:`EdgeOperatorError` naming the step and input.
    """

    __slots__ = ("_counts", "_steps")

    def __init__(self, *operators: EdgeOperator) -> None:
        for operator in operators:
            if not isinstance(operator, EdgeOperator):
                raise InvalidInputError(f"Pipeline step is not an edge operator: {operator!r}")
        self._steps = operators
        self._counts = {"received": 0, "emitted": 0}

    @property
    def steps(self) -> tuple[EdgeOperator, ...]:
        return self._steps

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self._steps))})"

    def process(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        self._counts["received"] += 1
        readings: Sequence[EdgeReading] = (reading,)
        for index in range(len(self._steps)):
            readings = self._feed(index, readings)
        return self._emit(readings)

    def tick(self, now: int) -> Sequence[EdgeReading]:
        readings: list[EdgeReading] = []
        for index, step in enumerate(self._steps):
            readings = self._feed(index, readings)
            try:
                readings.extend(step.tick(now))
            except Exception as exc:
                raise _step_error(index, step, f"tick(now={now})", exc) from exc
        return self._emit(readings)

    def flush(self) -> Sequence[EdgeReading]:
        readings: list[EdgeReading] = []
        for index, step in enumerate(self._steps):
            readings = self._feed(index, readings)
            try:
                readings.extend(step.flush())
            except Exception as exc:
                raise _step_error(index, step, "flush()", exc) from exc
        return self._emit(readings)

    def statistics(self) -> Mapping[str, int]:
        counts = dict(self._counts)
        for index, step in enumerate(self._steps):
            prefix = f"{index}.{type(step).__name__}."
            counts.update((prefix + key, value) for key, value in step.statistics().items())
        return counts

    def _feed(self, index: int, readings: Iterable[EdgeReading]) -> list[EdgeReading]:
        """Process each reading through step ``index``."""
        step = self._steps[index]
        out: list[EdgeReading] = []
        current: EdgeReading | None = None
        try:
            for current in readings:
                out.extend(step.process(current))
        except Exception as exc:
            raise _step_error(index, step, f"process({current!r})", exc) from exc
        return out

    def _emit(self, readings: Sequence[EdgeReading]) -> Sequence[EdgeReading]:
        self._counts["emitted"] += len(readings)
        return readings
