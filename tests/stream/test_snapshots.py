"""restore(snapshot()) continues exactly like the original; partitions move one by one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdata import Batch
from iotdata.stream import (
    ApproxQuantiles,
    Chain,
    Dedup,
    Filter,
    First,
    Flatline,
    Hopping,
    Last,
    Mean,
    MissingData,
    Quantiles,
    RateOfChange,
    Session,
    SnapshotError,
    Threshold,
    Tumbling,
    Variance,
    WindowOperator,
    ZScore,
)
from tests.stream.test_aggregations import Range

Event = tuple[str, int, Any]  # ("batch", partition, Batch) or ("advance", partition, now)


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """Batches of three devices over three partitions drifting forward in time with jitter,
    some repeated (duplicates), and wall-clock advances in between."""
    events: list[Event] = []
    seqs = {"a": 0, "b": 0, "c": 0}
    sent: list[Batch] = []
    for index in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["batch"] * 5 + ["advance", "repeat"]))
        if kind == "advance":
            events.append(("advance", draw(st.integers(0, 2)), index * 7))
            continue
        if kind == "repeat" and sent:
            item = draw(st.sampled_from(sent))
        else:
            device = draw(st.sampled_from("abc"))
            columns = {}
            for metric in draw(
                st.lists(st.sampled_from("xy"), min_size=1, max_size=2, unique=True)
            ):
                size = draw(st.integers(1, 6))
                ts = [index * 5 + draw(st.integers(-25, 25)) for _ in range(size)]
                values = [draw(st.floats(-100, 100)) for _ in range(size)]
                columns[metric] = (ts, values, list(range(seqs[device], seqs[device] + size)))
                seqs[device] += size
            item = Batch.from_columns(device, columns)
            sent.append(item)
        events.append(("batch", "abc".index(item.device_id), item))
    return events


def apply(operator: Any, events: list[Event]) -> list[Any]:
    out = []
    for kind, partition, payload in events:
        if kind == "batch":
            out.append(operator.process(payload, partition))
        else:
            out.append(operator.advance(partition, payload))
    return out


def windows(kind: str, grace: int, updates: bool) -> Callable[[], WindowOperator]:
    window = {"tumbling": Tumbling(20), "hopping": Hopping(30, 10), "session": Session(12)}[kind]
    aggregations = [
        Mean(),
        Variance(),
        First(),
        Last(),
        Quantiles([0.5]),
        ApproxQuantiles([0.5], k=8),
        Range(),
    ]
    return lambda: WindowOperator(
        window, aggregations, grace=grace, idle_timeout=30, emit_updates=updates
    )


def check_split(make: Callable[[], Any], events: list[Event], cut: int) -> None:
    whole = make()
    expected = apply(whole, events)
    first = make()
    got = apply(first, events[:cut])
    second = make()
    second.restore(first.snapshot())
    got += apply(second, events[cut:])
    assert got == expected
    assert second.statistics() == whole.statistics()
    if hasattr(whole, "flush"):
        assert second.flush() == whole.flush()


def check_handover(make: Callable[[], Any], events: list[Event], cut: int) -> None:
    """Each partition's state moves to an operator of its own (a rebalance)."""
    whole = make()
    expected = apply(whole, events)
    first = make()
    apply(first, events[:cut])
    for partition in range(3):
        taker = make()
        taker.restore(first.snapshot([partition]))
        assert taker.partitions in ([partition], [])
        mine = [i for i in range(cut, len(events)) if events[i][1] == partition]
        assert apply(taker, [events[i] for i in mine]) == [expected[i] for i in mine]
    first.forget([0, 1, 2])
    assert first.partitions == []


common = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(
    streams(),
    st.integers(0, 40),
    st.sampled_from(["tumbling", "hopping", "session"]),
    st.integers(0, 15),
    st.booleans(),
)
def test_window_operator_restores_exactly(
    events: list[Event], cut: int, kind: str, grace: int, updates: bool
) -> None:
    check_split(windows(kind, grace, updates), events, cut % (len(events) + 1))


@common
@given(streams(), st.integers(0, 40), st.sampled_from(["tumbling", "session"]))
def test_window_partitions_hand_over(events: list[Event], cut: int, kind: str) -> None:
    check_handover(windows(kind, 5, False), events, cut % (len(events) + 1))


@common
@given(streams(), st.integers(0, 40), st.integers(1, 8))
def test_dedup_restores_exactly(events: list[Event], cut: int, max_runs: int) -> None:
    events = [e for e in events if e[0] == "batch"]
    make = lambda: Dedup(max_runs=max_runs, max_devices=2)  # noqa: E731
    check_split(make, events, cut % (len(events) + 1))
    check_handover(make, events, cut % (len(events) + 1))


DETECTORS: list[Callable[[], Any]] = [
    lambda: Threshold(above=50.0, below=-50.0, cooldown=10),
    lambda: ZScore(alpha=0.3, threshold=1.0, warmup=2),
    lambda: RateOfChange(max_rate=2e6),
    lambda: Flatline(epsilon=80.0, count=3),
    lambda: MissingData(timeout=12),
]


@common
@given(streams(), st.integers(0, 40), st.sampled_from(DETECTORS))
def test_detectors_restore_exactly(events: list[Event], cut: int, make: Callable[[], Any]) -> None:
    check_split(make, events, cut % (len(events) + 1))
    check_handover(make, events, cut % (len(events) + 1))


@common
@given(streams(), st.integers(0, 40))
def test_chain_restores_its_stateful_steps(events: list[Event], cut: int) -> None:
    events = [e for e in events if e[0] == "batch"]
    make = lambda: Chain(Filter(lambda r: r.value > -90), Dedup(max_runs=2))  # noqa: E731
    check_split(make, events, cut % (len(events) + 1))


# --- refusals ------------------------------------------------------------------------------


def test_a_snapshot_is_versioned_msgpack() -> None:
    operator = WindowOperator(Tumbling(10), [Mean()])
    operator.process(Batch.from_columns("d", {"m": ([1], [2.0], [0])}), 3)
    body = msgpack.unpackb(operator.snapshot(), raw=False)
    assert (body["format"], body["version"], body["kind"]) == ("iotdata.stream", 1, "window")
    assert [partition for partition, _ in body["partitions"]] == [3]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (msgpack.packb([1, 2]), "not an iotdata.stream snapshot"),
        (b"\xc1", "not a msgpack snapshot"),
        (msgpack.packb({"format": "iotdata.stream", "version": 99}), "version 99"),
        (Dedup().snapshot(), "cannot restore a 'window'"),
        (WindowOperator(Tumbling(20)).snapshot(), "configured as"),
        (WindowOperator(Tumbling(10), [Variance()]).snapshot(), "configured as"),
    ],
)
def test_bad_snapshots_raise_snapshot_error(data: bytes, reason: str) -> None:
    with pytest.raises(SnapshotError, match=reason):
        WindowOperator(Tumbling(10), [Mean()]).restore(data)


def test_a_malformed_state_raises_snapshot_error_and_changes_nothing() -> None:
    good = WindowOperator(Tumbling(10))
    good.process(Batch.from_columns("d", {"m": ([1], [2.0], [0])}))
    body = msgpack.unpackb(good.snapshot(), raw=False)
    body["partitions"][0][1][3][0][3] = [1, 2]  # a window state with too few slots
    target = WindowOperator(Tumbling(10))
    with pytest.raises(SnapshotError, match="malformed"):
        target.restore(msgpack.packb(body))
    assert target.partitions == []
