"""Window kinds on event time, and how sorted timestamps fall into them.

Sizes are integer microseconds or :class:`datetime.timedelta` (see :mod:`._common`). A window
is the half-open interval ``[start, end)`` in microseconds since the epoch, UTC.

* :class:`Tumbling` ``(size, offset=0)``: back-to-back windows ``[k*size + offset, ...)``; each
  reading is in exactly one.
* :class:`Hopping` ``(size, hop, offset=0)``: windows of ``size`` starting every ``hop``
  (``hop <= size``); a reading is in ``ceil(size / hop)`` of them (or one fewer).
* :class:`Session` ``(gap)``: per key, readings closer than ``gap`` to each other form one
  session ``[first ts, last ts + gap)``; a reading that bridges two sessions merges them, and a
  session ends after ``gap`` of event-time silence.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import pairwise
from typing import Any, Union

import attrs

from iotdata.errors import InvalidInputError
from iotdata.stream._common import micros

__all__ = ["Hopping", "Session", "Tumbling", "Window"]


def _size(value: object) -> int:
    return micros("window size", value)


def _offset(value: object) -> int:
    if type(value) is not int:
        return micros("window offset", value, allow_zero=True)
    return value


@attrs.frozen
class Tumbling:
    """Back-to-back windows of ``size``, aligned on ``offset`` (both in microseconds)."""

    size: int = attrs.field(converter=_size)
    offset: int = attrs.field(default=0, kw_only=True, converter=_offset)

    @property
    def hop(self) -> int:
        return self.size

    def config(self) -> list[Any]:
        return ["tumbling", self.size, self.offset % self.size]


@attrs.frozen
class Hopping:
    """Windows of ``size`` starting every ``hop`` (``0 < hop <= size``), aligned on ``offset``."""

    size: int = attrs.field(converter=_size)
    hop: int = attrs.field(converter=_size)
    offset: int = attrs.field(default=0, kw_only=True, converter=_offset)

    def __attrs_post_init__(self) -> None:
        if self.hop > self.size:
            raise InvalidInputError(f"hop ({self.hop}) must not exceed size ({self.size})")

    def config(self) -> list[Any]:
        return ["hopping", self.size, self.hop, self.offset % self.hop]


@attrs.frozen
class Session:
    """Per key, readings less than ``gap`` apart share a window ``[first, last + gap)``."""

    gap: int = attrs.field(converter=_size)

    def config(self) -> list[Any]:
        return ["session", self.gap]


#: Any window kind.
Window = Union[Tumbling, Hopping, Session]  # noqa: UP007 (a runtime alias, Python 3.10 compatible)


def aligned_segments(
    ts: tuple[int, ...], size: int, hop: int, offset: int
) -> list[tuple[int, int, int]]:
    """``(start, i, j)`` for each window ``[start, start + size)`` that holds the readings
    ``ts[i:j]`` of sorted, non-empty ``ts``; windows without readings are skipped."""
    count = len(ts)
    last = ts[-1]
    segments = []
    if hop == size:
        i = 0
        while i < count:
            first = ts[i]
            start = first - (first - offset) % size
            end = start + size
            j = count if last < end else bisect_left(ts, end, i + 1)
            segments.append((start, i, j))
            i = j
        return segments
    start = _first_start(ts[0], size, hop, offset)
    while start <= last:
        i = bisect_left(ts, start)
        j = bisect_left(ts, start + size, i)
        if i < j:
            segments.append((start, i, j))
            start += hop
        else:  # nothing in this window: jump to the first window of the next reading
            start = _first_start(ts[i], size, hop, offset)
    return segments


def _first_start(t: int, size: int, hop: int, offset: int) -> int:
    """The earliest window start ``s`` (aligned on hop) with ``s <= t < s + size``."""
    before = t - size
    return before - (before - offset) % hop + hop


def session_runs(ts: tuple[int, ...], gap: int) -> list[tuple[int, int]]:
    """``(i, j)`` for each run of sorted ``ts`` whose neighbours are less than ``gap`` apart."""
    breaks = [k for k in range(1, len(ts)) if ts[k] - ts[k - 1] >= gap]
    bounds = [0, *breaks, len(ts)]
    return list(pairwise(bounds))
