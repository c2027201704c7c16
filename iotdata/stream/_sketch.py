"""A mergeable quantile sketch with a deterministic, tracked rank-error bound.

The sketch is a stack of *compactors*: level ``h`` holds values that each stand for ``2**h``
readings. New values go to level 0. When a level holds ``k`` or more values it is sorted and
compacted: every other value (starting at the first or second, alternately) moves up one level
with twice the weight; an odd value out (the largest) stays. Merging two sketches concatenates
their levels and compacts the same way, so sketches of partial windows merge into the sketch of
the whole.

**Error bound.** One compaction at level ``h`` changes the estimated rank of any value by at most
``2**h``; the sketch adds these up in :attr:`QuantileSketch.error_bound` (``E``). For the value
``v`` that :meth:`QuantileSketch.quantile` returns for ``q`` over ``n`` readings::

    #{readings < v} < q*n + E      and      #{readings <= v} >= q*n - E

and ``E <= n * L / (k - 1)`` with ``L = floor(log2(n / k)) + 1`` levels that ever compact
(``E = 0``, exact, while ``n < k``). With the default ``k = 256``: at most 2.4 % of ``n`` for
``n = 10**4``, 3.5 % for ``10**5``, 4.7 % for ``10**6``. Measured errors are much smaller
(0.5 % of ``n`` on 10**5 normal values, whose tracked ``E`` was 2.8 %), because the alternating
offsets make successive compactions err in opposite directions. Memory is at most ``k`` values
per level, ``k * (L + 1)`` in all. NaN values are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from iotdata._checks import check_instance, check_int, check_iterable
from iotdata.errors import InvalidInputError

__all__ = ["QuantileSketch"]


_NUMBERS = frozenset((int, float))


def _check_k(k: object) -> int:
    if type(k) is not int or k < 8 or k % 2:
        raise InvalidInputError(f"sketch size k must be an even int >= 8: {k!r:.60}")
    return k


class QuantileSketch:
    """A mergeable quantile summary of numbers with a tracked rank-error bound (see module)."""

    __slots__ = ("_error", "_k", "_levels", "_n", "_parity")

    def __init__(self, k: int = 256) -> None:
        self._k = _check_k(k)
        self._n = 0
        self._error = 0
        self._levels: list[list[float]] = [[]]
        self._parity: list[int] = [0]

    @property
    def k(self) -> int:
        """Values a level holds before it compacts."""
        return self._k

    @property
    def n(self) -> int:
        """Readings summarized (NaN excluded)."""
        return self._n

    @property
    def error_bound(self) -> int:
        """``E``: no estimated rank is off by more than this many readings."""
        return self._error

    @staticmethod
    def worst_case_error(n: int, k: int) -> float:
        """The bound ``n * L / (k - 1)`` on :attr:`error_bound` for ``n`` readings."""
        check_int("n", n, minimum=0)
        _check_k(k)
        if n < k:
            return 0.0
        levels = math.floor(math.log2(n / k)) + 1
        return n * levels / (k - 1)

    def add(self, values: Iterable[float]) -> None:
        """Add numbers (ints and floats; NaN skipped). Raises :class:`InvalidInputError` for
        anything else."""
        numbers = check_iterable("values", values)
        if not _NUMBERS.issuperset(map(type, numbers)):
            raise InvalidInputError(f"a sketch takes int and float values: {values!r:.60}")
        self._add(numbers)

    def _add(self, values: Iterable[float]) -> None:
        """:meth:`add` for values known to be numbers (a window's)."""
        level = self._levels[0]
        before = len(level)
        level.extend(v for v in values if v == v)  # noqa: PLR0124 (not NaN)
        self._n += len(level) - before
        if len(level) >= self._k:
            self._compact()

    def merge(self, other: QuantileSketch) -> None:
        """Add everything ``other`` summarizes (same ``k``); ``other`` is left unchanged."""
        check_instance("other", other, QuantileSketch)
        if other._k != self._k:
            raise InvalidInputError(f"cannot merge sketches of k={self._k} and k={other._k}")
        for height, level in enumerate(other._levels):
            if height == len(self._levels):
                self._levels.append([])
                self._parity.append(0)
            self._levels[height].extend(level)
        self._n += other._n
        self._error += other._error
        self._compact()

    def quantile(self, q: float) -> float | None:
        """The smallest summarized value whose estimated rank reaches ``q * n`` (None if empty)."""
        if type(q) not in (int, float) or not 0.0 <= q <= 1.0:
            raise InvalidInputError(f"quantile must lie in [0, 1]: {q!r:.60}")
        weighted = sorted(
            (value, 1 << height) for height, level in enumerate(self._levels) for value in level
        )
        if not weighted:
            return None
        target = q * self._n
        rank = 0
        for value, weight in weighted:
            rank += weight
            if rank >= target:
                return float(value)
        return float(weighted[-1][0])

    def _compact(self) -> None:
        levels, parity, k = self._levels, self._parity, self._k
        height = 0
        while height < len(levels):
            level = levels[height]
            if len(level) >= k:
                level.sort()
                odd_one = [level.pop()] if len(level) % 2 else []
                promoted = level[parity[height] :: 2]
                parity[height] ^= 1
                levels[height] = odd_one
                if height + 1 == len(levels):
                    levels.append([])
                    parity.append(0)
                levels[height + 1].extend(promoted)
                self._error += 1 << height
            height += 1

    def to_state(self) -> list[Any]:
        """A msgpack-ready list; :meth:`from_state` rebuilds the same sketch."""
        return [self._k, self._n, self._error, self._parity, self._levels]

    @classmethod
    def from_state(cls, state: list[Any]) -> QuantileSketch:
        """The sketch :meth:`to_state` described; :class:`InvalidInputError` for anything else."""
        if type(state) not in (list, tuple) or len(state) != 5:
            raise InvalidInputError(
                f"a sketch state is [k, n, error, parity, levels]: {state!r:.60}"
            )
        k, n, error, parity, levels = state
        sketch = cls(k)
        check_int("n", n, minimum=0)
        check_int("error", error, minimum=0)
        if type(parity) is not list or type(levels) is not list:
            raise InvalidInputError("sketch parity and levels must be lists")
        if len(parity) != len(levels) or not levels:
            raise InvalidInputError("sketch levels and parities differ in length")
        for level in levels:
            if type(level) is not list or not _NUMBERS.issuperset(map(type, level)):
                raise InvalidInputError("sketch levels must be lists of numbers")
        sketch._n, sketch._error = n, error
        sketch._parity = [check_int("parity", p, minimum=0, maximum=1) for p in parity]
        sketch._levels = [list(level) for level in levels]
        return sketch
