"""Dedup by (device_id, seq): exact within the horizon, bounded beyond it, every drop counted."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata import Batch, InvalidInputError
from iotdata.stream import Dedup


def batch(device: str, seqs: list[int], metric: str = "m") -> Batch:
    return Batch.from_columns(
        device, {metric: ([s * 10 for s in seqs], [float(s) for s in seqs], seqs)}
    )


def seqs_of(batches: list[Batch]) -> list[int]:
    return [s for b in batches for c in b.columns for s in c.seq]


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.lists(st.integers(0, 300), min_size=1, max_size=20)),
        max_size=40,
    )
)
def test_within_the_horizon_exactly_the_first_copy_passes(
    deliveries: list[tuple[str, list[int]]],
) -> None:
    dedup = Dedup(horizon=512)  # wider than any seq used: nothing is beyond it
    seen: set[tuple[str, int]] = set()
    dropped = 0
    for device, delivered in deliveries:
        seqs = list(dict.fromkeys(delivered))  # one batch holds a reading once
        expected = [s for s in seqs if (device, s) not in seen]
        dropped += len(seqs) - len(expected)
        seen.update((device, s) for s in seqs)
        assert seqs_of(dedup.process(batch(device, seqs))) == expected
    stats = dedup.statistics()
    assert stats["duplicates"] == dropped
    assert stats["passed"] == len(seen)
    assert stats["beyond_horizon"] == 0


def test_the_fast_path_returns_the_same_batch() -> None:
    dedup = Dedup()
    first = batch("d", list(range(100)))
    assert dedup.process(first)[0] is first
    assert dedup.process(first) == []
    second = batch("d", list(range(100, 200)))
    assert dedup.process(second)[0] is second
    assert dedup.statistics()["duplicates"] == 100


def test_duplicates_inside_one_batch_and_across_metrics() -> None:
    dedup = Dedup()
    two = Batch.from_columns(
        "d", {"a": ([1, 2], [1.0, 2.0], [0, 2]), "b": ([1, 2], [5.0, 6.0], [1, 3])}
    )
    assert dedup.process(two) == [two]
    again = Batch.from_columns(
        "d", {"a": ([3, 2], [3.0, 2.0], [4, 2]), "b": ([3, 3], [7.0, 7.0], [5, 5])}
    )
    (kept,) = dedup.process(again)
    assert [(c.metric, c.seq) for c in kept.columns] == [("a", (4,)), ("b", (5,))]
    assert dedup.statistics()["duplicates"] == 2


@pytest.mark.parametrize(("policy", "passes"), [("pass", True), ("drop", False)])
def test_beyond_the_horizon_is_counted_and_follows_the_policy(policy: str, passes: bool) -> None:
    dedup = Dedup(horizon=64, beyond_horizon=policy)
    dedup.process(batch("d", list(range(200))))
    assert dedup.process(batch("d", [150])) == []  # within the horizon: known duplicate
    assert bool(dedup.process(batch("d", [100]))) is passes  # 100 <= 199 - 64: unknown
    stats = dedup.statistics()
    assert (stats["duplicates"], stats["beyond_horizon"]) == (1, 1)


def test_state_stays_bounded_whatever_the_seqs() -> None:
    dedup = Dedup(horizon=1000)
    rng = random.Random(5)
    for _ in range(300):
        dedup.process(batch("d", sorted(rng.sample(range(10**9), 30))))
    _, bits = dedup._parts[0].devices["d"]
    assert bits.bit_length() <= 1000
    assert len(dedup.snapshot()) < 1000 // 8 + 200


def test_max_devices_evicts_the_least_recently_seen() -> None:
    dedup = Dedup(max_devices=2)
    for device in ("a", "b", "a", "c"):  # c evicts b (a was seen again)
        dedup.process(batch(device, [0]))
    assert dedup.process(batch("a", [0])) == []  # still remembered
    assert dedup.process(batch("b", [0]))  # forgotten: passes again
    stats = dedup.statistics()
    assert (stats["evicted"], stats["devices"]) == (2, 2)


def test_arguments_are_checked() -> None:
    for bad in ({"horizon": 0}, {"max_devices": 0}, {"beyond_horizon": "keep"}):
        with pytest.raises(InvalidInputError):
            Dedup(**bad)  # type: ignore[arg-type]
