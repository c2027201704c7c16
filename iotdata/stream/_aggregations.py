"""Aggregations: what a window computes over the readings it holds.

An aggregation is four functions over a *state*: ``create()`` makes an empty one,
``add(state, values, ts, seq)`` takes a whole slice of readings at once (aligned tuples of one
column, **sorted by ts**; values are ``int`` or ``float``) and returns the new state,
``merge(state, other)`` combines two states (session windows merge), and ``result(state)``
gives a number or None, or a mapping of several named numbers. ``encode``/``decode`` turn a
state into msgpack-ready values and back, for snapshots; :class:`Aggregation` provides identity
versions, enough when the state is made of lists, numbers and strings. Subclass it to write
your own::

    class Range(Aggregation):
        name = "range"
        def create(self): return None
        def add(self, state, values, ts, seq):
            lo, hi = min(values), max(values)
            return [lo, hi] if state is None else [min(lo, state[0]), max(hi, state[1])]
        def merge(self, state, other):
            return other if state is None else self.add(state, other, (), ())
        def result(self, state): return None if state is None else state[1] - state[0]

Built in:

* :class:`Count`, :class:`Sum`, :class:`Min`, :class:`Max`, :class:`Mean` read a *summary*
  that every window keeps anyway (so asking for them costs nothing). The sum is **exact**: it is
  held as non-overlapping floats (the partials of ``math.fsum``) whose sum is exactly the sum of
  the values, so it is the correctly rounded sum whatever the order or split of the readings,
  and ``mean = sum / count``. NaN makes the sum NaN, ``inf`` and ``-inf`` make it NaN, min and
  max ignore NaN. Ints beyond 2**53 are rounded to floats by the sum (min and max keep them).
  A sum beyond the float range (about ±1.8e308) is ±inf; once the exact sum of a window's
  readings so far left that range at one of its normalizations (every ``LAZY_PARTIALS``
  values), it stays ±inf even if later readings would bring it back.
* :class:`Variance` and :class:`Stddev` (sample, ``ddof=1``, by default): Welford within a
  slice, Chan et al. to combine slices; stable, but rounding depends on how the readings were
  split, so equal inputs split differently agree to about 1e-12 relative, not bit for bit.
* :class:`First` and :class:`Last`: the value with the smallest (largest) ``(ts, seq)``.
* :class:`Quantiles` (exact: keeps every value of the window) and :class:`ApproxQuantiles` (a
  :class:`~iotdata.stream.QuantileSketch`, bounded memory, documented rank error). Both use the
  nearest-rank definition: the q-quantile of ``n`` values is the smallest value ``v`` with at
  least ``q * n`` values ``<= v`` (the minimum for ``q = 0``). NaN values are ignored.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar, Protocol, Union

import attrs

from iotdata.errors import InvalidInputError
from iotdata.stream._sketch import QuantileSketch

__all__ = [
    "AggregateValue",
    "Aggregation",
    "ApproxQuantiles",
    "Count",
    "First",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Quantiles",
    "Stddev",
    "Sum",
    "Variance",
]

#: What an aggregation returns for one output.
AggregateValue = Union[float, int, None]  # noqa: UP007 (a runtime alias, Python 3.10 compatible)

_fsum = math.fsum


class Aggregation(Protocol):
    """The aggregation interface (see the module docstring); subclass it for the defaults."""

    name: str

    def create(self) -> Any: ...

    def add(self, state: Any, values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]) -> Any:
        """Return ``state`` with a slice of readings added (values are int or float)."""

    def merge(self, state: Any, other: Any) -> Any: ...

    def result(self, state: Any) -> AggregateValue | Mapping[str, AggregateValue]: ...

    def encode(self, state: Any) -> Any:
        """``state`` as msgpack-ready values (lists, numbers, str, bytes, None)."""
        return state

    def decode(self, data: Any) -> Any:
        """The state :meth:`encode` gave ``data`` for."""
        return data


# --- the exact summary: [count, min, max, special, partials] --------------------------------

COUNT, MIN, MAX, SPECIAL, PARTIALS = range(5)
#: Partials a summary holds before it normalizes them.
LAZY_PARTIALS = 64


def new_summary() -> list[Any]:
    """``[count, min, max, special, partials]``: ``special`` sums the infinities and NaNs,
    ``partials`` are non-overlapping floats whose exact sum is the sum of the finite values."""
    return [0, None, None, 0.0, []]


def exact_add(partials: list[float], values: Iterable[float]) -> list[float] | None:
    """``partials`` grown by ``values``, or None if one is not finite or the sum overflows."""
    items = [*partials, *values]
    out: list[float] = []
    try:
        total = _fsum(items)
        if total - total != 0.0:  # inf or nan
            return None
        while total:
            out.append(total)
            items.append(-total)
            total = _fsum(items)
    except (OverflowError, ValueError):
        return None
    return out


def _exact_add_slow(summary: list[Any], values: Iterable[float]) -> None:
    """Add finite values whose running sum may leave the float range: beyond it, the sum is
    ±inf (kept in ``special``) and the partials restart."""
    total = sum(map(Fraction, [*summary[PARTIALS], *values]), Fraction(0))
    out: list[float] = []
    while total:
        try:
            part = float(total)
        except OverflowError:
            summary[SPECIAL] += math.inf if total > 0 else -math.inf
            out = []
            break
        out.append(part)
        total -= Fraction(part)
    summary[PARTIALS] = out


def summary_add(summary: list[Any], values: Sequence[Any]) -> None:
    """Add a slice of int/float values to a summary (also a window state: same first slots).

    The values join the partials as they are (one C-level extend); the partials are normalized
    only once they hold more than ``LAZY_PARTIALS`` numbers, so a window costs one ``fsum`` per
    slice to check for infinities and NaNs, and one when its sum is read.
    """
    summary[COUNT] += len(values)  # NaN and infinities count (see Count)
    try:
        total = _fsum(values)
        clean = total - total == 0.0
    except (OverflowError, ValueError):  # finite values beyond the range, or inf - inf
        clean = False
    if clean or all(v - v == 0 for v in values):
        summary[PARTIALS].extend(values)
    else:
        finite = [v for v in values if v - v == 0]
        for value in values:
            if value - value != 0:
                summary[SPECIAL] += value
        summary[PARTIALS].extend(finite)
        values = [v for v in values if v == v]  # noqa: PLR0124 (not NaN)
    if len(summary[PARTIALS]) > LAZY_PARTIALS:
        _normalize(summary)
    if not values:
        return
    low, high = min(values), max(values)
    if summary[MIN] is None or low < summary[MIN]:
        summary[MIN] = low
    if summary[MAX] is None or high > summary[MAX]:
        summary[MAX] = high


def _normalize(summary: list[Any]) -> None:
    """Replace the partials by an equal, non-overlapping few; beyond the float range, the sum
    becomes ±inf (in ``special``) and the partials restart."""
    partials = exact_add([], summary[PARTIALS])
    if partials is None:
        _exact_add_slow(summary, [])
    else:
        summary[PARTIALS] = partials


def summary_merge(summary: list[Any], other: Sequence[Any]) -> None:
    """Add the readings of summary ``other`` to ``summary``."""
    summary[COUNT] += other[COUNT]
    summary[SPECIAL] += other[SPECIAL]
    for slot, better in ((MIN, min), (MAX, max)):
        if other[slot] is not None:
            held = summary[slot]
            summary[slot] = other[slot] if held is None else better(held, other[slot])
    summary[PARTIALS].extend(other[PARTIALS])
    if len(summary[PARTIALS]) > LAZY_PARTIALS:
        _normalize(summary)


def summary_sum(summary: Sequence[Any]) -> float | None:
    """The correctly rounded sum (None when nothing was added)."""
    if not summary[COUNT]:
        return None
    special: float = summary[SPECIAL]
    if special != 0.0:
        return special
    partials = summary[PARTIALS]
    try:
        return _fsum(partials)
    except OverflowError:  # the exact sum, or a step of fsum, is beyond the float range
        exact = sum(map(Fraction, partials), Fraction(0))
        try:
            return float(exact)
        except OverflowError:
            return math.inf if exact > 0 else -math.inf


def summary_mean(summary: Sequence[Any]) -> float | None:
    total = summary_sum(summary)
    return None if total is None else total / summary[COUNT]


# --- the built-ins ---------------------------------------------------------------------------


def _name(value: object) -> str:
    if type(value) is not str or not value:
        raise InvalidInputError(f"an aggregation name must be a non-empty str: {value!r}")
    return value


@attrs.frozen
class _SummaryView(Aggregation):
    """An aggregation read off the exact summary (the window operator shares one per window)."""

    name: str = attrs.field(converter=_name)

    def create(self) -> list[Any]:
        return new_summary()

    def add(
        self, state: list[Any], values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> list[Any]:
        summary_add(state, values)
        return state

    def merge(self, state: list[Any], other: list[Any]) -> list[Any]:
        summary_merge(state, other)
        return state

    def result(self, state: list[Any]) -> AggregateValue:
        return self.pick(state)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        raise NotImplementedError


@attrs.frozen
class Count(_SummaryView):
    """Number of numeric readings (NaN and infinities included)."""

    name: str = attrs.field(default="count", converter=_name)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        count: int = summary[COUNT]
        return count


@attrs.frozen
class Sum(_SummaryView):
    """The exact (correctly rounded) sum; None for no readings."""

    name: str = attrs.field(default="sum", converter=_name)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        return summary_sum(summary)


@attrs.frozen
class Min(_SummaryView):
    """The smallest value (NaN ignored); None for none."""

    name: str = attrs.field(default="min", converter=_name)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        low: AggregateValue = summary[MIN]
        return low


@attrs.frozen
class Max(_SummaryView):
    """The largest value (NaN ignored); None for none."""

    name: str = attrs.field(default="max", converter=_name)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        high: AggregateValue = summary[MAX]
        return high


@attrs.frozen
class Mean(_SummaryView):
    """The exact sum divided by the count; None for no readings."""

    name: str = attrs.field(default="mean", converter=_name)

    def pick(self, summary: Sequence[Any]) -> AggregateValue:
        return summary_mean(summary)


def _careful_sum(values: Iterable[float]) -> float:
    items = list(values)
    try:
        return _fsum(items)
    except (OverflowError, ValueError):  # inf - inf, or an overflow
        return sum(items, 0.0)


def _ddof(value: object) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"ddof must be an int >= 0: {value!r}")
    return value


@attrs.frozen
class Variance(Aggregation):
    """Variance with ``ddof`` delta degrees of freedom (1: sample variance); state
    ``[n, mean, m2]``; None while ``n <= ddof``."""

    ddof: int = attrs.field(default=1, converter=_ddof)
    name: str = attrs.field(default="variance", kw_only=True, converter=_name)

    def create(self) -> list[Any]:
        return [0, 0.0, 0.0]

    def add(
        self, state: list[Any], values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> list[Any]:
        count = len(values)
        mean = _careful_sum(values) / count
        m2 = _careful_sum([(v - mean) * (v - mean) for v in values])
        return self.merge(state, [count, mean, m2])

    def merge(self, state: list[Any], other: list[Any]) -> list[Any]:
        n_a, mean_a, m2_a = state
        n_b, mean_b, m2_b = other
        if not n_a:
            return list(other)
        if not n_b:
            return state
        count = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / count)
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / count)
        return [count, mean, m2]

    def result(self, state: list[Any]) -> AggregateValue:
        count, _, m2 = state
        if count <= self.ddof:
            return None
        return float(m2 / (count - self.ddof))


@attrs.frozen
class Stddev(Variance):
    """Square root of :class:`Variance` (sample, ``ddof=1``, by default)."""

    name: str = attrs.field(default="stddev", kw_only=True, converter=_name)

    def result(self, state: list[Any]) -> AggregateValue:
        variance = super().result(state)
        return None if variance is None else math.sqrt(variance)


@attrs.frozen
class First(Aggregation):
    """The value of the reading with the smallest ``(ts, seq)``; state ``[ts, seq, value]``."""

    name: str = attrs.field(default="first", converter=_name)
    _LAST: ClassVar[bool] = False

    def create(self) -> list[Any] | None:
        return None

    def add(
        self, state: list[Any] | None, values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> list[Any] | None:
        return self.merge(state, self._pick(values, ts, seq))

    def _pick(self, values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]) -> list[Any]:
        if self._LAST:
            edge = ts[-1]
            start = len(ts) - 1 if len(ts) < 2 or ts[-2] != edge else ts.index(edge)
            best = max(range(start, len(ts)), key=seq.__getitem__)
        else:
            edge = ts[0]
            stop = 1 if len(ts) < 2 or ts[1] != edge else bisect_right(ts, edge)
            best = min(range(stop), key=seq.__getitem__)
        return [ts[best], seq[best], values[best]]

    def merge(self, state: list[Any] | None, other: list[Any] | None) -> list[Any] | None:
        if state is None or other is None:
            return other if state is None else state
        later = (other[0], other[1]) > (state[0], state[1])
        return other if later == self._LAST else state

    def result(self, state: list[Any] | None) -> AggregateValue:
        return None if state is None else state[2]


@attrs.frozen
class Last(First):
    """The value of the reading with the largest ``(ts, seq)``; state ``[ts, seq, value]``."""

    name: str = attrs.field(default="last", converter=_name)
    _LAST: ClassVar[bool] = True


def _quantile_list(qs: object) -> tuple[float, ...]:
    if isinstance(qs, int | float):
        qs = (qs,)
    if not isinstance(qs, Iterable):
        raise InvalidInputError(f"quantiles must be numbers in [0, 1]: {qs!r}")
    items = tuple(qs)
    if not items or not all(type(q) in (int, float) and 0.0 <= q <= 1.0 for q in items):
        raise InvalidInputError(f"quantiles must be numbers in [0, 1]: {qs!r}")
    return tuple(float(q) for q in items)


def quantile_names(prefix: str, qs: Sequence[float]) -> tuple[str, ...]:
    """``p50``, ``p99``, ``p99.9``: the prefix and the quantile in percent."""
    return tuple(f"{prefix}{q * 100:g}" for q in qs)


def nearest_rank(ordered: Sequence[Any], q: float) -> float:
    """The smallest value with at least ``q * n`` values at or below it (sorted input)."""
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


@attrs.frozen
class Quantiles(Aggregation):
    """Exact quantiles: keeps every (non-NaN) value of the window, so memory grows with the
    window's readings. Outputs are named ``{name}{percent}``: ``p50``, ``p99``, ``p99.9``."""

    qs: tuple[float, ...] = attrs.field(converter=_quantile_list)
    name: str = attrs.field(default="p", kw_only=True, converter=_name)

    def create(self) -> list[Any]:
        return []

    def add(
        self, state: list[Any], values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> list[Any]:
        state.extend(v for v in values if v == v)  # noqa: PLR0124 (not NaN)
        return state

    def merge(self, state: list[Any], other: list[Any]) -> list[Any]:
        state.extend(other)
        return state

    def result(self, state: list[Any]) -> Mapping[str, AggregateValue]:
        names = quantile_names(self.name, self.qs)
        if not state:
            return dict.fromkeys(names)
        ordered = sorted(state)
        return {name: nearest_rank(ordered, q) for name, q in zip(names, self.qs, strict=True)}


def _sketch_k(value: object) -> int:
    QuantileSketch(value)  # type: ignore[arg-type]  # validates
    return value  # type: ignore[return-value]


@attrs.frozen
class ApproxQuantiles(Aggregation):
    """Quantiles from a :class:`~iotdata.stream.QuantileSketch` of size ``k``: bounded memory,
    rank error at most ``n * L / (k - 1)`` (see the sketch). Outputs ``approx_p50`` etc."""

    qs: tuple[float, ...] = attrs.field(converter=_quantile_list)
    k: int = attrs.field(default=256, kw_only=True, converter=_sketch_k)
    name: str = attrs.field(default="approx_p", kw_only=True, converter=_name)

    def create(self) -> QuantileSketch:
        return QuantileSketch(self.k)

    def add(
        self, state: QuantileSketch, values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> QuantileSketch:
        state._add(values)
        return state

    def merge(self, state: QuantileSketch, other: QuantileSketch) -> QuantileSketch:
        state.merge(other)
        return state

    def result(self, state: QuantileSketch) -> Mapping[str, AggregateValue]:
        names = quantile_names(self.name, self.qs)
        return {name: state.quantile(q) for name, q in zip(names, self.qs, strict=True)}

    def encode(self, state: QuantileSketch) -> Any:
        return state.to_state()

    def decode(self, data: Any) -> QuantileSketch:
        return QuantileSketch.from_state(data)
