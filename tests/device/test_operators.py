"""Edge operators: exact outputs on hand-made sequences, a real NAB series, and invariants."""

from __future__ import annotations

import csv
import datetime as dt
import doctest
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iotdata
from iotdata.device import _operators
from iotdata.device._operators import (
    AGGREGATIONS,
    Deadband,
    Downsample,
    EdgeOperator,
    EdgeOperatorError,
    EdgeReading,
    Filter,
    Map,
    Pipeline,
    RateLimit,
)
from iotdata.model import Value, ts_from_datetime

S = 1_000_000  # microseconds per second
HOUR = 3600 * S
NAN = math.nan
INF = math.inf


def at(metric: str, seconds: float, value: Value) -> EdgeReading:
    return EdgeReading(metric, round(seconds * S), value)


def run(operator: EdgeOperator, readings: Iterable[EdgeReading]) -> list[EdgeReading]:
    out: list[EdgeReading] = []
    for reading in readings:
        out.extend(operator.process(reading))
    return out


def exact(readings: Iterable[EdgeReading]) -> list[tuple[str, int, object]]:
    """Comparable form: NaN equals NaN, and 1, 1.0 and True differ."""
    return [
        (m, ts, "NaN" if isinstance(v, float) and math.isnan(v) else (type(v).__name__, v))
        for m, ts, v in readings
    ]


def test_module_docstring_example_runs() -> None:
    assert doctest.testmod(_operators).failed == 0


# --- Deadband -------------------------------------------------------------------------------


def test_deadband_first_passes_and_threshold_is_strictly_greater() -> None:
    band = Deadband(0.5)
    inputs = [at("t", 0, 10.0), at("t", 1, 10.5), at("t", 2, 9.5), at("t", 3, 10.75)]
    inputs += [at("t", 4, 10.25), at("t", 5, 10.2)]
    # 10.5 and 9.5 are exactly 0.5 away from 10.0: not more than the threshold.
    assert run(band, inputs) == [inputs[0], inputs[3], inputs[5]]
    assert band.statistics() == {
        "received": 6,
        "emitted": 3,
        "suppressed": 3,
        "heartbeats": 0,
        "dropped": 3,
    }


def test_deadband_compares_with_the_last_passed_value_not_the_last_seen() -> None:
    inputs = [at("t", i, v) for i, v in enumerate([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])]
    # A slow drift still passes once it has moved far enough from the last value passed.
    assert run(Deadband(0.5), inputs) == [inputs[0], inputs[3], inputs[6]]


def test_deadband_zero_threshold_passes_changes_and_drops_repeats() -> None:
    inputs = [at("t", i, v) for i, v in enumerate([1, 1, 2, 2.0, 2, 3])]
    assert run(Deadband(0), inputs) == [inputs[0], inputs[2], inputs[5]]


def test_deadband_relative_threshold() -> None:
    inputs = [at("t", i, v) for i, v in enumerate([100, 110, 90, 111, 122, 122.2, 0, 0, 0.001])]
    # 10 % of 100 is 10 (not more), then of 111 is 11.1; after a passed 0 any change passes.
    assert run(Deadband(0.1, relative=True), inputs) == [
        inputs[0],
        inputs[3],
        inputs[5],
        inputs[6],
        inputs[8],
    ]


def test_deadband_heartbeat_lets_the_next_reading_through() -> None:
    band = Deadband(1.0, heartbeat=10)
    inputs = [at("t", s, 5.0) for s in (0, 5, 10, 15, 19.999999, 20, 21)]
    assert run(band, inputs) == [inputs[0], inputs[2], inputs[5]]
    assert band.statistics()["heartbeats"] == 2
    assert band.statistics()["suppressed"] == 4


def test_deadband_tick_emits_the_latest_held_reading_with_its_own_ts() -> None:
    band = Deadband(1.0, heartbeat=10)
    assert run(band, [at("t", 0, 1.0), at("t", 3, 1.1), at("t", 4, 1.2)]) == [at("t", 0, 1.0)]
    assert band.tick(round(9.999999 * S)) == []
    assert band.tick(10 * S) == [at("t", 4, 1.2)]
    # Nothing new since: nothing is invented, however much time passes.
    assert band.tick(100 * S) == []
    assert band.tick(1000 * S) == []
    # The released reading is now the last passed one: 1.3 is within 1.0 of 1.2, and its
    # heartbeat counts from ts 4 s.
    assert band.process(at("t", 12, 1.3)) == ()
    assert band.tick(13 * S) == []
    assert band.tick(14 * S) == [at("t", 12, 1.3)]
    assert band.statistics() == {
        "received": 4,
        "emitted": 3,
        "suppressed": 3,
        "heartbeats": 2,
        "dropped": 1,
    }


def test_deadband_tick_orders_by_ts_and_needs_a_heartbeat() -> None:
    band = Deadband(1.0, heartbeat=10)
    run(band, [at("a", 0, 0), at("b", 1, 0), at("b", 2, 0), at("a", 3, 0)])
    assert band.tick(11 * S) == [at("b", 2, 0), at("a", 3, 0)]
    silent = Deadband(1.0)
    run(silent, [at("a", 0, 0), at("a", 1, 0)])
    assert silent.tick(10**6 * S) == []


def test_deadband_nan_and_infinities() -> None:
    values = [1.0, NAN, NAN, 1.0, 1.2, INF, INF, -INF, 5.0, NAN, 5.0]
    inputs = [at("t", i, v) for i, v in enumerate(values)]
    passed = [0, 1, 3, 5, 7, 8, 9, 10]
    assert exact(run(Deadband(0.5), inputs)) == exact(inputs[i] for i in passed)


def test_deadband_strings_bools_and_none_pass_when_they_change() -> None:
    values: list[Value] = ["ok", "ok", "fault", None, None, True, True, 1, 1.0, 1.4, False]
    inputs = [at("s", i, v) for i, v in enumerate(values)]
    passed = [0, 2, 3, 5, 7, 10]
    assert exact(run(Deadband(0.5), inputs)) == exact(inputs[i] for i in passed)


def test_deadband_flush_sends_what_it_holds() -> None:
    band = Deadband(1.0)
    run(band, [at("a", 0, 0), at("b", 1, 0), at("a", 2, 0.5), at("b", 3, 0.5), at("a", 4, 0.7)])
    assert band.flush() == [at("b", 3, 0.5), at("a", 4, 0.7)]
    assert band.flush() == []
    stats = band.statistics()
    assert stats["received"] == stats["emitted"] + stats["dropped"] == 5


def test_deadband_metrics_filter_passes_other_metrics_untouched() -> None:
    band = Deadband(1.0, metrics=["temp"])
    inputs = [at("temp", 0, 1.0), at("rpm", 0, 1.0), at("temp", 1, 1.0), at("rpm", 1, 1.0)]
    assert run(band, inputs) == [inputs[0], inputs[1], inputs[3]]
    assert "metrics=('temp',)" in repr(band)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-1,), {}, "threshold"),
        ((NAN,), {}, "threshold"),
        ((True,), {}, "threshold"),
        (("1",), {}, "threshold"),
        ((1,), {"heartbeat": 0}, "heartbeat"),
        ((1,), {"heartbeat": INF}, "heartbeat"),
        ((1,), {"relative": "yes"}, "relative"),
        ((1,), {"metrics": "temp"}, "metrics"),
        ((1,), {"metrics": ["temp", 3]}, "metrics"),
    ],
)
def test_deadband_refuses_bad_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(iotdata.InvalidInputError, match=match):
        Deadband(*args, **kwargs)  # type: ignore[arg-type]


# Hypothesis: a stream of readings of two metrics, with ticks in between.

values_st = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.sampled_from(["on", "off", None, True, False]),
)
event_st = st.tuples(st.sampled_from(["a", "b", "tick"]), st.integers(0, 4 * S), values_st)


def stream(events: Sequence[tuple[str, int, Value]]) -> list[EdgeReading | int]:
    """Readings with non-decreasing ts; an int is a tick at that time."""
    now, out = 0, []
    for kind, step, value in events:
        now += step
        out.append(now if kind == "tick" else EdgeReading(kind, now, value))
    return out


def drive(operator: EdgeOperator, items: Sequence[EdgeReading | int]) -> list[EdgeReading]:
    out: list[EdgeReading] = []
    for item in items:
        out.extend(operator.tick(item) if isinstance(item, int) else operator.process(item))
    return out


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(event_st, max_size=40),
    threshold=st.sampled_from([0, 0.5, 2]),
    heartbeat=st.sampled_from([None, 1, 5]),
    relative=st.booleans(),
)
def test_deadband_invents_nothing_and_accounts_for_everything(
    events: list[tuple[str, int, Value]], threshold: float, heartbeat: int | None, relative: bool
) -> None:
    items = stream(events)
    inputs = [item for item in items if isinstance(item, EdgeReading)]
    band = Deadband(threshold, heartbeat=heartbeat, relative=relative)
    out = drive(band, items) + list(band.flush())
    positions = {id(reading): index for index, reading in enumerate(inputs)}
    assert all(id(reading) in positions for reading in out)  # only readings it was given
    assert len({id(reading) for reading in out}) == len(out)  # each at most once
    for metric in ("a", "b"):  # in their order, metric by metric
        order = [positions[id(reading)] for reading in out if reading.metric == metric]
        assert order == sorted(order)
    stats = band.statistics()
    assert stats["received"] == len(inputs)
    assert stats["emitted"] == len(out)
    assert stats["received"] == stats["emitted"] + stats["dropped"]


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3 * S), st.integers(-8, 8)),
        max_size=40,
    ),
    threshold=st.sampled_from([0, 1, 2.5]),
    heartbeat=st.sampled_from([None, 2, 6]),
)
def test_deadband_passes_exactly_the_moves_and_the_heartbeats(
    events: list[tuple[str, int, Value]], threshold: float, heartbeat: int | None
) -> None:
    inputs = [item for item in stream(events) if isinstance(item, EdgeReading)]
    out = run(Deadband(threshold, heartbeat=heartbeat), inputs)
    passed = {id(reading) for reading in out}
    last: dict[str, EdgeReading] = {}
    for reading in inputs:
        previous = last.get(reading.metric)
        due = previous is None or abs(reading.value - previous.value) > threshold  # type: ignore[operator]
        if previous is not None and heartbeat is not None:
            due = due or reading.ts - previous.ts >= heartbeat * S
        assert (id(reading) in passed) == due
        if due:
            last[reading.metric] = reading


# --- Downsample -----------------------------------------------------------------------------


def test_downsample_emits_every_aggregation_at_the_window_start() -> None:
    down = Downsample(60, AGGREGATIONS)
    inputs = [at("x", 0, 1), at("x", 10, 3), at("x", 59.999999, 2), at("x", 60, 5.0)]
    out = run(down, inputs)
    assert exact(out) == exact(
        [
            EdgeReading("x.min", 0, 1),
            EdgeReading("x.max", 0, 3),
            EdgeReading("x.mean", 0, 2.0),
            EdgeReading("x.count", 0, 3),
            EdgeReading("x.sum", 0, 6),
            EdgeReading("x.first", 0, 1),
            EdgeReading("x.last", 0, 2),
        ]
    )
    assert exact(down.flush()) == exact(
        EdgeReading(f"x.{name}", 60 * S, value)
        for name, value in zip(AGGREGATIONS, [5.0, 5.0, 5.0, 1, 5.0, 5.0, 5.0], strict=True)
    )
    assert down.statistics() == {
        "received": 4,
        "emitted": 14,
        "dropped": 0,
        "late": 0,
        "non_numeric": 0,
        "windows": 2,
    }


def test_downsample_keep_name_and_aggregation_order() -> None:
    down = Downsample(10, ["mean"], keep_name=True)
    assert run(down, [at("x", 1, 1), at("x", 2, 2), at("x", 11, 0)]) == [at("x", 0, 1.5)]
    down = Downsample(10, ("last", "count"))
    assert run(down, [at("x", 1, 1), at("x", 11, 0)]) == [at("x.last", 0, 1), at("x.count", 0, 1)]


def test_downsample_first_and_last_go_by_ts() -> None:
    down = Downsample(10, ("first", "last", "count"))
    run(down, [at("x", 5, "a-str"), at("x", 5, 50), at("x", 2, 20), at("x", 2, 21)])
    run(down, [at("x", 8, 80), at("x", 3, 30), at("x", 8, 81)])
    assert down.flush() == [at("x.first", 0, 20), at("x.last", 0, 81), at("x.count", 0, 6)]


def test_downsample_tick_closes_windows_after_grace() -> None:
    down = Downsample(60, ("count",), grace=5)
    run(down, [at("a", 0, 1), at("a", 30, 1), at("b", 61, 1)])
    assert down.tick(60 * S) == []
    assert down.tick(65 * S - 1) == []
    assert down.tick(65 * S) == [at("a.count", 0, 2)]
    assert down.tick(65 * S) == []
    # The window [0, 60) is closed for every metric now, including one never seen before;
    # [60, 120) is still open.
    assert run(down, [at("a", 59, 1), at("c", 1, 1), at("a", 62, 1)]) == []
    assert down.statistics()["late"] == 2
    assert down.tick(185 * S) == [at("b.count", 60, 1), at("a.count", 60, 1)]
    assert down.flush() == []


def test_downsample_late_readings_are_dropped_and_counted() -> None:
    down = Downsample(10, ("sum",))
    assert run(down, [at("x", 21, 1), at("x", 15, 100), at("x", 22, 2)]) == []
    assert run(down, [at("x", 30, 5), at("x", 29, 100), at("x", 20, 100)]) == [at("x.sum", 20, 3)]
    assert down.flush() == [at("x.sum", 30, 5)]
    assert down.statistics()["late"] == down.statistics()["dropped"] == 3


def test_downsample_drops_non_numbers_without_touching_windows() -> None:
    down = Downsample(10, ("count", "min", "max"))
    inputs = [at("x", 1, 1.5), at("x", 2, "on"), at("x", 3, True), at("x", 4, None)]
    inputs += [at("x", 15, NAN), at("x", 5, -INF), at("x", 6, 7)]
    assert run(down, inputs) == []
    assert down.flush() == [at("x.count", 0, 3), at("x.min", 0, -INF), at("x.max", 0, 7)]
    assert down.statistics()["non_numeric"] == 4


def test_downsample_aligns_to_the_epoch_and_handles_negative_ts() -> None:
    down = Downsample(60, ("count",))
    run(down, [EdgeReading("x", -1, 1), EdgeReading("x", -60 * S, 1)])
    assert down.flush() == [EdgeReading("x.count", -60 * S, 2)]


def test_downsample_int_sum_beyond_the_wire_range_becomes_float() -> None:
    down = Downsample(10, ("sum", "max"))
    run(down, [at("x", 1, 2**64 - 1), at("x", 2, 1)])
    assert exact(down.flush()) == exact([at("x.sum", 0, float(2**64)), at("x.max", 0, 2**64 - 1)])


def test_downsample_metrics_filter() -> None:
    down = Downsample(10, metrics={"x"})
    assert run(down, [at("x", 1, 1), at("state", 1, "on"), at("y", 2, 3)]) == [
        at("state", 1, "on"),
        at("y", 2, 3),
    ]
    assert down.flush() == [at("x.mean", 0, 1.0)]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0,), {}, "window"),
        ((-5,), {}, "window"),
        ((60, "mean"), {}, "aggregations"),
        ((60, ["median"]), {}, "aggregations"),
        ((60, ["mean", "mean"]), {}, "aggregations"),
        ((60, []), {}, "aggregations"),
        ((60,), {"grace": -1}, "grace"),
        ((60, ["min", "max"]), {"keep_name": True}, "keep_name"),
    ],
)
def test_downsample_refuses_bad_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(iotdata.InvalidInputError, match=match):
        Downsample(*args, **kwargs)  # type: ignore[arg-type]


def read_nab(path: Path) -> list[EdgeReading]:
    with path.open(newline="") as handle:
        return [
            EdgeReading(
                "v",
                ts_from_datetime(dt.datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S")),
                float(row["value"]) if "." in row["value"] else int(row["value"]),
            )
            for row in csv.DictReader(handle)
        ]


def reference_hourly(readings: Sequence[EdgeReading]) -> dict[tuple[str, int], Value]:
    """Hourly aggregates computed plainly: group by the hour of a datetime, then aggregate."""
    hours: dict[int, list[EdgeReading]] = {}
    for reading in readings:
        moment = dt.datetime.fromtimestamp(reading.ts / S, tz=dt.timezone.utc)
        start = ts_from_datetime(moment.replace(minute=0, second=0, microsecond=0))
        hours.setdefault(start, []).append(reading)
    expected: dict[tuple[str, int], Value] = {}
    for start, group in hours.items():
        values = [reading.value for reading in group]
        expected[("v.min", start)] = min(values)  # type: ignore[type-var]
        expected[("v.max", start)] = max(values)  # type: ignore[type-var]
        expected[("v.count", start)] = len(values)
        expected[("v.sum", start)] = math.fsum(values)  # type: ignore[arg-type]
        expected[("v.mean", start)] = math.fsum(values) / len(values)  # type: ignore[arg-type]
        # first: the earliest ts, first to arrive; last: the latest ts, last to arrive.
        expected[("v.first", start)] = min(group, key=lambda r: r.ts).value
        expected[("v.last", start)] = max(reversed(group), key=lambda r: r.ts).value
    return expected


@pytest.mark.parametrize(
    "name",
    ["machine_temperature_system_failure.csv", "nyc_taxi.csv", "occupancy_6005.csv"],
)
def test_downsample_hourly_matches_a_plain_computation_on_nab(nab_dir: Path, name: str) -> None:
    readings = read_nab(nab_dir / name)
    expected = reference_hourly(readings)
    down = Downsample(3600, AGGREGATIONS)
    out = run(down, readings)
    last_start = max(start for _, start in expected)
    assert down.tick(last_start + HOUR - 1) == []
    closing = down.tick(last_start + HOUR)
    assert {reading.ts for reading in closing} == {last_start}
    got = {(reading.metric, reading.ts): reading.value for reading in out + list(closing)}
    assert len(out) + len(closing) == len(got)  # one reading per aggregation and window
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0] in ("v.sum", "v.mean"):
            assert math.isclose(got[key], value, rel_tol=1e-12), key  # type: ignore[arg-type]
        else:
            assert type(got[key]) is type(value), key
            assert got[key] == value, key
    stats = down.statistics()
    assert stats["windows"] == len(expected) // len(AGGREGATIONS)
    assert stats["dropped"] == 0
    # A reading for an hour already emitted is late.
    assert down.process(readings[len(readings) // 2]) == ()
    assert down.statistics()["late"] == 1


def test_downsample_nab_machine_temperature_repeated_hour(nab_dir: Path) -> None:
    """The series repeats 2014-01-07 02:00-02:55: the hour holds both runs, first/last by ts."""
    readings = read_nab(nab_dir / "machine_temperature_system_failure.csv")
    down = Downsample(3600, ("count", "first", "last"))
    out = run(down, readings)
    start = ts_from_datetime(dt.datetime(2014, 1, 7, 2))
    assert [r for r in out if r.ts == start] == [
        EdgeReading("v.count", start, 24),
        EdgeReading("v.first", start, 94.42340604),
        EdgeReading("v.last", start, 93.65604154),
    ]


# --- RateLimit ------------------------------------------------------------------------------


def test_rate_limit_spaces_readings_without_burst() -> None:
    limit = RateLimit(1, burst=1)
    inputs = [at("x", s, s) for s in (0, 0.5, 0.999999, 1.0, 1.5, 2.0, 2.0)]
    assert run(limit, inputs) == [inputs[0], inputs[3], inputs[5]]
    assert limit.statistics() == {"received": 7, "emitted": 3, "dropped": 4}


def test_rate_limit_burst_then_refill() -> None:
    limit = RateLimit(1, burst=3)
    assert len(run(limit, [at("x", 0, i) for i in range(5)])) == 3
    assert len(run(limit, [at("x", 1, i) for i in range(2)])) == 1
    assert len(run(limit, [at("x", 3, i) for i in range(3)])) == 2
    assert len(run(limit, [at("x", 100, i) for i in range(5)])) == 3  # never more than burst
    assert limit.statistics()["dropped"] == 15 - 9


def test_rate_limit_default_burst_is_one_second_of_tokens() -> None:
    assert len(run(RateLimit(2.5), [at("x", 0, i) for i in range(10)])) == 3
    assert len(run(RateLimit(0.1), [at("x", 0, i) for i in range(10)])) == 1


def test_rate_limit_per_metric_filter_and_data_time() -> None:
    limit = RateLimit(1, burst=1, metrics=["a", "b"])
    inputs = [at("a", 10, 1), at("b", 10, 1), at("c", 10, 1), at("c", 10, 2), at("a", 5, 0)]
    # Each metric has its own bucket; "c" is not limited; a ts going backwards finds no token.
    assert run(limit, inputs) == inputs[:4]
    assert not limit.tick(10**9 * S)
    assert not limit.flush()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0,), {}, "max_per_second"),
        ((-1,), {}, "max_per_second"),
        ((INF,), {}, "max_per_second"),
        ((2e6,), {}, "max_per_second"),
        ((1,), {"burst": 0}, "burst"),
        ((1,), {"burst": 1.5}, "burst"),
        ((1,), {"burst": True}, "burst"),
    ],
)
def test_rate_limit_refuses_bad_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(iotdata.InvalidInputError, match=match):
        RateLimit(*args, **kwargs)  # type: ignore[arg-type]


def reference_bucket(times: Sequence[int], rate: float, burst: int) -> list[int]:
    """A plain token bucket with exact fractions, refilled at ``rate`` (per microsecond
    interval rounded up, as RateLimit documents)."""
    interval = math.ceil(Fraction(S) / Fraction(rate))
    tokens, previous, passed = Fraction(burst), None, []
    for ts in times:
        if previous is not None:
            tokens = min(Fraction(burst), tokens + Fraction(ts - previous, interval))
        previous = ts
        if tokens >= 1:
            tokens -= 1
            passed.append(ts)
    return passed


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.integers(0, 2 * S), max_size=60),
    rate=st.one_of(st.sampled_from([0.5, 1, 3, 10]), st.floats(0.01, 1000)),
    burst=st.integers(1, 5),
)
def test_rate_limit_is_a_token_bucket_and_never_exceeds_its_budget(
    steps: list[int], rate: float, burst: int
) -> None:
    times = list(itertools.accumulate(steps))
    limit = RateLimit(rate, burst=burst)
    out = [reading.ts for reading in run(limit, [EdgeReading("x", ts, 0) for ts in times])]
    assert out == reference_bucket(times, rate, burst)
    for i in range(len(out)):
        for j in range(i, len(out)):
            assert j - i + 1 <= burst + rate * (out[j] - out[i]) / S + 1e-9


# --- Filter and Map -------------------------------------------------------------------------


def test_filter_and_map() -> None:
    keep = Filter(lambda reading: reading.value is not None, metrics=["x"])
    inputs = [at("x", 0, None), at("x", 1, 1), at("y", 2, None)]
    assert run(keep, inputs) == inputs[1:]
    assert keep.statistics() == {"received": 3, "emitted": 2, "dropped": 1}
    rename = Map(lambda reading: reading._replace(metric="site1." + reading.metric))
    assert run(rename, inputs[:1]) == [at("site1.x", 0, None)]
    assert rename.statistics() == {"received": 1, "emitted": 1}


# --- Pipeline -------------------------------------------------------------------------------


def test_pipeline_chains_process() -> None:
    edge = Pipeline(Deadband(0.5), RateLimit(1, burst=1))
    inputs = [at("t", 0, 1.0), at("t", 0.5, 2.0), at("t", 1, 3.0), at("t", 1.5, 3.2)]
    assert run(edge, inputs) == [inputs[0], inputs[2]]
    assert isinstance(edge, EdgeOperator)
    assert run(Pipeline(), inputs) == inputs


def test_pipeline_tick_output_goes_through_later_steps() -> None:
    edge = Pipeline(
        Deadband(0, heartbeat=10),
        Downsample(60, ("count", "last")),
        Map(lambda reading: reading._replace(metric="dev." + reading.metric)),
    )
    assert run(edge, [at("t", 0, 1.0), at("t", 5, 1.0)]) == []
    # The deadband releases the reading held since 5 s; the downsample counts it in [0, 60)
    # before its own tick closes that window; the map renames the aggregates.
    assert edge.tick(60 * S) == [at("dev.t.count", 0, 2), at("dev.t.last", 0, 1.0)]
    assert edge.tick(120 * S) == []


def test_pipeline_flush_goes_through_later_steps() -> None:
    edge = Pipeline(Deadband(1.0), Downsample(60, ("count", "last")))
    assert run(edge, [at("t", 0, 1.0), at("t", 5, 1.5), at("t", 61, 1.5)]) == []
    assert edge.flush() == [
        at("t.count", 0, 1),
        at("t.last", 0, 1.0),
        at("t.count", 60, 1),
        at("t.last", 60, 1.5),
    ]


def test_pipeline_statistics_name_each_step() -> None:
    edge = Pipeline(Deadband(0.5), RateLimit(1, burst=1), Pipeline(Map(lambda r: r)))
    run(edge, [at("t", 0, 1.0), at("t", 0.1, 1.1), at("t", 0.2, 2.0), at("t", 1, 3.0)])
    stats: Mapping[str, int] = edge.statistics()
    assert stats["received"] == 4 and stats["emitted"] == 2
    assert stats["0.Deadband.received"] == 4
    assert stats["0.Deadband.suppressed"] == 1
    assert stats["1.RateLimit.received"] == 3
    assert stats["1.RateLimit.dropped"] == 1
    assert stats["2.Pipeline.received"] == 2
    assert stats["2.Pipeline.0.Map.emitted"] == 2


class Broken:
    """An operator that fails in the method named."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __repr__(self) -> str:
        return f"Broken({self.where!r})"

    def _fail(self, method: str) -> None:
        if method == self.where:
            raise RuntimeError(f"{method} went wrong")

    def process(self, reading: EdgeReading) -> Sequence[EdgeReading]:
        self._fail("process")
        return (reading,)

    def tick(self, now: int) -> Sequence[EdgeReading]:
        self._fail("tick")
        return ()

    def flush(self) -> Sequence[EdgeReading]:
        self._fail("flush")
        return ()

    def statistics(self) -> Mapping[str, int]:
        return {}


def test_pipeline_error_names_the_step_and_the_reading() -> None:
    edge = Pipeline(Map(lambda r: r._replace(value=1 / r.value)), Deadband(1))  # type: ignore[operator]
    with pytest.raises(EdgeOperatorError) as caught:
        edge.process(at("t", 1, 0))
    message = str(caught.value)
    assert "edge step 0 Map(" in message
    assert "process(EdgeReading(metric='t', ts=1000000, value=0))" in message
    assert "ZeroDivisionError" in message
    assert isinstance(caught.value, iotdata.IotDataError)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("where", "call"),
    [
        ("process", "process(EdgeReading(metric='t', ts=7000000, value=1.0))"),
        ("tick", "tick(now=99)"),
        ("flush", "flush()"),
    ],
)
def test_pipeline_error_in_a_later_step_or_method(where: str, call: str) -> None:
    edge = Pipeline(Deadband(0.5), Broken(where))
    with pytest.raises(EdgeOperatorError, match="went wrong") as caught:
        edge.process(at("t", 7, 1.0))
        edge.tick(99)
        edge.flush()
    assert f"edge step 1 Broken({where!r}) failed in {call}" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_nested_pipeline_error_names_both_steps() -> None:
    edge = Pipeline(Deadband(0.5), Pipeline(RateLimit(5), Broken("process")))
    with pytest.raises(EdgeOperatorError) as caught:
        edge.process(at("t", 0, 1.0))
    message = str(caught.value)
    assert message.startswith("edge step 1 Pipeline(RateLimit(")
    assert "EdgeOperatorError: edge step 1 Broken('process') failed" in message


def test_pipeline_refuses_what_is_not_an_operator() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="not an edge operator"):
        Pipeline(Deadband(1), lambda reading: reading)  # type: ignore[arg-type]
