"""Aggregations: exact sums whatever the split, stable variance, order statistics, the sketch's
error bound, and user-defined aggregations through the same interface."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import sys
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from iotdata import Batch
from iotdata.stream import (
    Aggregation,
    ApproxQuantiles,
    Count,
    First,
    Last,
    Max,
    Mean,
    Min,
    Quantiles,
    QuantileSketch,
    Session,
    Stddev,
    Sum,
    Tumbling,
    Variance,
    WindowOperator,
)

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
numbers = st.one_of(finite, st.integers(-(2**53), 2**53))


def split(values: list[Any], cuts: list[int]) -> list[list[Any]]:
    bounds = sorted({0, len(values), *(c % (len(values) + 1) for c in cuts)})
    return [values[a:b] for a, b in itertools.pairwise(bounds)]


def feed(aggregation: Aggregation, chunks: list[list[Any]]) -> Any:
    state = aggregation.create()
    for chunk in chunks:
        if chunk:
            ts = list(range(len(chunk)))
            state = aggregation.add(state, chunk, ts, ts)
    return state


@given(
    st.lists(numbers, min_size=1, max_size=80),
    st.lists(st.integers(0, 100), max_size=6),
    st.randoms(use_true_random=False),
)
def test_sum_and_mean_are_exact_whatever_the_order_and_split(
    values: list[Any], cuts: list[int], rng: random.Random
) -> None:
    exact = math.fsum(values)
    shuffled = values[:]
    rng.shuffle(shuffled)
    chunks = split(shuffled, cuts)
    summary = Sum().create()
    for index, chunk in enumerate(chunks):  # some added, some merged from states of their own
        if index % 2:
            summary = Sum().merge(summary, feed(Sum(), [chunk]))
        else:
            summary = Sum().add(summary, chunk, [], [])
    assert Sum().result(summary) == exact
    assert Mean().result(summary) == exact / len(values)
    assert Count().result(summary) == len(values)
    assert (Min().result(summary), Max().result(summary)) == (min(values), max(values))


def test_sums_cancel_exactly_and_overflow_as_documented() -> None:
    assert Sum().result(feed(Sum(), [[1e308, 1e308, -1e308]])) == 1e308  # within one slice
    assert Sum().result(feed(Sum(), [[1e308, 1e308], [-1e308]])) == 1e308  # across slices too
    huge = [[1e308] * 40, [1e308] * 40, [-1e308] * 10]  # normalized past 64 values: overflow
    assert Sum().result(feed(Sum(), huge)) == math.inf  # sticks at inf
    assert Sum().result(feed(Sum(), [[1e308] * 3])) == math.inf  # simply beyond the range
    assert Sum().result(feed(Sum(), [[1e16, 1.0], [-1e16]])) == 1.0
    assert Sum().result(feed(Sum(), [[0.1] * 10])) == 1.0


def test_non_finite_values() -> None:
    state = feed(Sum(), [[1.0, math.nan, 3.0]])
    assert math.isnan(Sum().result(state))
    assert (Min().result(state), Max().result(state), Count().result(state)) == (1.0, 3.0, 3)
    assert Sum().result(feed(Sum(), [[math.inf, 1.0]])) == math.inf
    assert math.isnan(Sum().result(feed(Sum(), [[math.inf], [-math.inf]])))
    assert Min().result(feed(Min(), [[math.nan]])) is None
    assert Quantiles([0.5]).result(feed(Quantiles([0.5]), [[math.nan, 2.0]])) == {"p50": 2.0}


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60),
    st.lists(st.integers(0, 100), max_size=5),
)
@example(values=[0.0, 3.104466556437403e-158], cuts=[])  # a subnormal variance
def test_variance_matches_statistics_to_a_tolerance(values: list[float], cuts: list[int]) -> None:
    """Chan's combination rounds differently for each split: equal to 1e-9 relative. A variance
    below the smallest normal float (subnormal, under 2.2e-308) has no relative precision left."""
    chunks = split(values, cuts)
    added = feed(Variance(), chunks)
    merged = Variance().create()
    for chunk in chunks:
        merged = Variance().merge(merged, feed(Variance(), [chunk]))
    expected = statistics.variance(values)
    tolerance = max(max(abs(v) for v in values) ** 2 * 1e-12, sys.float_info.min)
    for state in (added, merged):
        assert math.isclose(Variance().result(state), expected, rel_tol=1e-9, abs_tol=tolerance)
    assert math.isclose(
        Variance(ddof=0).result(added),
        statistics.pvariance(values),
        rel_tol=1e-9,
        abs_tol=tolerance,
    )
    assert math.isclose(Stddev().result(added) ** 2, expected, rel_tol=1e-9, abs_tol=tolerance)
    assert Variance().result(feed(Variance(), [[1.0]])) is None


def test_first_and_last_order_by_ts_then_seq() -> None:
    ts, seq, values = [5, 5, 5, 9, 9], [7, 3, 4, 2, 8], [1.0, 2.0, 3.0, 4.0, 5.0]
    assert First().result(First().add(None, values, ts, seq)) == 2.0
    assert Last().result(Last().add(None, values, ts, seq)) == 5.0
    early = First().add(None, [9.0], [1], [0])
    assert First().result(First().merge(First().add(None, values, ts, seq), early)) == 9.0
    assert Last().result(Last().merge(None, None)) is None


@given(
    st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=100),
    st.lists(st.floats(0, 1), min_size=1, max_size=4),
)
def test_exact_quantiles_are_nearest_rank(values: list[float], qs: list[float]) -> None:
    result = Quantiles(qs, name="q").result(feed(Quantiles(qs, name="q"), [values]))
    ordered = sorted(values)
    for q in qs:
        value = result[f"q{q * 100:g}"]
        assert sum(v <= value for v in values) >= q * len(values)
        assert value == ordered[max(0, math.ceil(q * len(values)) - 1)]


def check_sketch(sketch: QuantileSketch, values: list[float]) -> float:
    """Assert the documented guarantee for many q; return the largest rank error / n."""
    n = len(values)
    ordered = sorted(values)
    bound = sketch.error_bound
    assert bound <= QuantileSketch.worst_case_error(n, sketch.k)
    worst = 0.0
    for q in [i / 100 for i in range(101)]:
        value = sketch.quantile(q)
        below = sum(1 for v in ordered if v < value)
        upto = sum(1 for v in ordered if v <= value)
        assert below < q * n + bound + 1e-9 and upto >= q * n - bound - 1e-9
        worst = max(worst, (below - q * n) / n, (q * n - upto) / n)
    return worst


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3000),
    st.sampled_from([8, 16, 64]),
    st.lists(st.integers(0, 3000), max_size=4),
)
def test_sketch_rank_error_within_its_bound(values: list[float], k: int, cuts: list[int]) -> None:
    whole = QuantileSketch(k)
    merged = QuantileSketch(k)
    for chunk in split(values, cuts):
        whole.add(chunk)
        part = QuantileSketch(k)
        part.add(chunk)
        merged.merge(part)
    for sketch in (whole, merged):
        assert sketch.n == len(values)
        check_sketch(sketch, values)
        assert QuantileSketch.from_state(sketch.to_state()).to_state() == sketch.to_state()


def test_sketch_on_many_readings_is_much_better_than_its_bound() -> None:
    rng = random.Random(1)
    values = [rng.gauss(0, 1) for _ in range(100_000)]
    sketch = QuantileSketch(256)
    for start in range(0, len(values), 100):
        sketch.add(values[start : start + 100])
    worst = check_sketch(sketch, values)
    bound = sketch.error_bound / len(values)
    print(
        f"sketch k=256 n=100000: measured rank error {worst:.4%}, tracked bound {bound:.2%}, "
        f"worst case {QuantileSketch.worst_case_error(100_000, 256) / 100_000:.2%}"
    )
    assert worst <= bound
    assert sum(map(len, sketch.to_state()[4])) <= 256 * 10


def test_several_aggregations_at_once_in_a_window() -> None:
    aggregations = [
        Count(),
        Mean(),
        Stddev(),
        First(),
        Last(),
        Quantiles([0.5]),
        ApproxQuantiles([0.5], k=8),
        Min(name="lowest"),
    ]
    operator = WindowOperator(Tumbling(100), aggregations)
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    operator.process(Batch.from_columns("d", {"m": (range(11), values, range(11))}))
    (result,) = operator.flush().results
    assert (result.count, result.sum, result.min, result.max) == (11, 44.0, 1.0, 9.0)
    assert result.mean == 4.0
    extra = dict(result.extra)
    assert math.isclose(extra.pop("stddev"), statistics.stdev(values))
    assert extra.pop("approx_p50") in values
    assert extra == {"first": 3.0, "last": 5.0, "p50": 4.0, "lowest": 1.0}


class Range(Aggregation):
    """The docstring's example: max - min, with a plain list state."""

    name = "range"

    def create(self) -> Any:
        return None

    def add(self, state: Any, values: Any, ts: Any, seq: Any) -> Any:
        low, high = min(values), max(values)
        return [low, high] if state is None else [min(low, state[0]), max(high, state[1])]

    def merge(self, state: Any, other: Any) -> Any:
        return (
            other if state is None else state if other is None else self.add(state, other, (), ())
        )

    def result(self, state: Any) -> float | None:
        return None if state is None else state[1] - state[0]


def test_user_defined_aggregation_in_windows_sessions_and_snapshots() -> None:
    operator = WindowOperator(Session(6), [Range()], grace=100)
    operator.process(Batch.from_columns("d", {"m": ([0, 1, 10], [4.0, 1.0, 8.0], [0, 1, 2])}))
    clone = WindowOperator(Session(6), [Range()], grace=100)
    clone.restore(operator.snapshot())
    for op in (operator, clone):
        op.process(Batch.from_columns("d", {"m": ([5], [20.0], [3])}))  # bridges the two
        (result,) = op.flush().results
        assert (result.window_start, result.window_end, result.extra["range"]) == (0, 16, 19.0)
