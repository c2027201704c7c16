"""Windows against the plain reference on the NAB series, and the window semantics one by one."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata import Batch, InvalidInputError, Reading
from iotdata.sinks import WindowAggregate
from iotdata.stream import (
    Aggregation,
    Count,
    Dedup,
    First,
    Hopping,
    Last,
    Mean,
    Quantiles,
    Session,
    StreamOperatorError,
    Tumbling,
    Variance,
    WindowOperator,
    WindowOutput,
)
from iotdata.stream._windows import aligned_segments
from tests.stream._reference import (
    HOUR,
    MINUTE,
    aligned_starts,
    deliver,
    flatten,
    nab_readings,
    reference,
)

S = 1_000_000
AGGREGATIONS = [Count(), Mean(), Variance(), First(), Last(), Quantiles([0.5, 0.9])]
GRACE = 6 * HOUR


def batch(
    device: str,
    metric: str,
    ts: Iterable[int],
    values: Iterable[Any] | None = None,
    seq: Iterable[int] | None = None,
) -> Batch:
    ts = list(ts)
    values = [float(t) for t in ts] if values is None else list(values)
    seq = list(range(len(ts))) if seq is None else list(seq)
    return Batch.from_columns(device, {metric: (ts, values, seq)})


def seconds(*ts: int) -> list[int]:
    return [t * S for t in ts]


@pytest.fixture(scope="module")
def nab_devices(nab_dir: Path) -> dict[str, list[Reading]]:
    return nab_readings(nab_dir, limit=5000)


def run(
    operator: WindowOperator, events: list[tuple[int, Batch]], dedup: Dedup | None = None
) -> tuple[list[WindowAggregate], list[Batch]]:
    """Every final result and late batch; checks each result closed on time."""
    results: list[WindowAggregate] = []
    late: list[Batch] = []
    for partition, item in events:
        for clean in dedup.process(item, partition) if dedup else [item]:
            out = operator.process(clean, partition)
            mark = operator.watermark(partition)
            assert all(r.window_end <= mark for r in out.results)  # closed only when due
            results.extend(out.results)
            late.extend(out.late)
    results.extend(operator.flush().results)  # still open at the end: not yet due
    return results, late


@pytest.mark.parametrize(
    ("window", "shape"),
    [
        (Tumbling(HOUR), {"size": HOUR}),
        (Hopping(3 * HOUR, HOUR), {"size": 3 * HOUR, "hop": HOUR}),
        (Session(50 * MINUTE), {"gap": 50 * MINUTE}),
    ],
    ids=["tumbling", "hopping", "session"],
)
@pytest.mark.parametrize("key_by", ["device_metric", "device"])
def test_windows_equal_the_reference_on_nab(
    nab_devices: dict[str, list[Reading]], window: Any, shape: dict[str, int], key_by: str
) -> None:
    """Out of order within the grace, duplicated, and late beyond it: every window equals the
    reference exactly (variance to 1e-9: its rounding depends on how readings were split), and
    every late reading is returned and counted."""
    events = deliver(nab_devices, seed=len(key_by) + shape.get("size", 0) % 97)
    dedup = Dedup()
    operator = WindowOperator(window, AGGREGATIONS, grace=GRACE, key_by=key_by)
    results, late = run(operator, events, dedup)
    expected, expected_late = reference(events, grace=GRACE, key_by=key_by, **shape)

    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)), "a window was emitted twice"
    got = {r.key: r for r in results}
    assert set(got) == {(d or "*", m or "*", s) for d, m, s in expected}
    for (device, metric, start), (end, ref) in expected.items():
        result = got[(device or "*", metric or "*", start)]
        assert result.window_end == end
        assert (result.count, result.sum, result.min, result.max) == (
            ref.count,
            ref.sum,
            ref.min,
            ref.max,
        )
        assert result.mean == ref.mean
        extra = result.extra
        assert (extra["first"], extra["last"], extra["p50"], extra["p90"]) == (
            ref.first,
            ref.last,
            ref.p50,
            ref.p90,
        )
        if ref.variance is None:
            assert extra["variance"] is None
        else:
            assert math.isclose(extra["variance"], ref.variance, rel_tol=1e-9, abs_tol=1e-12)

    # late readings: returned on the side output and counted, none silently dropped
    assert expected_late, "the scenario should make some readings late"
    assert flatten(late) == flatten(expected_late)
    stats = operator.statistics()
    assert stats["late"] == len(expected_late) == sum(operator.late_counts().values())
    assert stats["open"] == 0
    assert stats["received"] == dedup.statistics()["passed"]
    # and the scenario did exercise duplicates and disorder
    assert dedup.statistics()["duplicates"] > 0
    assert dedup.statistics()["forgotten"] == 0
    assert any(tuple(sorted(b.columns[0].ts)) != b.columns[0].ts for _, b in events)


def test_windows_by_metric_only(nab_devices: dict[str, list[Reading]]) -> None:
    events = [(0, b) for _, b in deliver(nab_devices, seed=3, partitions=1)]
    operator = WindowOperator(Tumbling(HOUR), [Count()], grace=GRACE, key_by="metric")
    results, _ = run(operator, events, Dedup())
    expected, _ = reference(events, size=HOUR, grace=GRACE, key_by="metric")
    assert {r.key: (r.count, r.sum) for r in results} == {
        ("*", m, s): (ref.count, ref.sum) for (_, m, s), (_, ref) in expected.items()
    }


# --- assignment -----------------------------------------------------------------------------


@given(
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=60),
    st.integers(1, 50),
    st.integers(1, 50),
)
def test_aligned_segments_match_a_walk(ts: list[int], size: int, hop: int) -> None:
    hop = min(hop, size)
    ordered = tuple(sorted(ts))
    got = {
        (start, t) for start, i, j in aligned_segments(ordered, size, hop, 0) for t in ordered[i:j]
    }
    assert got == {(start, t) for t in ordered for start in aligned_starts(t, size, hop)}


def test_offset_shifts_tumbling_windows() -> None:
    operator = WindowOperator(Tumbling(10 * S, offset=3 * S), grace=20 * S)
    operator.process(batch("d", "m", seconds(2, 3, 12, 13)))
    assert [(r.window_start, r.count) for r in operator.flush().results] == [
        (-7 * S, 1),
        (3 * S, 2),
        (13 * S, 1),
    ]


def test_durations_are_microseconds_or_timedelta() -> None:
    import datetime as dt  # noqa: PLC0415

    assert Tumbling(dt.timedelta(seconds=10)) == Tumbling(10 * S)
    with pytest.raises(InvalidInputError):
        Tumbling(10.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Hopping(10, 20)
    with pytest.raises(InvalidInputError):
        WindowOperator(Tumbling(10), grace=-1)
    with pytest.raises(InvalidInputError):
        WindowOperator(Tumbling(10), key_by="site")
    with pytest.raises(InvalidInputError):
        WindowOperator(Tumbling(10), [Count(), Count()])


# --- watermark, lateness, closing -----------------------------------------------------------


def test_watermark_is_per_partition_and_moves_between_batches() -> None:
    operator = WindowOperator(Tumbling(10 * S), grace=5 * S)
    assert operator.watermark(0) is None
    out = operator.process(batch("a", "m", seconds(30, 1)))  # one batch: nothing late in it
    assert out.late == ()
    assert operator.watermark(0) == 25 * S
    out = operator.process(batch("b", "m", seconds(24, 25, 26)), 0)
    assert flatten(out.late) == [("b", "m", 24 * S, 0, 24.0 * S)]
    assert operator.process(batch("c", "m", seconds(1)), 1).late == ()  # partition 1: fresh
    assert operator.late_counts() == {("b", "m"): 1}
    assert operator.late_counts(1) == {}


def test_a_window_closes_when_the_watermark_reaches_its_end() -> None:
    operator = WindowOperator(Tumbling(10 * S), grace=2 * S)
    assert operator.process(batch("d", "m", seconds(1, 5, 11))).results == ()
    assert operator.process(batch("d", "m", seconds(11), seq=[5])).results == ()  # W = 9
    out = operator.process(batch("d", "m", seconds(12), seq=[6]))  # W = 10: [0, 10) is due
    assert [(r.window_start, r.window_end, r.count) for r in out.results] == [(0, 10 * S, 2)]
    assert operator.statistics()["open"] == 1


def test_non_numeric_values_are_skipped_and_counted_but_move_time() -> None:
    operator = WindowOperator(Tumbling(10 * S))
    item = batch("d", "m", seconds(1, 2, 30), [1.5, "on", None])
    out = operator.process(item)
    assert [(r.window_start, r.count, r.sum) for r in out.results] == [(0, 1, 1.5)]
    assert operator.statistics()["skipped"] == 2


def test_idle_advance_closes_the_last_window_of_a_quiet_partition() -> None:
    operator = WindowOperator(Tumbling(10 * S), grace=1 * S, idle_timeout=30 * S)
    operator.process(batch("d", "m", seconds(91, 95)), 4)
    operator.process(batch("e", "m", seconds(91)), 5)
    wall = 1_000_000 * S
    assert operator.advance(4, wall) == WindowOutput()  # first look: the idle clock starts
    assert operator.advance(4, wall + 29 * S) == WindowOutput()  # not idle long enough
    out = operator.advance(4, wall + 30 * S)  # idle: W = 95 - 1 + 30 = 124
    assert [(r.device_id, r.window_start) for r in out.results] == [("d", 90 * S)]
    assert operator.watermark(4) == 124 * S
    assert operator.watermark(5) == 90 * S  # other partitions keep their own
    assert operator.process(batch("d", "m", seconds(99), seq=[9]), 4).late  # behind now
    assert operator.advance(9, wall) == WindowOutput()  # unknown partition: nothing


def test_progress_restarts_the_idle_clock() -> None:
    operator = WindowOperator(Tumbling(10 * S), idle_timeout=30 * S)
    operator.process(batch("d", "m", seconds(1)))
    operator.advance(0, 0)
    operator.process(batch("d", "m", seconds(2), seq=[1]))
    assert operator.advance(0, 40 * S) == WindowOutput()  # progress seen: clock restarts here
    assert operator.advance(0, 69 * S) == WindowOutput()
    assert len(operator.advance(0, 70 * S).results) == 1


def test_without_idle_timeout_advance_never_closes() -> None:
    operator = WindowOperator(Tumbling(10 * S))
    operator.process(batch("d", "m", seconds(1)))
    operator.advance(0, 0)
    assert operator.advance(0, 10**12) == WindowOutput()


def test_emit_updates_with_growing_revisions() -> None:
    operator = WindowOperator(Tumbling(10 * S), [Mean()], emit_updates=True)
    first = operator.process(batch("d", "m", seconds(1, 2)))
    second = operator.process(batch("d", "m", seconds(3), seq=[2]))
    assert [(u.revision, u.count) for u in first.updates + second.updates] == [(0, 2), (1, 3)]
    closing = operator.process(batch("d", "m", seconds(10, 11), seq=[3, 4]))
    assert [(r.window_start, r.revision, r.count) for r in closing.results] == [(0, 2, 3)]
    assert [(u.window_start, u.revision) for u in closing.updates] == [(10 * S, 0)]


# --- sessions -----------------------------------------------------------------------------


def sessions_of(outputs: Iterable[WindowOutput]) -> list[tuple[int, int, int]]:
    return sorted(
        (r.window_start // S, r.window_end // S, r.count) for o in outputs for r in o.results
    )


def test_sessions_split_on_gaps_and_merge_when_bridged() -> None:
    operator = WindowOperator(Session(6 * S), [First(), Last()], grace=100 * S)
    outs = [
        operator.process(batch("d", "m", seconds(0, 2, 20, 21), seq=[0, 1, 2, 3])),  # two
        operator.process(batch("d", "m", seconds(10), seq=[4])),  # a third, on its own
        operator.process(batch("d", "m", seconds(7, 15), seq=[5, 6])),  # bridges all three
    ]
    assert operator.statistics()["open"] == 1
    outs.append(operator.flush())
    assert sessions_of(outs) == [(0, 27, 7)]
    result = outs[-1].results[0]
    assert (result.extra["first"], result.extra["last"]) == (0.0, 21.0 * S)


def test_a_reading_exactly_gap_after_the_last_starts_a_new_session() -> None:
    operator = WindowOperator(Session(5 * S))
    outs = [operator.process(batch("d", "m", seconds(0, 4, 9, 20)))]
    outs.append(operator.flush())
    assert sessions_of(outs) == [(0, 9, 2), (9, 14, 1), (20, 25, 1)]


def test_a_session_closes_after_gap_of_event_time_silence() -> None:
    operator = WindowOperator(Session(5 * S), grace=1 * S)
    operator.process(batch("d", "m", seconds(0, 3)))
    assert operator.process(batch("e", "m", seconds(8))).results == ()  # W = 7 < 8
    out = operator.process(batch("e", "m", seconds(9), seq=[1]))  # W = 8 = 3 + 5
    assert sessions_of([out]) == [(0, 8, 2)]


def test_sessions_close_on_idle_advance() -> None:
    operator = WindowOperator(Session(60 * S), idle_timeout=10 * S)
    operator.process(batch("d", "m", seconds(0, 30)))
    operator.advance(0, 0)
    assert operator.advance(0, 59 * S).results == ()
    assert sessions_of([operator.advance(0, 60 * S)]) == [(0, 90, 2)]


# --- user code ---------------------------------------------------------------------------


class Broken(Aggregation):
    name = "broken"

    def create(self) -> None:
        return None

    def add(self, state: Any, values: Any, ts: Any, seq: Any) -> Any:
        raise ZeroDivisionError("boom")

    def merge(self, state: Any, other: Any) -> Any:
        return state

    def result(self, state: Any) -> None:
        return None


def test_a_failing_aggregation_names_the_operator() -> None:
    operator = WindowOperator(Tumbling(10 * S), [Broken()], name="hourly")
    with pytest.raises(StreamOperatorError) as caught:
        operator.process(batch("d", "m", seconds(1)), 3)
    assert caught.value.step == "hourly"
    assert "device 'd'" in str(caught.value) and "partition 3" in str(caught.value)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
